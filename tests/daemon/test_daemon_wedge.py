"""No caller can wedge the daemon: a hanging delegated plugin is killed (its whole process group) on
a timeout, slow and idle clients do not hold the workers, a pod's retries do not each take a
worker while its first call hangs, and SIGTERM ends the daemon within its deadline."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_daemon_server import Recorder, _recv, call
from test_daemon_trust import call_frame

from nsutil import NetnsFactory
from podnet.cni import skel
from podnet.cni.errors import TryAgainLater
from podnet.cni.result import Result
from podnet.daemon import protocol as p
from podnet.daemon import registry
from podnet.daemon.logs import JsonLog
from podnet.daemon.peer import Peer
from podnet.daemon.server import Config, Daemon
from podnet.plugins import ipam_delegate
from podnet.runtime.invoke import Invocation, RealExec

REPO = Path(__file__).resolve().parents[2]


def _exited(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _gone(pid: int, wait: float = 2.0) -> bool:
    """The process has exited within ``wait`` s (SIGKILL is delivered asynchronously; a zombie
    waiting for its new parent to reap it counts)."""
    deadline = time.monotonic() + wait
    while not _exited(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _end(pid: int) -> None:
    if not _exited(pid):
        os.kill(pid, signal.SIGKILL)


def _hanging_plugin(directory: Path, name: str = "hang-ipam") -> Path:
    """An executable that starts a child in its process group and then hangs; both write their pid."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / name
    script.write_text(f"#!/bin/sh\nsleep 6 &\necho $! >{directory}/child.pid\necho $$ >{directory}/main.pid\n"
                      "sleep 6\n")
    script.chmod(0o755)
    return script


def _pids(directory: Path) -> list[int]:
    return [int((directory / f).read_text()) for f in ("main.pid", "child.pid") if (directory / f).exists()]


def test_a_hanging_plugin_is_killed_with_its_process_group(tmp_path: Path) -> None:
    plugin = _hanging_plugin(tmp_path)
    start = time.monotonic()
    try:
        with pytest.raises(TryAgainLater, match=r"did not finish within 0\.5 s"):
            RealExec(environ={"PATH": os.environ["PATH"]}, timeout=0.5).run(
                str(plugin), Invocation("ADD", "c1", "/x", "eth0"), b"{}")
        assert time.monotonic() - start < 3  # not the 6 s its child would have held the pipes
        pids = _pids(tmp_path)
        assert len(pids) == 2 and all(_gone(pid) for pid in pids)
    finally:
        for pid in _pids(tmp_path):
            _end(pid)


# -- through the daemon ------------------------------------------------------------------------------


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder(delay=0)
    registry._cache["podnet-fake"] = rec.plugin()
    registry._cache["podnet-delegating"] = skel.Plugin(add=ipam_delegate.ipam_add,
                                                       delete=ipam_delegate.ipam_del)
    yield rec
    registry._cache.pop("podnet-fake", None)
    registry._cache.pop("podnet-delegating", None)


def _serve(config: Config) -> tuple[Daemon, threading.Thread]:
    d = Daemon(config, log=JsonLog(io.StringIO()))
    d.start()
    thread = threading.Thread(target=d.serve_forever, daemon=True)
    thread.start()
    return d, thread


def _stop(d: Daemon, thread: threading.Thread) -> None:
    d.stop()
    thread.join(timeout=15)
    assert not thread.is_alive()


