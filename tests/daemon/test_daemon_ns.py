"""The real daemon process in a node namespace, with shims installed by ``podnet install``: SIGKILL
and SIGTERM in the middle of a burst of ADDs, root-only access, bad requests next to good ones,
callers in another namespace, metrics, and the same results with the daemon up and down."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_util import (
    VENV_BIN,
    Call,
    bridge_conf,
    finish,
    host_veths,
    install_shims,
    ipam_files,
    node_routes,
    ping_all,
    plugin_env,
    pod_links,
    run_plugin,
    start_plugin,
    wait_for_requests,
)

from cnienv import CniEnv, NodeDaemon
from nsutil import Netns, NetnsFactory
from podnet.plugins.veth import host_veth_name

pytestmark = pytest.mark.root

SUBNET, GATEWAY = "10.93.0.0/24", "10.93.0.1"
BURST = 20


@pytest.fixture(scope="module")
def shims(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cni")
    first = install_shims(root / "bin", root / "conf")
    assert all(line.startswith("installed") for line in first) and len(first) >= 5
    again = install_shims(root / "bin", root / "conf")
    assert [line.split()[0] for line in again] == ["unchanged"] * len(first)  # idempotent
    return root / "bin"


@pytest.fixture
def daemon(node: Netns, tmp_path: Path) -> Iterator[NodeDaemon]:
    d = NodeDaemon(node, tmp_path / "podnet.sock", tmp_path / "daemon.log").start()
    yield d
    d.kill()


def _burst(node: Netns, netns: NetnsFactory, shims: Path, sock: Path, conf: dict[str, Any],
           **extra: str) -> tuple[list[Netns], list[subprocess.Popen[bytes]]]:
    pods = [netns("pod") for _ in range(BURST)]
    plugin = shims / "podnet-bridge"
    procs = [start_plugin(node, plugin, plugin_env(sock, shims, "ADD", f"b{i}", pod.path, **extra), conf)
             for i, pod in enumerate(pods)]
    return pods, procs


def _assert_only(node: Netns, tmp_path: Path, pods: list[Netns], results: dict[int, Any]) -> None:
    """What the successful ADDs made is there and works; nothing else is."""
    assert host_veths(node) == sorted(host_veth_name("burst", f"b{i}", "eth0") for i in results)
    ips = sorted(r["ips"][0]["address"].split("/")[0] for r in results.values())
    assert ipam_files(tmp_path / "ipam", "burst") == (ips, [])
    assert len(set(ips)) == len(ips)
    assert node_routes(node) == [f"{SUBNET} dev brburst table main"]
    for i, pod in enumerate(pods):
        assert pod_links(pod) == (["eth0", "lo"] if i in results else ["lo"])
    # Every pod reaches the gateway, the first reaches the last (pings are few: the kernel's ARP
    # table is shared by all namespaces, and other test runs on the machine fill it too).
    targets = [(pods[i], [GATEWAY]) for i in results]
    targets[0][1].append(ips[-1])
    assert ping_all(targets) == []


@pytest.mark.parametrize("redo", ["redo", "no-redo"])
def test_sigkill_mid_burst_then_gc_leaves_nothing(node: Netns, netns: NetnsFactory, tmp_path: Path,
                                                  shims: Path, daemon: NodeDaemon, redo: str) -> None:
    conf = bridge_conf("burst", "brburst", SUBNET, tmp_path / "ipam")
    flag = "1" if redo == "redo" else "0"
    pods, procs = _burst(node, netns, shims, daemon.socket, conf, PODNET_SHIM_REDO=flag)
    wait_for_requests(daemon, "ADD", 2)
    daemon.kill()  # SIGKILL, while the rest of the burst is in flight or queued
    calls = [finish(proc) for proc in procs]
    ok = {i: c.json() for i, c in enumerate(calls) if c.returncode == 0}
    failed = [c for c in calls if c.returncode != 0]
    print(f"\n{redo}: {len(ok)} ADDs succeeded, {len(failed)} failed after the daemon was killed")
    for c in failed:  # a failure says the request may have partly happened: retry later
        assert c.returncode == 1 and c.json()["code"] == 11, c.stdout
    if redo == "redo":
        assert not failed  # in-flight ADDs were undone and redone in-process

    daemon.start()  # a new daemon replaces the stale socket the killed one left
    valid = [{"containerID": f"b{i}", "ifname": "eth0"} for i in ok]
    gc = run_plugin(node, shims / "podnet-bridge", plugin_env(daemon.socket, shims, "GC"),
                    {**conf, "cni.dev/valid-attachments": valid})
    assert gc.returncode == 0, gc.stdout
    _assert_only(node, tmp_path, pods, ok)

    for i in ok:  # and everything can be deleted again, through the daemon
        env = plugin_env(daemon.socket, shims, "DEL", f"b{i}", pods[i].path)
        assert run_plugin(node, shims / "podnet-bridge", env, conf).returncode == 0
    assert host_veths(node) == [] and ipam_files(tmp_path / "ipam", "burst") == ([], [])
    assert daemon.requests("GC")


def test_sigterm_mid_burst_loses_nothing(node: Netns, netns: NetnsFactory, tmp_path: Path, shims: Path,
                                         daemon: NodeDaemon) -> None:
    """Graceful stop: in-flight ADDs finish, queued ones are refused and run in-process, later ones
    find no socket and run in-process. Every ADD succeeds, with the daemon's exit code 0."""
    conf = bridge_conf("burst", "brburst", SUBNET, tmp_path / "ipam")
    pods, procs = _burst(node, netns, shims, daemon.socket, conf)
    wait_for_requests(daemon, "ADD", 2)
    assert daemon.stop() == 0
    calls = [finish(proc) for proc in procs]
    assert [c.returncode for c in calls] == [0] * BURST, [c.stdout for c in calls if c.returncode]
    assert not os.path.exists(daemon.socket)
    events = [r["event"] for r in daemon.records()]
    assert "stopping" in events and events[-1] == "stopped" and "internal-error" not in events
    _assert_only(node, tmp_path, pods, {i: c.json() for i, c in enumerate(calls)})


