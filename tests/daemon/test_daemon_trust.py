"""The daemon does nothing for a caller that the caller could not do itself: root callers without
CAP_NET_ADMIN/CAP_SYS_ADMIN are refused (the shim then runs the plugin with the caller's own
rights), a caller that exited before it was checked is refused, and a delegated IPAM executable
is run only from the daemon's own plugin directories."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_daemon_server import Recorder, _recv, call

from podnet.cni import skel
from podnet.cni.result import Result
from podnet.daemon import peer as peer_mod
from podnet.daemon import protocol as p
from podnet.daemon import registry
from podnet.daemon.logs import JsonLog
from podnet.daemon.server import Config, Daemon
from podnet.plugins import ipam_delegate

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: callers are root without capabilities")

SETPRIV = shutil.which("setpriv")

# A client that sends one request frame (argv[1], hex) and prints the answer's kind and stderr.
CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
s.sendall(bytes.fromhex(sys.argv[2]))
buf = b""
while True:
    chunk = s.recv(1 << 16)
    if not chunk:
        break
    buf += chunk
print(buf.hex())
"""


def _frame(plugin: str = "podnet-fake", conf: dict[str, object] | None = None, path: str = "/nowhere",
           cid: str = "c1") -> bytes:
    """A DEL: the one command the daemon runs without a namespace fd from the shim."""
    conf = conf or {"cniVersion": "1.1.0", "name": "n1", "type": plugin}
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": cid, "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
           "CNI_PATH": path}
    return p.encode_request(plugin.encode(), json.dumps(conf).encode(),
                            [f"{k}={v}".encode() for k, v in env.items()])


def _ask_as(prefix: list[str], d: Daemon, frame: bytes) -> tuple[bytes, int, bytes, bytes]:
    proc = subprocess.run([*prefix, sys.executable, "-I", "-c", CLIENT, d.config.socket_path, frame.hex()],
                          capture_output=True, text=True, timeout=30, check=True)
    raw = bytes.fromhex(proc.stdout.strip())
    return p.decode_response(raw[p.HEADER_SIZE:p.HEADER_SIZE + p.parse_header(
        raw[:p.HEADER_SIZE], p.RESPONSE_MAGIC, p.MAX_RESPONSE_BODY)])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Daemon, Recorder, io.StringIO]]:
    rec = Recorder(delay=0)
    registry._cache["podnet-fake"] = rec.plugin()
    log = io.StringIO()
    d = Daemon(Config(socket_path=str(tmp_path / "run" / "d.sock"), workers=4, read_timeout=2.0,
                      plugin_dirs=(str(tmp_path / "trusted"),)), log=JsonLog(log))
    d.start()
    thread = threading.Thread(target=d.serve_forever, daemon=True)
    thread.start()
    yield d, rec, log
    d.stop()
    thread.join(timeout=10)
    assert not thread.is_alive()
    registry._cache.pop("podnet-fake", None)


@pytest.mark.skipif(SETPRIV is None, reason="needs setpriv (util-linux)")
@pytest.mark.parametrize("drop", ["-all", "-net_admin", "-sys_admin"])
def test_root_caller_without_the_capabilities_is_refused(served: tuple[Daemon, Recorder, io.StringIO],
                                                         drop: str) -> None:
    d, rec, _ = served
    # As root, an exec'd program's capabilities are its inheritable set plus the bounding set.
    prefix = [str(SETPRIV), f"--inh-caps={drop}", f"--bounding-set={drop}", "--"]
    kind, code, _, err = _ask_as(prefix, d, _frame())
    assert (kind, code) == (p.KIND_REFUSED, 1), err
    assert b"CAP_" in err and rec.max_parallel == 0  # the plugin never ran
    kind, code, _, _ = _ask_as([], d, _frame())  # the same call with the capabilities: served
    assert (kind, code) == (p.KIND_RAN, 0) and rec.max_parallel == 1


Served = tuple[Daemon, Recorder, io.StringIO]