def test_a_hanging_delegated_ipam_is_killed_and_the_call_answered(tmp_path: Path, recorder: Recorder) -> None:
    trusted = tmp_path / "bin"
    _hanging_plugin(trusted)
    d, thread = _serve(Config(socket_path=str(tmp_path / "d.sock"), workers=2, plugin_dirs=(str(trusted),),
                              delegate_timeout=0.5))
    conf = {"cniVersion": "1.1.0", "name": "n1", "type": "podnet-delegating", "ipam": {"type": "hang-ipam"}}
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/x", "CNI_IFNAME": "eth0",
           "CNI_PATH": str(trusted)}
    frame = p.encode_request(b"podnet-delegating", json.dumps(conf).encode(),
                             [f"{k}={v}".encode() for k, v in env.items()])
    try:
        start = time.monotonic()
        kind, code, out, _ = call_frame(d, frame)
        assert (kind, code) == (p.KIND_RAN, 1) and json.loads(out)["code"] == 11
        assert time.monotonic() - start < 3
        assert all(_gone(pid) for pid in _pids(trusted))
    finally:
        for pid in _pids(trusted):
            _end(pid)
        _stop(d, thread)


def _dribble(path: str, stop: threading.Event, socks: list[socket.socket]) -> None:
    """A client that sends its request one byte at a time, every 0.5 s."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    socks.append(s)
    s.connect(path)
    frame = p.encode_request(b"podnet-fake", b"{}", [])
    for byte in frame:
        if stop.wait(0.5):
            return
        try:
            s.send(bytes([byte]))
        except OSError:
            return


def test_slow_and_idle_clients_do_not_hold_the_workers(tmp_path: Path, recorder: Recorder) -> None:
    d, thread = _serve(Config(socket_path=str(tmp_path / "d.sock"), workers=4, read_timeout=2.0))
    stop = threading.Event()
    socks: list[socket.socket] = []
    slow = [threading.Thread(target=_dribble, args=(d.config.socket_path, stop, socks)) for _ in range(4)]
    try:
        for t in slow:
            t.start()
        for _ in range(4):
            idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            socks.append(idle)
            idle.connect(d.config.socket_path)
        time.sleep(0.3)
        start = time.monotonic()
        assert call(d, "DEL")[:2] == (p.KIND_RAN, 0)
        assert time.monotonic() - start < 1.0
        time.sleep(2.0)  # past the deadline: the dribblers' exchanges are over however fast they send
        start = time.monotonic()
        assert call(d, "DEL", cid="c2")[:2] == (p.KIND_RAN, 0)
        assert time.monotonic() - start < 1.0
        dribbler = socks[0]
        dribbler.settimeout(2)
        head = _recv(dribbler, p.HEADER_SIZE)
        kind, _, _, err = p.decode_response(_recv(dribbler, p.parse_header(head, p.RESPONSE_MAGIC, 1 << 20)))
        assert kind == p.KIND_REFUSED and b"not received in time" in err
    finally:
        stop.set()
        for t in slow:
            t.join(timeout=10)
        for s in socks:
            s.close()
        _stop(d, thread)


_HUNG_ENV = [b"CNI_COMMAND=DEL", b"CNI_CONTAINERID=c1", b"CNI_NETNS=/x", b"CNI_IFNAME=eth0",
             b"CNI_PATH=/nowhere"]


@contextlib.contextmanager
def _hung_call(config: Config) -> Iterator[tuple[Daemon, bytes, Callable[[], None]]]:
    """A daemon serving ``config`` where a DEL of pod c1 (network n1) never finishes on its own;
    yields the daemon, that DEL's frame, and a function that sends it and waits until it runs.
    Everything ends afterwards."""
    release = threading.Event()
    entered = threading.Event()

    def hang(args: skel.CmdArgs) -> None:
        entered.set()
        release.wait(30)

    registry._cache["podnet-hang"] = skel.Plugin(add=lambda args: Result(cni_version=args.cni_version),
                                                 delete=hang)
    d, thread = _serve(config)
    conf = {"cniVersion": "1.1.0", "name": "n1", "type": "podnet-hang"}
    frame = p.encode_request(b"podnet-hang", json.dumps(conf).encode(), _HUNG_ENV)
    first = threading.Thread(target=call_frame, args=(d, frame))

    def start() -> None:
        first.start()
        assert entered.wait(10)

    try:
        yield d, frame, start
    finally:
        release.set()
        if first.is_alive():
            first.join(timeout=10)
        _stop(d, thread)
        registry._cache.pop("podnet-hang", None)


@contextlib.contextmanager
def _one_call_hangs(config: Config) -> Iterator[tuple[Daemon, bytes]]:
    with _hung_call(config) as (d, frame, start):
        start()
        yield d, frame


def test_retries_of_a_hung_pod_take_no_workers(tmp_path: Path, recorder: Recorder) -> None:
    """The first DEL of pod c1 hangs; its retries are answered at once with code 11 and an
    unrelated pod is served, with only two workers."""
    config = Config(socket_path=str(tmp_path / "d.sock"), workers=2, read_timeout=2.0)
    with _one_call_hangs(config) as (d, frame):
        for _ in range(4):
            start = time.monotonic()
            kind, code, out, _ = call_frame(d, frame)
            assert (kind, code) == (p.KIND_RAN, 1) and json.loads(out)["code"] == 11
            assert time.monotonic() - start < 1.0
        start = time.monotonic()
        assert call(d, "DEL", "n1", "other")[:2] == (p.KIND_RAN, 0)
        assert time.monotonic() - start < 1.0


DAEMON = """
import sys, threading
from podnet.cli import main
from podnet.cni import skel
from podnet.daemon import registry
from podnet.plugins import ipam_delegate