_CLIENT = """
import os, socket, sys
from podnet.daemon import protocol as p
path = sys.argv[1]
os.setgroups([]); os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(path)
except PermissionError:
    print("EACCES"); sys.exit(0)
try:
    s.sendall(p.encode_request(b"podnet-loopback", b"{}", [b"CNI_COMMAND=VERSION"]))
except OSError:
    pass
data = b""
while chunk := s.recv(65536):
    data += chunk
kind, code, out, err = p.decode_response(data[p.HEADER_SIZE:])
print(kind.decode(), err.decode())
"""


def test_socket_refuses_non_root(node: Netns) -> None:
    # A world-traversable directory, so only the socket's own mode and SO_PEERCRED stand in the way.
    where = Path(tempfile.mkdtemp(prefix="podnet-sock-"))
    try:
        where.chmod(0o755)
        d = NodeDaemon(node, where / "podnet.sock", where / "daemon.log").start()
        try:
            assert (where / "podnet.sock").stat().st_mode & 0o777 == 0o600

            def client() -> str:
                proc = subprocess.run([sys.executable, "-c", _CLIENT, str(d.socket)], capture_output=True,
                                      text=True, timeout=30)
                assert proc.returncode == 0, proc.stderr
                return proc.stdout.strip()

            assert client() == "EACCES"
            d.socket.chmod(0o666)  # as if someone loosened it: SO_PEERCRED still says no
            answer = client()
            assert answer.startswith("refused") and "peer uid 65534 is not allowed" in answer
            assert any(r["event"] == "refused" and r["reason"] == "not-root" for r in d.records())
        finally:
            assert d.stop() == 0
    finally:
        shutil.rmtree(where)


_BAD = """
import socket, sys
from podnet.daemon import protocol as p
def ask(data):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    try:
        s.sendall(data)
    except OSError:
        pass
    got = b""
    try:
        while chunk := s.recv(65536):
            got += chunk
    except OSError:
        pass
    kind, code, out, err = p.decode_response(got[p.HEADER_SIZE:])
    return kind.decode() + ": " + err.decode()
for data in (b"\\x00" * 64, p.REQUEST_MAGIC + (1 << 30).to_bytes(4, "big"),
             p.encode_request(b"podnet-bridge", b"{}", [b"no-equals-sign"]),
             p.encode_request(b"podnet-bridge", b"x" * (p.MAX_STDIN + 1), [])):
    print(ask(data))
"""


def test_bad_requests_next_to_good_ones(node: Netns, netns: NetnsFactory, tmp_path: Path, shims: Path,
                                        daemon: NodeDaemon) -> None:
    conf = bridge_conf("burst", "brburst", SUBNET, tmp_path / "ipam")
    pods, procs = _burst(node, netns, shims, daemon.socket, conf)
    bad = node.run([sys.executable, "-c", _BAD, str(daemon.socket)])
    answers = bad.stdout.splitlines()
    assert len(answers) == 4 and all(a.startswith("refused: bad request") for a in answers), answers
    assert "over the limit" in answers[1] and "not KEY=VALUE" in answers[2] and "over the limit" in answers[3]
    calls = [finish(proc) for proc in procs]
    assert [c.returncode for c in calls] == [0] * BURST
    served = daemon.requests(expect=BURST)
    assert len(served) == BURST  # every good one went through the daemon
    _assert_only(node, tmp_path, pods, {i: c.json() for i, c in enumerate(calls)})


