"""podnet-routed driven by podnet's runtime (``podnet cni``) in real namespaces: the wiring, every
spec version, CHECK (including MAC drift), GC, STATUS, and idempotent DEL."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from routed_util import (
    GW4,
    GW6,
    NODE_IP4,
    NODE_IP6,
    VENV_BIN,
    arp_table_fulls,
    assert_nothing_left,
    assert_pod_wired,
    give_node_addresses,
    host_local,
    host_veths,
    ip_files,
    link,
    neighbours,
    plain,
    result_ips,
    routes,
    sweep,
    sweep_all,
)

from cnienv import CniEnv
from nsutil import Netns, NetnsFactory

pytestmark = pytest.mark.root

NET = "routed"
V4, V6 = "10.90.0.0/24", "fd00:90::/64"


@pytest.fixture
def env(node: Netns, tmp_path: Path) -> CniEnv:
    give_node_addresses(node)
    return CniEnv(node, tmp_path, cni_path=str(VENV_BIN))


def _conflist(env: CniEnv, version: str, *subnets: str, **plugin: Any) -> None:
    env.write_conflist(NET, [{"type": "podnet-routed", **plugin,
                              "ipam": host_local(env.ipam_dir, *(subnets or (V4, V6)))}], version=version)


def _assert_connectivity(node: Netns, pods: list[Netns], results: dict[str, dict[str, Any]]) -> None:
    addrs = {pod.name: [plain(c) for c in result_ips(results[pod.name])] for pod in pods}
    targets = {pod.name: [a for other in pods if other is not pod for a in addrs[other.name]]
               + [GW4, NODE_IP4, NODE_IP6] for pod in pods}
    assert sweep_all(pods, targets) == {}
    # The host reaches every pod (its source is the node's own address, not the gateway's).
    assert sweep_all([node], {node.name: [a for pod in pods for a in addrs[pod.name]]}) == {}
    # The IPv6 gateway is owned by the host veth too.
    assert pods[0].run(["ping", "-6", "-n", "-q", "-c1", "-W2", f"{GW6}%eth0"], check=False).returncode == 0


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_lifecycle_dual_stack(env: CniEnv, netns: NetnsFactory, version: str) -> None:
    _conflist(env, version)
    pods = [netns("pod") for _ in range(2)]
    results = {pod.name: env.add(NET, pod) for pod in pods}
    for pod in pods:
        result = results[pod.name]
        assert result["cniVersion"] == version
        assert [ip["gateway"] for ip in result["ips"]] == [GW4, GW6]
        assert {r["dst"] for r in result["routes"]} == {"0.0.0.0/0", "::/0"}
        assert_pod_wired(env.node, pod, result)
    _assert_connectivity(env.node, pods, results)
    if version != "0.3.1":
        for pod in pods:
            env.cni("check", NET, pod)
    if version == "1.1.0":
        env.cni("status", NET)
    env.cni("del", NET, pods[0])
    # The second pod's namespace is gone before its DEL (the pod was torn down first).
    gone = pods[1]
    subprocess.run(["ip", "netns", "del", gone.name], check=True)
    env.cni("del", NET, gone)
    assert_nothing_left(env.node, env.ipam_dir, NET, [pods[0]])
    assert env.cache_files() == [] and env.pending_files() == []
    env.cni("del", NET, pods[0])  # DEL twice
    env.cni("del", NET, gone)
    assert_nothing_left(env.node, env.ipam_dir, NET)


def test_check_detects_mac_drift(env: CniEnv, netns: NetnsFactory) -> None:
    _conflist(env, "1.0.0", V4)
    pod = netns("pod")
    result = env.add(NET, pod)
    host_name, set_mac = result["interfaces"][0]["name"], result["interfaces"][0]["mac"]
    env.cni("check", NET, pod)
    drifted = "02:de:ad:be:ef:01"
    env.node.run(["ip", "link", "set", "dev", host_name, "address", drifted])
    proc = env.cni("check", NET, pod, check=False)
    assert proc.returncode == 1
    err = json.loads(proc.stdout)
    assert drifted in err["msg"] and set_mac in err["msg"] and "drift" in err["msg"], err
    env.node.run(["ip", "link", "set", "dev", host_name, "address", set_mac])
    # A link's neighbour entries go when its MAC changes: the host's pin on the veth must be redone.
    pod_ip = plain(result["ips"][0]["address"])
    pod_mac = result["interfaces"][1]["mac"]
    env.node.run(["ip", "neigh", "replace", pod_ip, "lladdr", pod_mac, "dev", host_name, "nud", "permanent"])
    env.cni("check", NET, pod)
    # The other direction: the pod's MAC changed behind podnet's back (the host pinned the old one).
    pod.run(["ip", "link", "set", "dev", "eth0", "address", drifted])
    pod.run(["ip", "neigh", "replace", GW4, "lladdr", set_mac, "dev", "eth0", "nud", "permanent"])
    proc = env.cni("check", NET, pod, check=False)
    err = json.loads(proc.stdout)
    assert proc.returncode == 1 and drifted in err["msg"] and pod_mac in err["msg"], err
    pod.run(["ip", "link", "set", "dev", "eth0", "address", pod_mac])
    pod.run(["ip", "neigh", "replace", GW4, "lladdr", set_mac, "dev", "eth0", "nud", "permanent"])
    env.cni("check", NET, pod)
    env.cni("del", NET, pod)
    assert_nothing_left(env.node, env.ipam_dir, NET, [pod])


def test_gateway_survives_a_flushed_neighbour_and_check_reports_it(env: CniEnv, netns: NetnsFactory) -> None:
    """The host owns 169.254.1.1, so a pod whose pinned entry was flushed still finds its gateway
    (by ARP, which the host answers with the veth's MAC); CHECK still reports the missing entry."""
    _conflist(env, "1.0.0", V4)
    pods = [netns("pod") for _ in range(2)]
    results = [env.add(NET, pod) for pod in pods]
    pods[0].run(["ip", "neigh", "del", GW4, "dev", "eth0"])
    proc = env.cni("check", NET, pods[0], check=False)
    assert proc.returncode == 1 and f"no permanent neighbour entry for gateway {GW4}" in proc.stdout
    fulls = arp_table_fulls()
    missing = sweep(pods[0], [plain(results[1]["ips"][0]["address"])], timeout=6)
    if missing and arp_table_fulls() > fulls:
        pytest.skip("the machine-wide ARP table is full (gc_thresh3, shared by every namespace): "
                    "the ARP fallback cannot be exercised now")
    assert missing == []
    learned = neighbours(pods[0])[GW4]
    assert learned["lladdr"] == results[0]["interfaces"][0]["mac"]
    for pod in pods:
        env.cni("del", NET, pod)
    assert_nothing_left(env.node, env.ipam_dir, NET, pods)


def test_gc_removes_attachments_not_valid_and_status(env: CniEnv, netns: NetnsFactory) -> None:
    _conflist(env, "1.1.0", V4)
    pods = [netns("pod") for _ in range(3)]
    ids = [f"gc{i}" for i in range(3)]
    for pod, cid in zip(pods, ids, strict=True):
        env.cni("add", NET, pod, "--container-id", cid)
    assert len(host_veths(env.node)) == 3 and len(ip_files(env.ipam_dir, NET)) == 3
    env.cni("gc", NET, None, "--valid", f"{ids[0]}:eth0")
    assert len(host_veths(env.node)) == 1 and list(ip_files(env.ipam_dir, NET).values()) == [ids[0]]
    for pod in pods[1:]:
        assert "eth0" not in pod.links()  # the pod end went with the host end
    env.cni("check", NET, pods[0], "--container-id", ids[0])
    assert pods[0].ping(NODE_IP4)
    env.cni("status", NET)
    env.cni("gc", NET)
    assert_nothing_left(env.node, env.ipam_dir, NET, pods)


def test_ipv6_only_with_mtu_and_mac_from_runtime_config(env: CniEnv, netns: NetnsFactory) -> None:
    env.write_conflist(NET, [{"type": "podnet-routed", "mtu": 1400, "capabilities": {"mac": True},
                              "ipam": host_local(env.ipam_dir, V6)}], version="1.1.0")
    pod = netns("pod")
    mac = "02:42:0a:5a:00:99"
    result = env.add(NET, pod, "--cap-args", json.dumps({"mac": mac}))
    assert result["interfaces"][1]["mac"] == mac and link(pod, "eth0")["address"] == mac
    assert result["interfaces"][1]["mtu"] == 1400 == result["interfaces"][0]["mtu"]
    assert link(pod, "eth0")["mtu"] == 1400 == link(env.node, result["interfaces"][0]["name"])["mtu"]
    assert [ip["gateway"] for ip in result["ips"]] == [GW6]
    assert_pod_wired(env.node, pod, result)
    # IPv6 only: no IPv4 gateway anywhere, and the pod reaches the node over IPv6.
    assert GW4 not in neighbours(pod) and routes(pod, 4) == []
    assert sweep(pod, [NODE_IP6]) == []
    env.cni("check", NET, pod)
    env.cni("del", NET, pod)
    assert_nothing_left(env.node, env.ipam_dir, NET, [pod])
