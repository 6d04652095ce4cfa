"""The shim/daemon wire format and the shim's client logic, on fakes (no namespaces, no daemon)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podnet.daemon import protocol as p
from podnet.daemon import shim


def _body(frame: bytes, magic: bytes = p.REQUEST_MAGIC, limit: int = p.MAX_REQUEST_BODY) -> bytes:
    size = p.parse_header(frame[: p.HEADER_SIZE], magic, limit)
    body = frame[p.HEADER_SIZE:]
    assert len(body) == size
    return body


_KEY = st.binary(min_size=1, max_size=20).filter(lambda k: b"=" not in k and b"\0" not in k)
_VALUE = st.binary(max_size=50).filter(lambda v: b"\0" not in v)


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=30).map(str.encode),
       st.binary(max_size=2000), st.lists(st.tuples(_KEY, _VALUE), max_size=20))
def test_request_round_trip(name: bytes, stdin: bytes, env: list[tuple[bytes, bytes]]) -> None:
    entries = [k + b"=" + v for k, v in env]
    assert p.decode_request(_body(p.encode_request(name, stdin, entries))) == (name, stdin, entries)


@given(st.sampled_from([p.KIND_RAN, p.KIND_REFUSED]), st.integers(0, 255), st.binary(max_size=500),
       st.binary(max_size=500))
def test_response_round_trip(kind: bytes, code: int, out: bytes, err: bytes) -> None:
    frame = p.encode_response(kind, code, out, err)
    assert p.decode_response(_body(frame, p.RESPONSE_MAGIC, p.MAX_RESPONSE_BODY)) == (kind, code, out, err)


@given(st.binary(max_size=200))
def test_garbage_never_crashes_the_decoder(junk: bytes) -> None:
    """Any bytes either decode or raise ProtocolError: nothing else escapes."""
    for decode in (p.decode_request, p.decode_response):
        with contextlib.suppress(p.ProtocolError):
            decode(junk)  # type: ignore[operator]


@pytest.mark.parametrize(("header", "message"), [
    (b"PNQ", "truncated"),
    (b"XXXX\0\0\0\0", "bad frame magic"),
    (p.RESPONSE_MAGIC + b"\0\0\0\0", "bad frame magic"),  # a response where a request belongs
    (p.REQUEST_MAGIC + (p.MAX_REQUEST_BODY + 1).to_bytes(4, "big"), "over the limit"),
])
def test_bad_headers(header: bytes, message: str) -> None:
    with pytest.raises(p.ProtocolError, match=message):
        p.parse_header(header, p.REQUEST_MAGIC, p.MAX_REQUEST_BODY)


def _fields(*raw: bytes, count: int | None = None) -> bytes:
    body = (len(raw) if count is None else count).to_bytes(4, "big")
    for f in raw:
        body += len(f).to_bytes(4, "big") + f
    return body


@pytest.mark.parametrize(("body", "message"), [
    (b"", "too short"),
    (_fields(b"podnet-x"), "needs a plugin name and stdin"),
    (_fields(b"podnet-x", b"{}", count=3), "truncated length"),
    (_fields(b"podnet-x", b"{}") + b"junk", "stray bytes"),
    ((2).to_bytes(4, "big") + (100).to_bytes(4, "big") + b"short", "runs past the end"),
    ((p.MAX_FIELDS + 3).to_bytes(4, "big"), "over the limit"),
    (_fields(b"podnet-x", b"{}", b"NOEQUALS"), "not KEY=VALUE"),
    (_fields(b"podnet-x", b"{}", b"=value"), "not KEY=VALUE"),
    (_fields(b"podnet-x", b"{}", b"K=a\0b"), "not KEY=VALUE"),
    (_fields(b"podnet-x", b"x" * (p.MAX_STDIN + 1)), "stdin of"),
    (_fields(b"podnet-x", b"", *[b"K=" + b"v" * 1024] * 1100), "environment is over the limit"),
])
def test_bad_request_bodies(body: bytes, message: str) -> None:
    with pytest.raises(p.ProtocolError, match=message):
        p.decode_request(body)


@pytest.mark.parametrize("fields", [
    [b"maybe", b"0", b"", b""],
    [b"ran", b"zero", b"", b""],
    [b"ran", b"", b"", b""],
    [b"ran", b"0", b""],
])
def test_bad_responses(fields: list[bytes]) -> None:
    with pytest.raises(p.ProtocolError):
        p.decode_response(_fields(*fields))


# ---- the shim's client side against a fake daemon -------------------------------------------------


@pytest.fixture
def fake_daemon(tmp_path: Path) -> Iterator[Callable[[Callable[[socket.socket], None]], bytes]]:
    """Serve one connection with ``behave(conn)``; returns the socket path (as the shim takes it)."""
    threads: list[threading.Thread] = []
    servers: list[socket.socket] = []

    def make(behave: Callable[[socket.socket], None]) -> bytes:
        path = tmp_path / f"fake{len(servers)}.sock"
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        server.listen(1)
        servers.append(server)

        def serve() -> None:
            conn, _ = server.accept()
            with conn:
                behave(conn)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        threads.append(thread)
        return str(path).encode()

    yield make
    for t in threads:
        t.join(timeout=5)
    for s in servers:
        s.close()


def _read_request(conn: socket.socket) -> tuple[bytes, bytes, list[bytes]]:
    size = p.parse_header(_recv(conn, p.HEADER_SIZE), p.REQUEST_MAGIC, p.MAX_REQUEST_BODY)
    return p.decode_request(_recv(conn, size))


def _recv(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        assert chunk
        buf += chunk
    return buf


FRAME = p.encode_request(b"podnet-loopback", b'{"name":"n"}', [b"CNI_COMMAND=ADD"])


def test_shim_gets_the_answer(fake_daemon: Callable[..., bytes]) -> None:
    seen: list[tuple[bytes, bytes, list[bytes]]] = []

    def behave(conn: socket.socket) -> None:
        seen.append(_read_request(conn))
        conn.sendall(p.encode_response(p.KIND_RAN, 7, b"out", b"err"))

    assert shim.ask_daemon(fake_daemon(behave), FRAME, 5) == (p.KIND_RAN, 7, b"out", b"err")
    assert seen == [(b"podnet-loopback", b'{"name":"n"}', [b"CNI_COMMAND=ADD"])]


def test_no_daemon_is_unsent(tmp_path: Path) -> None:
    with pytest.raises(shim._Unsent):
        shim.ask_daemon(str(tmp_path / "none.sock").encode(), FRAME, 5)


def test_stale_socket_is_unsent(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # the file stays, nobody listens: ECONNREFUSED
    with pytest.raises(shim._Unsent):
        shim.ask_daemon(str(path).encode(), FRAME, 5)


@pytest.mark.parametrize("answer", [b"", p.RESPONSE_MAGIC + b"\0\0\0\x10partial", b"garbage!" * 3])
def test_daemon_dying_mid_request_is_broken(fake_daemon: Callable[..., bytes], answer: bytes) -> None:
    """Request read, then the connection closes with no (or a torn) answer: may have partly happened."""
    def behave(conn: socket.socket) -> None:
        _read_request(conn)
        conn.sendall(answer)

    with pytest.raises(shim._Broken):
        shim.ask_daemon(fake_daemon(behave), FRAME, 5)


def test_no_answer_in_time_is_a_timeout(fake_daemon: Callable[..., bytes]) -> None:
    done = threading.Event()

    def behave(conn: socket.socket) -> None:
        _read_request(conn)
        done.wait(5)

    with pytest.raises(TimeoutError):
        shim.ask_daemon(fake_daemon(behave), FRAME, 0.2)
    done.set()


def test_refused_answer_comes_back(fake_daemon: Callable[..., bytes]) -> None:
    def behave(conn: socket.socket) -> None:
        _read_request(conn)  # (refusing unread makes the shim's send fail: also "unsent", as it should)
        conn.sendall(p.encode_response(p.KIND_REFUSED, 1, b"", b"not root"))

    assert shim.ask_daemon(fake_daemon(behave), FRAME, 5)[0] == p.KIND_REFUSED


def test_after_broken_policy(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    """Idempotent commands run again in-process; ADD is undone (DEL) and redone, unless redo is off."""
    calls: list[tuple[str, bool]] = []

    def fake_in_process(plugin: str, stdin: bytes, *, clean_first: bool = False) -> int:
        calls.append((plugin, clean_first))
        return 0

    monkeypatch.setattr(shim, "in_process", fake_in_process)
    for command in (b"DEL", b"CHECK", b"GC", b"STATUS"):
        assert shim.after_broken("podnet-x", command, b"{}", "gone") == 0
    assert calls == [("podnet-x", False)] * 4
    calls.clear()
    assert shim.after_broken("podnet-x", b"ADD", b"{}", "gone") == 0
    assert calls == [("podnet-x", True)]
    calls.clear()
    assert shim.after_broken("podnet-x", b"ADD", b"{}", "gone", redo=False) == 1
    assert calls == []
    out = capfd.readouterr().out
    assert '"code": 11' in out and "may have partly happened" in out
