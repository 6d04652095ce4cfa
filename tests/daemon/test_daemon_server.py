"""The daemon's server on fakes: a ``Daemon`` in a thread of this process with fake plugins, so
locking, concurrency, refusals and graceful shutdown are tested without namespaces."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nsutil import namespaces
from podnet.cni import skel
from podnet.cni.errors import CNIError
from podnet.cni.result import Result
from podnet.daemon import protocol as p
from podnet.daemon import registry
from podnet.daemon.locks import Busy, NetworkLocks
from podnet.daemon.logs import JsonLog
from podnet.daemon.server import Config, Daemon


@dataclass
class Recorder:
    """A fake plugin that sleeps and records which calls overlapped."""

    delay: float = 0.05
    lock: threading.Lock = field(default_factory=threading.Lock)
    running: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    overlaps: list[tuple[str, str]] = field(default_factory=list)
    max_parallel: int = 0
    current: int = 0

    def _enter(self, args: skel.CmdArgs) -> str:
        net = args.conf["name"]
        me = f"{args.command}:{args.container_id}"
        with self.lock:
            for other in self.running[net]:
                self.overlaps.append((me, other))
            self.running[net].add(me)
            self.current += 1
            self.max_parallel = max(self.max_parallel, self.current)
        return me

    def _leave(self, args: skel.CmdArgs, me: str) -> None:
        with self.lock:
            self.running[args.conf["name"]].discard(me)
            self.current -= 1

    def work(self, args: skel.CmdArgs) -> None:
        me = self._enter(args)
        try:
            args.stderr.write(f"said by {me}\n")  # the skel's stream: this request's stderr
            time.sleep(self.delay)
            if args.arg("FAIL"):
                raise CNIError("asked to fail", code=11)
        finally:
            self._leave(args, me)

    def add(self, args: skel.CmdArgs) -> Result:
        self.work(args)
        return Result(cni_version=args.cni_version)

    def plugin(self) -> skel.Plugin:
        return skel.Plugin(add=self.add, delete=self.work, check=self.work, gc=self.work, status=self.work)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    registry._cache["podnet-fake"] = rec.plugin()
    yield rec
    registry._cache.pop("podnet-fake", None)


@pytest.fixture
def std_streams() -> tuple[object, object]:
    """The process's streams before the daemon started."""
    return sys.stdout, sys.stderr


@pytest.fixture
def daemon(tmp_path: Path, recorder: Recorder, std_streams: tuple[object, object]) -> Iterator[Daemon]:
    log = io.StringIO()
    d = Daemon(Config(socket_path=str(tmp_path / "run" / "d.sock"), workers=8, read_timeout=1.0,
                      allowed_uids=frozenset({os.getuid()})), log=JsonLog(log))
    d.start()
    thread = threading.Thread(target=d.serve_forever, daemon=True)
    thread.start()
    yield d
    d.stop()
    thread.join(timeout=10)
    assert not thread.is_alive()
    for line in log.getvalue().splitlines():
        json.loads(line)  # every log line is one JSON object


# The pod namespace ADD and CHECK send, as a shim does (the daemon runs them only with the fd of
# the caller's namespace): made once for the module by the fixture below.
POD: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def pod_namespace() -> Iterator[None]:
    if os.geteuid() != 0:
        yield  # ADD and CHECK then go without a namespace and are refused: those tests fail
        return
    with namespaces() as made:
        POD.append(made("fakepod").path)
        yield
        POD.clear()


def call(d: Daemon, command: str, network: str = "n1", cid: str = "c1", *, args: str = "",
         frame: bytes | None = None, version: str = "1.1.0") -> tuple[bytes, int, bytes, bytes]:
    conf = json.dumps({"cniVersion": version, "name": network, "type": "podnet-fake"}).encode()
    pod = POD[0] if POD else "/run/netns/x"
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": pod, "CNI_IFNAME": "eth0",
           "CNI_PATH": "/nowhere", "CNI_ARGS": args}
    if frame is None:
        frame = p.encode_request(b"podnet-fake", conf, [f"{k}={v}".encode() for k, v in env.items()])
    fds = [os.open(pod, os.O_RDONLY | os.O_CLOEXEC)] if POD and command in ("ADD", "CHECK") else []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s, contextlib.ExitStack() as stack:
        for fd in fds:
            stack.callback(os.close, fd)
        s.settimeout(10)
        s.connect(d.config.socket_path)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            # a peer refused before its request is read may not get to send it all
            sent = socket.send_fds(s, [frame], fds) if fds else 0
            s.sendall(frame[sent:])
        head = _recv(s, p.HEADER_SIZE)
        return p.decode_response(_recv(s, p.parse_header(head, p.RESPONSE_MAGIC, p.MAX_RESPONSE_BODY)))


def _recv(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"closed after {len(buf)} bytes")
        buf += chunk
    return buf