def test_a_caller_that_exited_before_the_check_is_refused(served: Served) -> None:
    """Its pid may already be another process's: nothing read through /proc/<pid> counts."""
    d, rec, _ = served
    sock_path = d.config.socket_path
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path + ".probe")
    listener.listen(1)
    try:
        script = f"import socket;s=socket.socket(socket.AF_UNIX);s.connect({sock_path + '.probe'!r})"
        # connected, exited and reaped before the daemon side looks at it
        subprocess.run([sys.executable, "-I", "-c", script], check=True, timeout=30)
        conn, _ = listener.accept()
        with conn, pytest.raises(peer_mod.PeerRefused) as refused:
            peer_mod.read_peer(conn)
        assert refused.value.reason == "peer-gone"
    finally:
        listener.close()
    assert call(d, "DEL")[:2] == (p.KIND_RAN, 0)
    assert rec.max_parallel == 1


def test_capabilities_are_read_from_proc_status() -> None:
    a, b = socket.socketpair()
    with a, b:
        me = peer_mod.read_peer(a)
    assert me.pid == os.getpid() and not peer_mod.missing_caps(me)
    assert me.netns == peer_mod.ns_identity("/proc/self/ns/net")
    assert peer_mod.cap_eff(b"Name:\tx\nCapEff:\t0000000000001000\nCapBnd:\t0\n") == 1 << 12
    assert peer_mod.missing_caps(peer_mod.Peer(1, 0, 0, 1 << 12)) == ["CAP_SYS_ADMIN"]


# -- delegated IPAM ---------------------------------------------------------------------------------


def _delegating_plugin() -> skel.Plugin:
    return skel.Plugin(add=lambda args: Result(cni_version=args.cni_version), delete=ipam_delegate.ipam_del)


def _ipam_script(directory: Path, marker: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "outside-ipam"
    script.write_text(f"#!/bin/sh\ncat >/dev/null\necho ran >{marker}\n"
                      'echo \'{"cniVersion":"1.1.0","ips":[{"address":"10.9.0.2/24"}]}\'\n')
    script.chmod(0o755)


def test_delegated_ipam_from_the_callers_path_is_not_run_by_the_daemon(
        served: tuple[Daemon, Recorder, io.StringIO], tmp_path: Path) -> None:
    """The caller's CNI_PATH names a directory the daemon does not trust: refused (the shim then
    runs it in-process with the caller's own capabilities); from a trusted directory it runs."""
    d = served[0]
    registry._cache["podnet-delegating"] = _delegating_plugin()
    try:
        marker = tmp_path / "ran"
        conf = {"cniVersion": "1.1.0", "name": "n1", "type": "podnet-delegating",
                "ipam": {"type": "outside-ipam"}}
        callers = tmp_path / "callers"
        _ipam_script(callers, marker)
        kind, _, _, err = call_frame(d, _frame("podnet-delegating", conf, path=str(callers)))
        assert kind == p.KIND_REFUSED and b"not one of the daemon's plugin directories" in err
        assert not marker.exists()
        # Even when a trusted directory comes later on the path: the caller's copy would win.
        _ipam_script(tmp_path / "trusted", marker)
        both = f"{callers}:{tmp_path / 'trusted'}"
        kind, _, _, err = call_frame(d, _frame("podnet-delegating", conf, path=both))
        assert kind == p.KIND_REFUSED and not marker.exists()
        trusted = str(tmp_path / "trusted")
        kind, code, out, err = call_frame(d, _frame("podnet-delegating", conf, path=trusted))
        assert (kind, code) == (p.KIND_RAN, 0), out + err
        assert marker.exists()
    finally:
        registry._cache.pop("podnet-delegating", None)


def call_frame(d: Daemon, frame: bytes) -> tuple[bytes, int, bytes, bytes]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(d.config.socket_path)
        s.sendall(frame)
        head = _recv(s, p.HEADER_SIZE)
        return p.decode_response(_recv(s, p.parse_header(head, p.RESPONSE_MAGIC, p.MAX_RESPONSE_BODY)))



def test_a_pidfd_tells_whether_its_process_still_exists() -> None:
    child = subprocess.Popen([sys.executable, "-I", "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    pidfd = os.pidfd_open(child.pid)
    try:
        assert peer_mod.alive(pidfd)
        child.communicate(b"", timeout=30)  # exits and is reaped: its pid may now be anyone's
        assert not peer_mod.alive(pidfd)
    finally:
        os.close(pidfd)
