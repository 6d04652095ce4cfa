"""agent.nodeconf: this node's CNI config from its Node's pod CIDR(s) (no root, except the last test,
which runs the real ``podnet agent`` in a node namespace of the test's)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest

from nsutil import Netns
from podnet.agent.model import Node, Pod
from podnet.agent.nodeconf import NodeConfig, NodeConfigOptions
from podnet.agent.objects import Kind
from podnet.agent.store import Event, EventType, Store
from podnet.cni import skel
from podnet.cni.config import plugin_stdin
from podnet.ipam.config import load_host_local
from podnet.plugins import bridge, routed
from podnet.plugins.agent_notify import ask
from podnet.runtime import confdir

PODNET = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "podnet")
V4, V6, V4_NEW = "10.71.3.0/24", "fd00:71:3::/64", "10.71.9.0/24"


# ---- helpers -------------------------------------------------------------------------------------


def node(name: str, *cidrs: str) -> Node:
    return Node(name, tuple(ip_network(c) for c in cidrs))


def pod(name: str, ip: str, node_name: str = "n1", **kw: Any) -> Pod:
    return Pod("x", name, node_name=node_name, ips=(ip_address(ip),), **kw)


def put(store: Store, obj: Node | Pod) -> None:
    store.apply(Event(EventType.MODIFIED, obj), "t")


def synced_store(*objs: Node | Pod) -> Store:
    store = Store("n1")
    store.register_source("t", [Kind.NODE, Kind.POD])
    store.replace(Kind.NODE, "t", [o for o in objs if isinstance(o, Node)])
    store.replace(Kind.POD, "t", [o for o in objs if isinstance(o, Pod)])
    return store


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    return tmp_path / "net.d"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "ipam"


def make(store: Store, conf_dir: Path, data_dir: Path, mode: str = "bridge",
         retry: float = 60.0) -> NodeConfig:
    return NodeConfig(store, NodeConfigOptions(conf_dir=str(conf_dir), mode=mode, data_dir=str(data_dir)),
                      retry_seconds=retry)


def conf_file(conf_dir: Path) -> Path:
    return conf_dir / "10-podnet.conflist"


def ranges_loaded(conf_dir: Path, plugin_type: str) -> list[list[str]]:
    """Loaded as the runtime loads it (``podnet cni``'s loader, the stdin it gives the plugin), then
    parsed by the plugin's own config parser and host-local's: the subnets of each range set."""
    net = confdir.load_network(conf_dir, "podnet")
    assert [p.type for p in net.plugins] == [plugin_type]
    stdin = plugin_stdin(net, net.plugins[0])
    conf = json.loads(stdin)
    args = skel.CmdArgs(command="ADD", container_id="c", netns="/run/netns/x", ifname="eth0", args=[],
                        path=[], stdin_data=stdin, conf=conf, cni_version=net.cni_version)
    if plugin_type == "podnet-bridge":
        parsed = bridge.load_conf(args)
        assert parsed.bridge == "podnet0" and parsed.is_gateway
    else:
        assert routed.load_config(args).network == "podnet"
    ipam = load_host_local(conf, [], net.cni_version)
    return [[str(r.subnet) for r in rs.ranges] for rs in ipam.range_sets]


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def running() -> Iterator[list[NodeConfig]]:
    started: list[NodeConfig] = []
    yield started
    for nc in started:
        nc.stop()


# ---- no CIDR, then a CIDR ----------------------------------------------------------------------


def test_no_pod_cidr_no_file(conf_dir: Path, data_dir: Path) -> None:
    for store in (synced_store(), synced_store(node("n1")), synced_store(node("n2", V4))):
        nc = make(store, conf_dir, data_dir)
        assert nc.sync_once()
        assert not conf_dir.exists()
        assert nc.status()["state"] == "waiting for the Node's pod CIDR" and nc.status()["error"] is None


@pytest.mark.parametrize(("mode", "plugin_type"), [("bridge", "podnet-bridge"), ("routed", "podnet-routed")])
@pytest.mark.parametrize("cidrs", [(V4,), (V6,), (V4, V6)], ids=["ipv4", "ipv6", "dual"])
def test_file_has_exactly_the_node_ranges(conf_dir: Path, data_dir: Path, cidrs: tuple[str, ...], mode: str,
                                          plugin_type: str) -> None:
    nc = make(synced_store(node("n1", *cidrs), node("n2", "10.71.4.0/24")), conf_dir, data_dir, mode)
    assert nc.sync_once()
    assert ranges_loaded(conf_dir, plugin_type) == [[c] for c in cidrs]
    body = json.loads(conf_file(conf_dir).read_text())
    ipam = body["plugins"][0]["ipam"]
    assert ipam["dataDir"] == str(data_dir)
    assert ipam.get("routes", []) == ([{"dst": "0.0.0.0/0" if ip_network(c).version == 4 else "::/0"}
                                       for c in cidrs] if mode == "bridge" else [])
    status = nc.status()
    assert status["pod_cidrs"] == list(cidrs) and status["state"] == "current" and status["writes"] == 1
    assert status["path"] == str(conf_file(conf_dir)) and status["written_at"] is not None


def test_unchanged_content_is_not_rewritten(conf_dir: Path, data_dir: Path) -> None:
    store = synced_store(node("n1", V4))
    nc = make(store, conf_dir, data_dir)
    assert nc.sync_once()
    before = os.stat(conf_file(conf_dir))
    time.sleep(0.01)
    put(store, Node("n1", (ip_network(V4),), (ip_address("192.0.2.1"),)))  # the Node changed, not its CIDR
    assert nc.sync_once()
    # A second agent (a restart) finds the file right and leaves it alone too.
    assert make(store, conf_dir, data_dir).sync_once()
    after = os.stat(conf_file(conf_dir))
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert nc.status()["writes"] == 1


# ---- a changed CIDR ----------------------------------------------------------------------------


def test_cidr_change_without_pods_rewrites(conf_dir: Path, data_dir: Path) -> None:
    # A pod of another node with an old address, a finished pod and a host-network pod hold nothing here.
    store = synced_store(node("n1", V4), pod("elsewhere", "10.71.3.5", "n2"),
                         pod("done", "10.71.3.6", terminal=True), pod("host", "10.71.3.1", host_network=True))
    nc = make(store, conf_dir, data_dir)
    assert nc.sync_once()
    put(store, node("n1", V4_NEW))
    assert nc.sync_once()
    assert ranges_loaded(conf_dir, "podnet-bridge") == [[V4_NEW]]
    assert nc.status()["writes"] == 2 and nc.status()["refusals"] == 0


def test_cidr_change_with_a_pod_in_the_old_range_is_refused_until_it_leaves(
        conf_dir: Path, data_dir: Path, running: list[NodeConfig]) -> None:
    store = synced_store(node("n1", V4), pod("web", "10.71.3.5"))
    nc = make(store, conf_dir, data_dir, retry=60.0)  # only the pod's deletion can make it look again
    running.append(nc)
    nc.start()
    wait_for(lambda: nc.status()["state"] == "current")
    old = conf_file(conf_dir).read_bytes()
    inode = os.stat(conf_file(conf_dir)).st_ino
    put(store, node("n1", V4_NEW))
    wait_for(lambda: nc.status()["state"] == "refused")
    status = nc.status()
    assert V4 in status["error"] and V4_NEW in status["error"] and "x/web 10.71.3.5" in status["error"]
    assert status["refusals"] == 1 and status["pod_cidrs"] == [V4] and status["node_pod_cidrs"] == [V4_NEW]
    assert conf_file(conf_dir).read_bytes() == old and os.stat(conf_file(conf_dir)).st_ino == inode
    assert not nc.sync_once() and nc.status()["refusals"] == 1  # the same refusal is counted once
    store.delete(Kind.POD, ("x", "web"))
    wait_for(lambda: nc.status()["state"] == "current")
    assert ranges_loaded(conf_dir, "podnet-bridge") == [[V4_NEW]] and nc.status()["error"] is None


def test_cidr_change_with_a_reservation_in_the_old_range_is_refused(conf_dir: Path, data_dir: Path) -> None:
    store = synced_store(node("n1", V4))
    nc = make(store, conf_dir, data_dir)
    assert nc.sync_once()
    (data_dir / "podnet").mkdir(parents=True)
    (data_dir / "podnet" / "10.71.3.9").write_bytes(b"cid\r\neth0")  # a pod the sources do not show yet
    (data_dir / "podnet" / "last_reserved_ip.0").write_text("10.71.3.9")
    (data_dir / "podnet" / "lock").write_text("")
    put(store, node("n1", V4_NEW))
    assert not nc.sync_once()
    assert "10.71.3.9" in nc.status()["error"] and nc.status()["state"] == "refused"
    assert ranges_loaded(conf_dir, "podnet-bridge") == [[V4]]
    (data_dir / "podnet" / "10.71.3.9").unlink()  # released: the retry goes through
    assert nc.sync_once()
    assert ranges_loaded(conf_dir, "podnet-bridge") == [[V4_NEW]]


def test_adding_a_family_keeps_the_old_range_so_pods_in_it_do_not_block(conf_dir: Path,
                                                                        data_dir: Path) -> None:
    store = synced_store(node("n1", V4), pod("web", "10.71.3.5"))
    nc = make(store, conf_dir, data_dir)
    assert nc.sync_once()
    put(store, node("n1", V4, V6))
    assert nc.sync_once()
    assert ranges_loaded(conf_dir, "podnet-bridge") == [[V4], [V6]]


def test_a_file_from_a_previous_run_counts_as_the_old_range(conf_dir: Path, data_dir: Path) -> None:
    """After a restart the old CIDR is the one in the file, not one the agent remembers."""
    assert make(synced_store(node("n1", V4)), conf_dir, data_dir).sync_once()
    nc = make(synced_store(node("n1", V4_NEW), pod("web", "10.71.3.5")), conf_dir, data_dir)
    assert not nc.sync_once()
    assert V4 in nc.status()["error"] and ranges_loaded(conf_dir, "podnet-bridge") == [[V4]]


def test_node_losing_its_cidr_keeps_the_file(conf_dir: Path, data_dir: Path) -> None:
    store = synced_store(node("n1", V4))
    nc = make(store, conf_dir, data_dir)
    assert nc.sync_once()
    store.delete(Kind.NODE, "n1")
    assert nc.sync_once()
    assert ranges_loaded(conf_dir, "podnet-bridge") == [[V4]]
    assert nc.status()["state"] == "waiting for the Node's pod CIDR" and nc.status()["pod_cidrs"] == [V4]


def test_a_cidr_host_local_refuses_is_never_written(conf_dir: Path, data_dir: Path) -> None:
    nc = make(synced_store(node("n1", "127.0.0.0/24")), conf_dir, data_dir)
    assert nc.sync_once()  # no retry: only a new CIDR helps, and that wakes it
    assert not conf_dir.exists()
    assert "127.0.0.0/24" in nc.status()["error"] and nc.status()["state"] == "failed"


# ---- only this node; after every source listed -------------------------------------------------


def test_only_this_node_and_only_once_synced(conf_dir: Path, data_dir: Path,
                                             running: list[NodeConfig]) -> None:
    store = Store("n1")
    store.register_source("t", [Kind.NODE])
    nc = make(store, conf_dir, data_dir)
    running.append(nc)
    nc.start()
    put(store, node("n1", V4))  # before the first full list: not yet
    time.sleep(0.2)
    assert not conf_dir.exists()
    store.replace(Kind.NODE, "t", [node("n1", V4), node("n2")])
    wait_for(conf_file(conf_dir).exists)
    before = os.stat(conf_file(conf_dir))
    put(store, node("n2", V4_NEW))  # another node's CIDR
    put(store, node("n3", "10.71.5.0/24"))
    store.delete(Kind.NODE, "n2")
    put(store, node("n1", V4))  # a change of this node's after them: once it is seen, they were too
    time.sleep(0.2)
    assert ranges_loaded(conf_dir, "podnet-bridge") == [[V4]] and nc.status()["writes"] == 1
    assert os.stat(conf_file(conf_dir)).st_ino == before.st_ino


# ---- the write ---------------------------------------------------------------------------------


def test_the_write_is_a_rename_of_a_complete_file(conf_dir: Path, data_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    renames: list[tuple[str, str, bytes]] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        with open(src, "rb") as f:
            renames.append((src, dst, f.read()))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    store = synced_store(node("n1", V4))
    nc = make(store, conf_dir, data_dir)
    assert nc.sync_once()
    inode = os.stat(conf_file(conf_dir)).st_ino
    put(store, node("n1", V4_NEW))
    assert nc.sync_once()
    assert [dst for _, dst, _ in renames] == [str(conf_file(conf_dir))] * 2
    for src, _, data in renames:
        # Written beside it under a name no runtime loads (a dot file, no config extension), whole.
        assert os.path.dirname(src) == str(conf_dir) and os.path.basename(src).startswith(".")
        assert not src.endswith((".conf", ".conflist", ".json"))
        json.loads(data)
    assert renames[1][2] == conf_file(conf_dir).read_bytes()
    assert os.stat(conf_file(conf_dir)).st_ino != inode  # replaced, not written in place
    assert sorted(os.listdir(conf_dir)) == ["10-podnet.conflist"]  # no temporary file left
    assert oct(os.stat(conf_file(conf_dir)).st_mode & 0o777) == "0o644"


PODMAN = {"cniVersion": "0.4.0", "name": "podman", "plugins": [
    {"type": "bridge", "bridge": "cni-podman0",
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.71.0.0/16"}]]}}]}


def test_overlap_with_another_network_is_refused_loudly(conf_dir: Path, data_dir: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    conf_dir.mkdir()
    (conf_dir / "87-podman-bridge.conflist").write_text(json.dumps(PODMAN))
    nc = make(synced_store(node("n1", V4)), conf_dir, data_dir)
    assert not nc.sync_once()  # retried: the other network may go away
    error = nc.status()["error"]
    assert "overlaps 10.71.0.0/16" in error and "87-podman-bridge.conflist" in error and V4 in error
    assert sorted(os.listdir(conf_dir)) == ["87-podman-bridge.conflist"]
    assert nc.status()["state"] == "failed" and nc.status()["refusals"] == 0  # not a refused CIDR change
    assert any(r.levelname == "ERROR" and "overlaps" in r.getMessage() for r in caplog.records)
    (conf_dir / "87-podman-bridge.conflist").unlink()
    assert nc.sync_once() and conf_file(conf_dir).exists()


def test_an_unwritable_conf_dir_is_an_error_in_status_not_a_crash(tmp_path: Path, data_dir: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    nc = make(synced_store(node("n1", V4)), blocker / "net.d", data_dir)
    assert not nc.sync_once()
    assert str(blocker) in nc.status()["error"] and nc.status()["state"] == "failed"


def test_bad_options_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bridge name 'a/b'"):
        NodeConfig(Store("n1"), NodeConfigOptions(conf_dir=str(tmp_path), bridge="a/b"))
    with pytest.raises(ValueError, match="'vxlan'"):
        NodeConfig(Store("n1"), NodeConfigOptions(conf_dir=str(tmp_path), mode="vxlan"))
    # Asking for a CNI option while writing is off is a mistake, said before anything starts.
    proc = subprocess.run([PODNET, "agent", "--manifests", str(tmp_path), "--cni-bridge", "br1"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "--cni-bridge" in proc.stderr and "--write-cni-config" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---- through the real agent process ------------------------------------------------------------

NODE_YAML = """\
apiVersion: v1
kind: Node
metadata: {{name: n1}}
spec: {{{spec}}}
"""


@pytest.mark.root
def test_agent_writes_the_config_when_its_node_gets_a_pod_cidr(node: Netns, tmp_path: Path) -> None:
    manifests, conf, sock = tmp_path / "manifests", tmp_path / "net.d", str(tmp_path / "agent.sock")
    manifests.mkdir()
    (manifests / "node.yaml").write_text(NODE_YAML.format(spec=""))
    argv = [PODNET, "agent", "--manifests", str(manifests), "--node-name", "n1", "--socket", sock,
            "--cni-conf-dir", str(conf), "--cni-network", "routed", "--cni-data-dir", str(tmp_path / "ipam")]
    with open(tmp_path / "agent.log", "wb") as log:
        proc = node.popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        def cni_status() -> dict[str, Any] | None:
            assert proc.poll() is None, (tmp_path / "agent.log").read_text()
            try:
                answer = ask(sock, {"op": "status"}, 2)
            except (OSError, ValueError):
                return None
            found: dict[str, Any] = answer["status"]["cni_config"]
            return found

        wait_for(lambda: (cni_status() or {}).get("state") == "waiting for the Node's pod CIDR", 30)
        assert not conf.exists()
        (manifests / "node.yaml").write_text(NODE_YAML.format(spec=f"podCIDRs: [{V4}, {V6}], podCIDR: {V4}"))
        wait_for(lambda: (cni_status() or {}).get("state") == "current", 10)
        assert ranges_loaded(conf, "podnet-routed") == [[V4], [V6]]
        assert (cni_status() or {})["pod_cidrs"] == [V4, V6]
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(15) == 0
        assert ranges_loaded(conf, "podnet-routed") == [[V4], [V6]]  # stays when the agent stops
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_status_text_names_the_cni_config() -> None:
    from podnet.cli.agent_cmd import _cni_config_lines

    assert _cni_config_lines(None) == []
    line, = _cni_config_lines({"path": "/etc/cni/net.d/10-podnet.conflist", "state": "current",
                               "pod_cidrs": ["10.244.3.0/24", "fd00:3::/64"], "error": None})
    assert line == ("  cni config /etc/cni/net.d/10-podnet.conflist: current, ranges 10.244.3.0/24, "
                    "fd00:3::/64; last error: none")
    line, = _cni_config_lines({"path": "p", "state": "refused", "pod_cidrs": [], "error": "in use"})
    assert line == "  cni config p: refused, ranges none yet; last error: in use"
