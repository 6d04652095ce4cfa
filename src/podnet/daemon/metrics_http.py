"""The metrics endpoint: a small HTTP/1.0 server on one thread and one selector.

Anyone who can reach the port can connect, so a connection must cost almost nothing: no thread of
its own (``prometheus_client``'s server starts one per connection, with no time limit, and a few
thousand idle connections would use up the daemon's task limit: its next request would fail with
"can't start new thread"). Here each connection is a buffer in one selector loop, has a deadline
for the whole exchange, and the number open at once is capped; at the cap the oldest is closed to
make room, so a scraper is served even while someone holds connections open.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MAX_REQUEST = 8192


@dataclass
class _Conn:
    sock: socket.socket
    deadline: float
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytes = b""


def response(render: Callable[[], tuple[bytes, str]], request: bytes) -> bytes:
    """The whole HTTP answer to one request head."""
    line = request.split(b"\r\n", 1)[0].split()
    method, target = (line[0], line[1]) if len(line) >= 2 else (b"", b"")
    path = target.split(b"?", 1)[0]
    if method not in (b"GET", b"HEAD"):
        status, ctype, body = "405 Method Not Allowed", "text/plain", b"only GET\n"
    elif path not in (b"/metrics", b"/"):
        status, ctype, body = "404 Not Found", "text/plain", b"see /metrics\n"
    else:
        body, ctype = render()
        status = "200 OK"
    head = (f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode()
    return head if method == b"HEAD" else head + body


class MetricsServer:
    def __init__(self, render: Callable[[], tuple[bytes, str]], host: str, port: int, *,
                 timeout: float = 5.0, max_connections: int = 64) -> None:
        self.render = render
        self.timeout = timeout
        self.max_connections = max_connections
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        self._listener = socket.socket(family, kind | socket.SOCK_CLOEXEC, proto)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind(addr)
            self._listener.listen(128)
            self._listener.setblocking(False)
        except BaseException:
            self._listener.close()
            raise
        self.server_address: Any = self._listener.getsockname()
        self._conns: dict[int, _Conn] = {}
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="podnet-metrics", daemon=True)

    def start(self) -> MetricsServer:
        self._sel.register(self._listener, selectors.EVENT_READ)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        self._thread.join(timeout=10)

    def server_close(self) -> None:
        for conn in list(self._conns.values()):
            self._close(conn)
        self._sel.close()
        self._listener.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            nearest = min((c.deadline for c in self._conns.values()), default=now + 60)
            for key, events in self._sel.select(max(0.0, nearest - now)):
                if key.fileobj is self._listener:
                    self._accept()
                elif isinstance(key.data, _Conn):
                    self._io(key.data, events)
            now = time.monotonic()
            for conn in [c for c in self._conns.values() if c.deadline <= now]:
                self._close(conn)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # EMFILE and the like: the listener stays; retried on the next event
            if len(self._conns) >= self.max_connections:
                self._close(min(self._conns.values(), key=lambda c: c.deadline))
            sock.setblocking(False)
            conn = _Conn(sock, time.monotonic() + self.timeout)
            self._conns[sock.fileno()] = conn
            self._sel.register(sock, selectors.EVENT_READ, conn)

    def _io(self, conn: _Conn, events: int) -> None:
        try:
            if events & selectors.EVENT_READ and not conn.outbuf:
                self._read(conn)
            elif events & selectors.EVENT_WRITE:
                sent = conn.sock.send(conn.outbuf)
                conn.outbuf = conn.outbuf[sent:]
                if not conn.outbuf:
                    self._close(conn)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)

    def _read(self, conn: _Conn) -> None:
        chunk = conn.sock.recv(4096)
        if not chunk:
            self._close(conn)
            return
        conn.inbuf += chunk
        end = conn.inbuf.find(b"\r\n\r\n")
        if end < 0:
            if len(conn.inbuf) > MAX_REQUEST:
                self._close(conn)
            return
        conn.outbuf = response(self.render, bytes(conn.inbuf[:end]))
        self._sel.modify(conn.sock, selectors.EVENT_WRITE, conn)

    def _close(self, conn: _Conn) -> None:
        if self._conns.pop(conn.sock.fileno(), None) is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(conn.sock)
        conn.sock.close()
