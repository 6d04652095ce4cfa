"""The agent's unix socket: CNI ADDs admit their pod's addresses; people ask for status and
explanations (``podnet status``, ``podnet policy explain``).

One JSON object per line each way (the client is :mod:`podnet.plugins.agent_notify`). The socket
is root-only and every caller is checked like the daemon's (uid 0 with CAP_NET_ADMIN and
CAP_SYS_ADMIN, read through the connection's pidfd): admitting an address opens the traffic the
admission chain holds back. A bounded pool serves connections, each with a deadline, so no caller
can hold the agent up; one that does not finish in time is dropped.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from podnet.agent.sync import Admitted
from podnet.daemon.peer import PeerRefused, missing_caps, read_peer
from podnet.plugins.agent_notify import MAX_LINE

log = logging.getLogger(__name__)
Handler = Callable[[dict[str, Any]], dict[str, Any]]


class BadRequest(ValueError):
    pass


def parse_admit(request: dict[str, Any]) -> Admitted:
    fields = {k: request.get(k) for k in ("namespace", "name", "containerID")}
    for key, value in fields.items():
        if not isinstance(value, str) or not value or len(value) > 253:
            raise BadRequest(f"{key}: expected a non-empty string of at most 253 characters")
    ips = request.get("ips")
    if not isinstance(ips, list) or not ips or len(ips) > 16:
        raise BadRequest("ips: expected a list of 1 to 16 addresses")
    try:
        parsed = tuple(ipaddress.ip_address(ip) for ip in ips)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"ips: {exc}") from None
    return Admitted(str(fields["namespace"]), str(fields["name"]), str(fields["containerID"]), parsed)


class AdmissionServer:
    def __init__(self, path: str, handlers: dict[str, Handler], *, workers: int = 4,
                 deadline: float = 5.0) -> None:
        self.path, self.handlers, self.deadline = path, handlers, deadline
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="podnet-agent-sock")
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o755, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)  # created 0600: no window in which others may connect
        try:
            sock.bind(self.path)
        finally:
            os.umask(old)
        sock.listen(64)
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept, name="podnet-agent-accept", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._sock is not None:
            self._sock.close()
        # The socket file stays, as the table does: a plugin that finds it but no one listening
        # says its pod is held back (it is); a missing file would tell it no agent runs here.
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                log.error("agent socket accept failed: %s", exc)
                self._stopping.wait(0.2)
                continue
            self._pool.submit(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(self.deadline)
            try:
                # The request is read before any refusal: closing with unread data would reset the
                # connection and the caller would lose the answer.
                line = _read_line(conn)
                peer = read_peer(conn)
                missing = missing_caps(peer)
                if peer.uid != 0 or missing:
                    raise PeerRefused("not-allowed", f"peer uid {peer.uid} lacks root/{', '.join(missing)}")
                answer = self._answer(line)
            except PeerRefused as exc:
                answer = {"ok": False, "error": str(exc)}
            except (OSError, ValueError) as exc:
                log.warning("agent socket: %s", exc)
                return
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(answer).encode() + b"\n")

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise BadRequest("expected a JSON object")
            op = request.get("op")
            handler = self.handlers.get(op) if isinstance(op, str) else None
            if handler is None:
                raise BadRequest(f"op {op!r}: expected one of {', '.join(sorted(self.handlers))}")
            return handler(request)
        except (BadRequest, json.JSONDecodeError, UnicodeDecodeError) as exc:
            return {"ok": False, "error": f"bad request: {exc}"}


def _read_line(conn: socket.socket) -> bytes:
    buf = b""
    while b"\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_LINE:
            raise ValueError("request too long")
    return buf.split(b"\n", 1)[0]