hang = threading.Event()
registry._cache["podnet-hang"] = skel.Plugin(add=lambda args: None, delete=lambda args: hang.wait())
registry._cache["podnet-delegating"] = skel.Plugin(add=lambda args: None, delete=ipam_delegate.ipam_del)
main.main(["daemon", "--socket", sys.argv[1], "--stop-timeout", "1", *sys.argv[2:]])
"""


def test_sigterm_ends_the_daemon_within_its_deadline_despite_a_hung_call(tmp_path: Path) -> None:
    sock = tmp_path / "d.sock"
    proc = subprocess.Popen([sys.executable, "-c", DAEMON, str(sock)], cwd=REPO, stderr=subprocess.PIPE)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        deadline = time.monotonic() + 20
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        client.connect(str(sock))
        conf = {"cniVersion": "1.1.0", "name": "n1", "type": "podnet-hang"}
        client.sendall(p.encode_request(b"podnet-hang", json.dumps(conf).encode(),
                                        [b"CNI_COMMAND=DEL", b"CNI_CONTAINERID=c1", b"CNI_NETNS=/x",
                                         b"CNI_IFNAME=eth0", b"CNI_PATH=/nowhere"]))
        time.sleep(0.5)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=6)
        assert time.monotonic() - start < 4
        assert not sock.exists()
        assert b"stop-deadline" in (proc.stderr.read() if proc.stderr else b"")
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def test_a_call_no_worker_takes_in_time_is_refused(tmp_path: Path, recorder: Recorder) -> None:
    """Every worker is held by a call that does not finish: an unrelated pod's call is refused
    after the queue deadline (the shim then runs it in-process), not left waiting."""
    config = Config(socket_path=str(tmp_path / "d.sock"), workers=1, queue_timeout=0.5)
    with _one_call_hangs(config) as (d, _):
        start = time.monotonic()
        kind, _, _, err = call(d, "DEL", "n2", "other")
        assert kind == p.KIND_REFUSED and b"no worker was free" in err
        assert 0.4 < time.monotonic() - start < 2

def test_at_the_stop_deadline_running_delegates_are_killed(tmp_path: Path) -> None:
    """A delegated IPAM that hangs (under a long --delegate-timeout) does not outlive the daemon."""
    trusted = tmp_path / "bin"
    _hanging_plugin(trusted)
    sock = tmp_path / "d.sock"
    proc = subprocess.Popen([sys.executable, "-c", DAEMON, str(sock), "--plugin-dir", str(trusted)], cwd=REPO,
                            stderr=subprocess.PIPE)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        deadline = time.monotonic() + 20
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        client.connect(str(sock))
        conf = {"cniVersion": "1.1.0", "name": "n1", "type": "podnet-delegating",
                "ipam": {"type": "hang-ipam"}}
        client.sendall(p.encode_request(b"podnet-delegating", json.dumps(conf).encode(),
                                        [b"CNI_COMMAND=DEL", b"CNI_CONTAINERID=c1", b"CNI_NETNS=/x",
                                         b"CNI_IFNAME=eth0", f"CNI_PATH={trusted}".encode()]))
        while len(_pids(trusted)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(_pids(trusted)) == 2
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=6)
        assert all(_gone(pid) for pid in _pids(trusted))
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
        for pid in _pids(trusted):
            _end(pid)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _fds_settle(at_most: int) -> int:
    """The open fd count once the daemon's last refusals are closed (each lingers for a short
    drain of what its peer still sends)."""
    deadline = time.monotonic() + 3
    while _open_fds() > at_most and time.monotonic() < deadline:
        time.sleep(0.05)
    return _open_fds()


def _send_with_fd(path: str, frame: bytes, ns: str) -> tuple[bytes, int, bytes, bytes]:
    fd = os.open(ns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(path)
            socket.send_fds(s, [frame], [fd])
            head = _recv(s, p.HEADER_SIZE)
            return p.decode_response(_recv(s, p.parse_header(head, p.RESPONSE_MAGIC, p.MAX_RESPONSE_BODY)))
    finally:
        os.close(fd)


@pytest.mark.root
def test_refused_calls_leave_no_namespace_fd_open(tmp_path: Path, recorder: Recorder,
                                                  netns: NetnsFactory) -> None:
    """Every fd a shim sends is closed whatever happens to its call (refused before or after it
    was queued): a stream of refused calls must not use up the daemon's file descriptors."""
    env = _HUNG_ENV
    conf = json.dumps({"cniVersion": "1.1.0", "name": "n1", "type": "podnet-hang"}).encode()
    pod = netns("pod").path
    config = Config(socket_path=str(tmp_path / "d.sock"), workers=1, queue_timeout=0.2)
    with _hung_call(config) as (d, _, start):
        before = _open_fds()
        for _ in range(10):  # refused before the fd became the plugin's namespace
            answer = _send_with_fd(d.config.socket_path, p.encode_request(b"podnet-nope", conf, env), pod)
            assert answer[0] == p.KIND_REFUSED
        assert _fds_settle(before) == before
        start()
        for i in range(10):  # queued behind the hung call, then refused at the queue deadline
            other = [b"CNI_COMMAND=DEL", f"CNI_CONTAINERID=o{i}".encode(), f"CNI_NETNS={pod}".encode(),
                     b"CNI_IFNAME=eth0", b"CNI_PATH=/nowhere"]
            frame = p.encode_request(b"podnet-fake", json.dumps({"cniVersion": "1.1.0", "name": "n2",
                                                                  "type": "podnet-fake"}).encode(), other)
            kind, _, _, err = _send_with_fd(d.config.socket_path, frame, pod)
            assert kind == p.KIND_REFUSED and b"no worker was free" in err
        assert _fds_settle(before + 2) - before <= 2, "more than the hung call's connection (both ends)"