def test_socket_is_root_only_from_the_start(daemon: Daemon) -> None:
    st = os.stat(daemon.config.socket_path)
    assert st.st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(daemon.config.socket_path)).st_mode & 0o777 == 0o700


def test_a_call_runs_the_plugin_and_captures_its_output(daemon: Daemon) -> None:
    kind, code, out, err = call(daemon, "ADD")
    assert (kind, code) == (p.KIND_RAN, 0)
    assert json.loads(out.decode())["cniVersion"] == "1.1.0"  # stdout is the result and nothing else
    assert err.decode() == "said by ADD:c1\n"
    kind, code, out, err = call(daemon, "ADD", args="FAIL=1")
    assert (kind, code) == (p.KIND_RAN, 1) and json.loads(out.decode())["code"] == 11
    assert err.decode() == "said by ADD:c1\n"


def test_requests_get_the_skels_streams_and_the_process_keeps_its_own(
        daemon: Daemon, std_streams: tuple[object, object]) -> None:
    """Concurrent requests each get their own messages; sys.stdout/sys.stderr are never swapped
    for proxies (a plugin writes to args.stderr, which the skel hands it)."""
    assert (sys.stdout, sys.stderr) == std_streams
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: call(daemon, "DEL", cid=f"c{i}"), range(16)))
    for i, (kind, code, out, err) in enumerate(answers):
        assert (kind, code, out) == (p.KIND_RAN, 0, b"")
        assert err.decode() == f"said by DEL:c{i}\n"
    assert (sys.stdout, sys.stderr) == std_streams


def _ok_or_busy(answer: tuple[bytes, int, bytes, bytes]) -> bool:
    """Served, or turned away at once with code 11 because its attachment or network was taken."""
    kind, code, out, _ = answer
    return kind == p.KIND_RAN and (code == 0 or json.loads(out)["code"] == 11)


def test_same_attachment_never_overlaps_other_pods_do(daemon: Daemon, recorder: Recorder) -> None:
    jobs = [("ADD", "n1", f"c{i % 3}") for i in range(12)] + [("DEL", "n2", f"d{i}") for i in range(6)]
    with ThreadPoolExecutor(18) as pool:
        results = list(pool.map(lambda j: call(daemon, j[0], j[1], j[2]), jobs))
    assert all(_ok_or_busy(r) for r in results)
    assert all(r[:2] == (p.KIND_RAN, 0) for r in results[12:])  # one call per attachment: all served
    served = {jobs[i][2] for i, r in enumerate(results) if r[1] == 0}
    assert {"c0", "c1", "c2"} <= served
    same = [(a, b) for a, b in recorder.overlaps if a.split(":")[1] == b.split(":")[1]]
    assert same == []  # one attachment: strictly one call at a time
    assert recorder.max_parallel >= 3  # different attachments did run side by side
    assert daemon.locks.busy() == 0


def test_gc_runs_alone_on_its_network(daemon: Daemon, recorder: Recorder) -> None:
    jobs = [("ADD", "n1", f"c{i}") for i in range(6)] + [("GC", "n1", "")] + [
        ("ADD", "n1", f"e{i}") for i in range(6)] + [("ADD", "other", "x")]
    with ThreadPoolExecutor(14) as pool:
        futures = []
        for job in jobs:
            futures.append(pool.submit(call, daemon, *job))
            time.sleep(0.003)
        assert all(_ok_or_busy(f.result()) for f in futures)
        assert futures[-1].result()[:2] == (p.KIND_RAN, 0)  # another network: never held up by the GC
    assert not [pair for pair in recorder.overlaps if "GC:" in pair[0] or "GC:" in pair[1]]


@pytest.mark.parametrize(("frame", "reason"), [
    (b"garbage!" * 4, "bad frame magic"),
    (p.REQUEST_MAGIC + (200 * 1024 * 1024).to_bytes(4, "big"), "over the limit"),
    (p.REQUEST_MAGIC + (8).to_bytes(4, "big") + b"\0\0\0\x09abcd", "runs past the end"),
    (p.encode_request(b"podnet-nope", b"{}", []), "no podnet plugin 'podnet-nope'"),
    (p.encode_request(b"../../os", b"{}", []), "not a podnet plugin name"),
    (p.encode_request(b"podnet-fake", b"{}", [b"BROKEN"]), "not KEY=VALUE"),
])
def test_bad_requests_are_refused_and_do_not_disturb_others(daemon: Daemon, frame: bytes,
                                                            reason: str) -> None:
    with ThreadPoolExecutor(6) as pool:
        good = [pool.submit(call, daemon, "ADD", "n1", f"c{i}") for i in range(4)]
        kind, code, _, err = call(daemon, "ADD", frame=frame)
        assert (kind, code) == (p.KIND_REFUSED, 1) and reason in err.decode()
        assert all(f.result()[:2] == (p.KIND_RAN, 0) for f in good)