def test_caller_in_another_namespace_runs_in_process(node: Netns, netns: NetnsFactory, tmp_path: Path,
                                                     shims: Path, daemon: NodeDaemon) -> None:
    """The daemon acts on its own namespace as "the host"; a caller elsewhere is refused, and its
    shim does the work in-process, in the caller's namespace."""
    other, pod = netns("node2"), netns("pod")
    conf = bridge_conf("burst", "brother", SUBNET, tmp_path / "ipam")
    call = run_plugin(other, shims / "podnet-bridge", plugin_env(daemon.socket, shims, "ADD", "x", pod.path),
                      conf)
    assert call.returncode == 0 and "daemon refused the request" in call.stderr
    assert host_veths(other) == [host_veth_name("burst", "x", "eth0")] and host_veths(node) == []
    assert [r["reason"] for r in daemon.records() if r["event"] == "refused"] == ["peer-netns"]


def _metrics(node: Netns, port: int) -> dict[str, float]:
    script = f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics').read().decode())"
    text = node.run([sys.executable, "-c", script]).stdout
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def test_same_results_with_and_without_the_daemon_and_metrics(node: Netns, netns: NetnsFactory,
                                                              tmp_path: Path, shims: Path) -> None:
    """CniEnv's daemon mode through the installed shims: ADD/CHECK/DEL through the daemon, then the
    same with the daemon stopped; identical results; the metrics saw the daemon's calls."""
    env = CniEnv(node, tmp_path, cni_path=str(shims), daemon=False)
    assert env.node_daemon is None
    env.start_daemon("--metrics-addr", "127.0.0.1:9617")
    env.write_conflist("mnet", [{k: v for k, v in bridge_conf("mnet", "brm", SUBNET, env.ipam_dir).items()
                                 if k not in ("cniVersion", "name")}], version="1.1.0")
    results: list[dict[str, Any]] = []
    for up in (True, False):
        if not up:
            assert env.stop_daemon() == 0
        pod = netns("pod")
        results.append(env.add("mnet", pod))
        env.cni("check", "mnet", pod)
        assert ping_all([(pod, [GATEWAY])]) == []
        if up:
            assert env.node_daemon is not None
            env.node_daemon.requests("CHECK")  # logged after it was counted
            metrics = _metrics(node, 9617)
        env.cni("del", "mnet", pod)
    served = [r["command"] for r in env.node_daemon.requests(expect=3)] if env.node_daemon else []
    assert served == ["ADD", "CHECK", "DEL"]
    shape = [{k: sorted(v) if isinstance(v, dict) else len(v) for k, v in r.items() if k != "cniVersion"}
             for r in results]
    assert shape[0] == shape[1]
    assert metrics['podnet_daemon_request_duration_seconds_count{command="ADD",plugin="podnet-bridge"}'] == 1
    assert metrics['podnet_daemon_requests_total{command="CHECK",plugin="podnet-bridge",result="ok"}'] == 1
    assert metrics["podnet_netlink_dump_attempts_total"] >= 1
    assert metrics["podnet_netlink_dump_gave_up_total"] == 0
    key = 'podnet_ipam_addresses_in_use{network="mnet",range_set="10.93.0.1-10.93.0.254 in 10.93.0.0/24"}'
    assert metrics[key] == 1
    assert host_veths(node) == [] and env.ip_files("mnet") == []


def test_console_script_shims_work_too(node: Netns, netns: NetnsFactory, tmp_path: Path,
                                       daemon: NodeDaemon) -> None:
    """The venv's console scripts (pyproject) are shims as well: through the daemon and without."""
    pod = netns("pod")
    conf = {"cniVersion": "1.0.0", "name": "lo", "type": "podnet-loopback"}
    plugin = VENV_BIN / "podnet-loopback"
    for sock in (daemon.socket, tmp_path / "none.sock"):
        env = plugin_env(sock, VENV_BIN, "ADD", "c", pod.path, ifname="lo")
        call: Call = run_plugin(node, plugin, env, conf)
        assert call.returncode == 0 and call.json()["interfaces"][0]["name"] == "lo"
    assert len(daemon.requests()) == 1
    assert json.loads(node.run([str(plugin)], env={**os.environ, "CNI_COMMAND": "VERSION"}).stdout)[
        "supportedVersions"]