def test_a_request_that_came_in_time_is_served_though_read_late(tmp_path: Path, recorder: Recorder) -> None:
    """The one reader is held past the next request's read deadline (a peer check that stalls
    stands in for any delay). The deadline shuts the socket's reading side, but what the peer sent
    in time is still read: the request is served, not refused or dropped."""
    stalled = threading.Event()

    class Stalling(Daemon):
        def _check_peer(self, conn: socket.socket) -> Peer:
            if not stalled.is_set():
                stalled.set()
                time.sleep(1.5)
            return super()._check_peer(conn)

    d = Stalling(Config(socket_path=str(tmp_path / "d.sock"), readers=1, read_timeout=1.0),
                 log=JsonLog(io.StringIO()))
    d.start()
    thread = threading.Thread(target=d.serve_forever, daemon=True)
    thread.start()
    try:
        first = threading.Thread(target=call, args=(d, "DEL"), kwargs={"cid": "c1"})
        first.start()
        assert stalled.wait(10)
        start = time.monotonic()
        assert call(d, "DEL", cid="c2")[:2] == (p.KIND_RAN, 0)
        assert time.monotonic() - start > 1.0  # it did wait past its read deadline
        first.join(timeout=10)
    finally:
        _stop(d, thread)


def test_connections_that_send_nothing_are_capped(tmp_path: Path, recorder: Recorder) -> None:
    """Past ``max_waiting`` silent connections the one silent longest is refused (a shim would
    run its call in-process), and a call that sends its request is still served.

    The fifth connection is silent too: a call's request may already be there when the daemon
    accepts it (then it is read at once and nothing needs evicting), so only a silent newcomer
    makes the eviction certain whatever the scheduling."""
    d, thread = _serve(Config(socket_path=str(tmp_path / "d.sock"), max_waiting=4, read_timeout=5.0))
    idle: list[socket.socket] = []
    try:
        for _ in range(5):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            idle.append(s)
            s.connect(d.config.socket_path)
            time.sleep(0.05)
        for _ in range(3):
            start = time.monotonic()
            assert call(d, "DEL")[:2] == (p.KIND_RAN, 0)
            assert time.monotonic() - start < 1.0
        oldest = idle[0]
        oldest.settimeout(2)
        head = _recv(oldest, p.HEADER_SIZE)
        kind, _, _, err = p.decode_response(_recv(oldest, p.parse_header(head, p.RESPONSE_MAGIC, 1 << 20)))
        assert kind == p.KIND_REFUSED and b"too many connections waiting" in err
    finally:
        for s in idle:
            s.close()
        _stop(d, thread)