def test_a_silent_client_times_out_without_blocking_others(daemon: Daemon) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as slow:
        slow.connect(daemon.config.socket_path)
        slow.sendall(p.REQUEST_MAGIC)  # half a header, then nothing
        assert call(daemon, "ADD")[:2] == (p.KIND_RAN, 0)
        slow.settimeout(5)
        head = _recv(slow, p.HEADER_SIZE)
        kind, _, _, err = p.decode_response(_recv(slow, p.parse_header(head, p.RESPONSE_MAGIC, 1 << 20)))
        assert kind == p.KIND_REFUSED and b"not received in time" in err


def test_peer_of_another_uid_is_refused(tmp_path: Path, recorder: Recorder) -> None:
    d = Daemon(Config(socket_path=str(tmp_path / "d.sock"), allowed_uids=frozenset({os.getuid() + 4242})),
               log=JsonLog(io.StringIO()))
    d.start()
    thread = threading.Thread(target=d.serve_forever, daemon=True)
    thread.start()
    try:
        kind, _, _, err = call(d, "ADD")
        assert kind == p.KIND_REFUSED and b"is not allowed (root only)" in err
    finally:
        d.stop()
        thread.join(timeout=10)


def test_graceful_stop_finishes_in_flight_then_removes_the_socket(daemon: Daemon, recorder: Recorder) -> None:
    recorder.delay = 0.4
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(call, daemon, "ADD", "n1", f"c{i}") for i in range(4)]
        deadline = time.monotonic() + 5
        while daemon.in_flight < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        daemon.stop()
        assert all(f.result()[:2] == (p.KIND_RAN, 0) for f in futures)
    deadline = time.monotonic() + 5
    while os.path.exists(daemon.config.socket_path) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not os.path.exists(daemon.config.socket_path)


def test_second_daemon_on_a_live_socket_refuses_to_start(daemon: Daemon) -> None:
    other = Daemon(Config(socket_path=daemon.config.socket_path), log=JsonLog(io.StringIO()))
    with pytest.raises(RuntimeError, match="another podnet daemon"):
        other.start()
    assert call(daemon, "ADD")[:2] == (p.KIND_RAN, 0)  # the probe did not disturb the live one


def test_stale_socket_is_replaced_and_a_non_socket_is_not(tmp_path: Path, recorder: Recorder) -> None:
    path = tmp_path / "d.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()
    d = Daemon(Config(socket_path=str(path)), log=JsonLog(io.StringIO()))
    d.start()
    d.stop()
    d.serve_forever()  # returns at once: stop() came first
    plain = tmp_path / "file"
    plain.write_text("x")
    with pytest.raises(RuntimeError, match="not a socket"):
        Daemon(Config(socket_path=str(plain)), log=JsonLog(io.StringIO())).start()
    assert plain.read_text() == "x"


def test_locks_writer_preference() -> None:
    """A waiting GC turns new callers of its network away (code 11), so a stream of ADDs cannot
    starve it; a second GC and a second call for one attachment are turned away too."""
    locks = NetworkLocks()
    order: list[str] = []
    first = locks.shared("n", ("a", "eth0"))
    first.__enter__()
    with pytest.raises(Busy, match="container 'a' ifname 'eth0'"), locks.shared("n", ("a", "eth0")):
        pass
    gc_waiting = threading.Event()

    def gc() -> None:
        gc_waiting.set()
        with locks.exclusive("n", time.monotonic() + 10):
            order.append("gc")

    t1 = threading.Thread(target=gc)
    t1.start()
    assert gc_waiting.wait(5)
    deadline = time.monotonic() + 5
    while not locks._nets["n"].waiting_writers and time.monotonic() < deadline:
        time.sleep(0.005)
    with pytest.raises(Busy, match="garbage-collected"), locks.shared("n", ("b", "eth0")):
        pass
    with pytest.raises(Busy, match="another GC"), locks.exclusive("n"):
        pass
    with locks.shared("other", ("b", "eth0")):
        order.append("other network")
    first.__exit__(None, None, None)
    t1.join(5)
    with locks.shared("n", ("b", "eth0")):
        order.append("add")
    assert order == ["other network", "gc", "add"] and locks.busy() == 0


def test_a_gc_gives_up_at_its_deadline() -> None:
    locks = NetworkLocks()
    with locks.shared("n", ("a", "eth0")):
        start = time.monotonic()
        soon = time.monotonic() + 0.2
        with pytest.raises(Busy, match="did not finish in time"), locks.exclusive("n", soon):
            pass
        assert 0.15 < time.monotonic() - start < 2
        with locks.shared("n", ("b", "eth0")):  # the GC no longer turns callers away
            pass
    assert locks.busy() == 0
