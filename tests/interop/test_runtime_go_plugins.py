"""podnet's runtime (``podnet cni``) drives Debian's Go reference plugins in real namespaces."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest

from cnienv import CniEnv, pod_address, veths
from nsutil import Netns, NetnsFactory

pytestmark = [pytest.mark.root, pytest.mark.interop]


@pytest.fixture
def env(node: Netns, tmp_path: Path) -> CniEnv:
    return CniEnv(node, tmp_path)


def _bridge(env: CniEnv, version: str, subnet: str = "10.77.0.0/24") -> str:
    env.write_conflist("br", [{"type": "bridge", "bridge": "pnbr0", "isGateway": True,
                               "ipam": env.host_local(subnet)}], version=version)
    return "br"


def _assert_all_ping(pods: list[Netns], addrs: dict[str, str]) -> None:
    for src, dst in itertools.permutations(pods, 2):
        assert src.ping(addrs[dst.name].split("/")[0]), f"{src.name} cannot reach {dst.name}"


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_bridge_host_local_lifecycle(env: CniEnv, netns: NetnsFactory, version: str) -> None:
    net = _bridge(env, version)
    pods = [netns("pod") for _ in range(3)]
    addrs = {}
    for pod in pods:
        result = env.add(net, pod)
        assert result["cniVersion"] == version
        addrs[pod.name] = result["ips"][0]["address"]
        assert pod_address(pod) == [addrs[pod.name]]
    assert len(set(addrs.values())) == 3
    _assert_all_ping(pods, addrs)
    assert len(env.cache_files()) == 3 and env.pending_files() == []
    if version != "0.3.1":
        for pod in pods:
            env.cni("check", net, pod)
    for pod in pods:
        env.cni("del", net, pod)
        assert pod_address(pod) == []
    assert veths(env.node) == []
    assert env.ip_files(net) == []
    assert env.cache_files() == [] and env.pending_files() == []
    # DEL is idempotent: a second DEL, and a DEL after the pod namespace is gone, succeed.
    env.cni("del", net, pods[0])
    env.cni("del", net, pods[0], "--container-id", "gone1")


def test_ptp_pods_reach_each_other(env: CniEnv, netns: NetnsFactory) -> None:
    env.write_conflist("p2p", [{"type": "ptp", "ipam": env.host_local("10.78.0.0/24")}])
    pods = [netns("pod") for _ in range(2)]
    addrs = {pod.name: env.add("p2p", pod)["ips"][0]["address"] for pod in pods}
    _assert_all_ping(pods, addrs)
    for pod in pods:
        env.cni("check", "p2p", pod)
        env.cni("del", "p2p", pod)
    assert veths(env.node) == [] and env.ip_files("p2p") == [] and env.cache_files() == []


def test_loopback(env: CniEnv, netns: NetnsFactory) -> None:
    env.write_conflist("lo", [{"type": "loopback"}])
    pod = netns("pod")
    pod.run(["ip", "link", "set", "lo", "down"])
    env.cni("add", "lo", pod, "--ifname", "lo")
    assert "UP" in pod.run(["ip", "-br", "link", "show", "lo"]).stdout
    assert pod.ping("127.0.0.1")
    env.cni("check", "lo", pod, "--ifname", "lo")
    env.cni("del", "lo", pod, "--ifname", "lo")
    assert env.cache_files() == []


def test_gc_removes_attachments_not_valid(env: CniEnv, netns: NetnsFactory) -> None:
    net = _bridge(env, "1.0.0")
    pods = [netns("pod") for _ in range(3)]
    ids = [f"ctr{i}" for i in range(3)]
    for pod, cid in zip(pods, ids, strict=True):
        env.cni("add", net, pod, "--container-id", cid)
    assert len(env.ip_files(net)) == 3
    # GC sends DEL without a namespace (like libcni: a stale pod's namespace is normally gone), so
    # what it must reclaim is what lives outside the pod: IP reservations and cache entries.
    for pod in pods[1:]:
        pod.run(["ip", "link", "del", "eth0"])  # the "pod is gone" part of the scenario
    env.cni("gc", net, None, "--valid", f"{ids[0]}:eth0")
    assert len(env.ip_files(net)) == 1
    assert env.cache_files() == [f"{net}-{ids[0]}-eth0"]
    assert len(veths(env.node)) == 1
    env.cni("check", net, pods[0], "--container-id", ids[0])
    assert pods[0].ping("10.77.0.1")
    env.cni("gc", net)  # no valid attachments: everything goes, like cnitool gc
    assert env.ip_files(net) == [] and env.cache_files() == [] and env.pending_files() == []


def test_status_on_pre_1_1_network_is_a_no_op(env: CniEnv) -> None:
    _bridge(env, "1.0.0")
    assert env.cni("status", "br").returncode == 0


def test_failed_add_rolls_back_earlier_plugins(env: CniEnv, netns: NetnsFactory) -> None:
    # The second plugin fails on ADD (no such sysctl) after bridge wired the pod: nothing may stay.
    env.write_conflist("broken", [
        {"type": "bridge", "bridge": "pnbr1", "isGateway": True, "ipam": env.host_local("10.79.0.0/24")},
        {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.no_such_sysctl": "1"}},
    ])
    pod = netns("pod")
    proc = env.cni("add", "broken", pod, check=False)
    assert proc.returncode == 1 and "no_such_sysctl" in proc.stdout
    assert pod_address(pod) == [] and veths(env.node) == []
    assert env.ip_files("broken") == []
    assert env.cache_files() == [] and env.pending_files() == []


ADD_THEN_BREAK = Callable[[Path], None]


def _truncate(path: Path) -> None:
    path.write_bytes(b"")


def _cut_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00\xff garbage {{{ not json" * 10)


@pytest.mark.parametrize("damage", [_truncate, _cut_half, _garbage], ids=["empty", "half", "garbage"])
def test_del_succeeds_with_torn_cache(env: CniEnv, netns: NetnsFactory, damage: ADD_THEN_BREAK) -> None:
    """Seed failure 2: an empty/torn result cache must not block DEL or leak the IP."""
    net = _bridge(env, "1.0.0")
    pod = netns("pod")
    env.add(net, pod, "--container-id", "torn")
    cache_file = env.cache_dir / "results" / f"{net}-torn-eth0"
    assert env.ip_files(net) and cache_file.exists()
    damage(cache_file)
    proc = env.cni("del", net, pod, "--container-id", "torn")
    assert proc.returncode == 0
    assert "damaged" in proc.stderr  # the operator is told what happened
    assert env.ip_files(net) == [], "host-local's IP reservation leaked"
    assert veths(env.node) == [] and pod_address(pod) == []
    assert not cache_file.exists()