def test_a_request_completed_after_stop_is_refused_not_run(tmp_path: Path, recorder: Recorder) -> None:
    d, thread = _serve(Config(socket_path=str(tmp_path / "d.sock"), read_timeout=5.0))
    conf = json.dumps({"cniVersion": "1.1.0", "name": "n1", "type": "podnet-fake"}).encode()
    frame = p.encode_request(b"podnet-fake", conf, [b"CNI_COMMAND=DEL", b"CNI_CONTAINERID=c1", b"CNI_NETNS=",
                                                    b"CNI_IFNAME=eth0", b"CNI_PATH=/nowhere"])
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(d.config.socket_path)
        s.sendall(frame[:10])  # a reader is now waiting for the rest
        time.sleep(0.2)
        d.stop()
        time.sleep(0.2)
        s.sendall(frame[10:])
        head = _recv(s, p.HEADER_SIZE)
        kind, _, _, err = p.decode_response(_recv(s, p.parse_header(head, p.RESPONSE_MAGIC, 1 << 20)))
    thread.join(timeout=15)
    assert not thread.is_alive()
    assert kind == p.KIND_REFUSED and b"shutting down" in err
    assert recorder.max_parallel == 0  # nothing ran: the shim runs it in-process


def test_stop_is_quick_with_many_silent_connections(tmp_path: Path, recorder: Recorder) -> None:
    """Connections that sent nothing (polled, or still in the listen backlog) are refused at stop
    without waiting on each of them."""
    d, thread = _serve(Config(socket_path=str(tmp_path / "d.sock"), read_timeout=30.0))
    idle: list[socket.socket] = []
    try:
        for _ in range(40):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            idle.append(s)
            s.connect(d.config.socket_path)
        time.sleep(0.3)
        start = time.monotonic()
        d.stop()
        thread.join(timeout=30)
        assert not thread.is_alive() and time.monotonic() - start < 2
        idle[0].settimeout(2)
        head = _recv(idle[0], p.HEADER_SIZE)
        kind, _, _, err = p.decode_response(_recv(idle[0], p.parse_header(head, p.RESPONSE_MAGIC, 1 << 20)))
        assert kind == p.KIND_REFUSED and b"shutting down" in err
    finally:
        for s in idle:
            s.close()
