"""The Python shim's send: a request the daemon has run is never taken for one it has not.

A request with the pod's namespace goes out as ``sendmsg`` (carrying the fd) and then the rest. On a
loaded node the daemon can read the whole frame, run the call, answer and close before the shim's
next step; a zero-length send on that closed connection is EPIPE. The shim took that for "not
sent" and ran the call again in-process (an ADD twice). No root needed: a thread is the daemon.
"""

from __future__ import annotations

import _socket
import os
import socket
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from podnet.daemon import protocol as p
from podnet.daemon import shim

ANSWER = p.encode_response(p.KIND_RAN, 0, b'{"ok": true}', b"")


class _AnsweredAtOnce(socket.socket):
    """A socket whose first sendmsg returns only after the peer has answered and closed: the
    scheduling a loaded node can give, made certain."""

    peer_closed: threading.Event

    def sendmsg(self, *args: Any, **kwargs: Any) -> int:
        sent = super().sendmsg(*args, **kwargs)
        assert self.peer_closed.wait(10)
        return sent


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[str, threading.Event]]:
    path = str(tmp_path / "d.sock")
    closed = threading.Event()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            _, fds, _, _ = socket.recv_fds(conn, 1 << 16, 1)
            for fd in fds:
                os.close(fd)
            conn.sendall(ANSWER)
        closed.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path, closed
    finally:
        listener.close()
        thread.join(timeout=10)


def test_a_request_answered_before_the_send_returns_is_not_unsent(
        daemon: tuple[str, threading.Event], monkeypatch: pytest.MonkeyPatch) -> None:
    path, closed = daemon
    _AnsweredAtOnce.peer_closed = closed
    patched = types.SimpleNamespace(**{**vars(_socket), "socket": _AnsweredAtOnce})
    monkeypatch.setattr(shim, "_socket", patched)
    frame = b"x" * 200  # the fake daemon reads it in one go and does not parse it
    netns_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    kind, code, out, _ = shim.ask_daemon(path.encode(), frame, 10.0, netns_fd)
    assert (kind, code, out) == (p.KIND_RAN, 0, b'{"ok": true}')
