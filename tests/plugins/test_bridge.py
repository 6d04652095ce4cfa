"""podnet-bridge in real namespaces through podnet's runtime: lifecycle across spec versions, dual
stack, ipMasq, CHECK catching drift, MAC/MTU/hairpin/promisc options, forceAddress."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from bridgeutil import (
    PODNET_BIN,
    addresses,
    assert_clean,
    bridge_plugin,
    ip_files,
    link,
    net_conf,
    nft_elements,
    ping_matrix,
    plugin_ok,
    routes,
    run_plugin,
    veths,
)

from cnienv import CniEnv
from nsutil import Netns, NetnsFactory

pytestmark = pytest.mark.root

V4, V6 = "10.88.0.0/24", "fd88::/64"


def _check_pod(pod: Netns, result: dict[str, Any], version: str, gateways: list[str]) -> list[str]:
    """What ADD promised is what the pod has; returns the pod's addresses."""
    bridge, host, eth0 = result["interfaces"]
    assert (bridge["name"], eth0["name"], eth0["sandbox"]) == ("br-test", "eth0", pod.path)
    assert host["name"].startswith("pn") and all(i.get("mac") for i in result["interfaces"])
    assert all(ip.get("interface") == 2 for ip in result["ips"])
    pod_link = link(pod, "eth0")
    assert pod_link["address"] == eth0["mac"] and "UP" in pod_link["flags"]
    ips = [ip["address"] for ip in result["ips"]]
    assert addresses(pod, "eth0") == set(ips)
    assert sorted(ip["gateway"] for ip in result["ips"]) == sorted(gateways)
    for family, gw in ((4 if ":" not in g else 6, g) for g in gateways):
        default = [r for r in routes(pod, family) if r["dst"] == "default"]
        assert [r["gateway"] for r in default] == [gw]
    return ips


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_lifecycle(node: Netns, netns: NetnsFactory, tmp_path: Path, version: str) -> None:
    env = CniEnv(node, tmp_path, cni_path=PODNET_BIN)
    dual = version in ("1.0.0", "1.1.0")  # dual stack (and ipMasq) on the newer versions
    subnets = (V4, V6) if dual else (V4,)
    env.write_conflist("bnet", [bridge_plugin(env, *subnets, isDefaultGateway=True, ipMasq=dual)],
                       version=version)
    pods = [netns("pod"), netns("pod")]
    results = [env.add("bnet", pod, "--container-id", f"c{i}") for i, pod in enumerate(pods)]
    gateways = ["10.88.0.1", "fd88::1"][: len(subnets)]
    addrs = [_check_pod(pod, res, version, gateways) for pod, res in zip(pods, results, strict=True)]
    assert addresses(node, "br-test") == {"10.88.0.1/24", "fd88::1/64"} if dual else {"10.88.0.1/24"}
    targets = [(pod, a.split("/")[0]) for pod, pa in zip(pods, addrs, strict=True) for a in pa]
    assert ping_matrix(targets, extra=gateways) == []
    assert len(veths(node)) == 2 and len(ip_files(env, "bnet")) == 2 * len(subnets)
    if dual:
        assert sorted(c for _, c in nft_elements(node)) == sorted(
            [f"bnet/c{i}/eth0" for i in (0, 1)] * 4)
    if version != "0.3.1":
        for i, pod in enumerate(pods):
            env.cni("check", "bnet", pod, "--container-id", f"c{i}")
    if version == "1.1.0":
        env.cni("status", "bnet")
        env.cni("gc", "bnet", None, "--valid", "c0:eth0", "--valid", "c1:eth0")
        assert len(veths(node)) == 2 and len(nft_elements(node)) == 8
    env.cni("del", "bnet", pods[0], "--container-id", "c0")
    env.cni("del", "bnet", pods[0], "--container-id", "c0")  # DEL twice
    path = pods[1].path
    node.run(["ip", "netns", "del", pods[1].name])  # DEL with the namespace already gone
    env.cni("del", "bnet", None, path, "--container-id", "c1")
    assert_clean(env, node, "bnet", pods)
    assert env.cache_files() == [] and env.pending_files() == []


def test_del_needs_neither_netns_nor_prev_result(node: Netns, netns: NetnsFactory, tmp_path: Path) -> None:
    env = CniEnv(node, tmp_path)
    conf = net_conf(env, "bnet", V4, version="1.1.0", isGateway=True, ipMasq=True)
    pod = netns("pod")
    plugin_ok(node, "ADD", conf, "cid", pod)
    assert len(veths(node)) == 1 and len(nft_elements(node)) == 2
    plugin_ok(node, "DEL", conf, "cid")  # no CNI_NETNS, no prevResult
    plugin_ok(node, "DEL", conf, "cid")
    assert_clean(env, node, "bnet", [pod])
    # The next ADD of the same attachment works.
    plugin_ok(node, "ADD", conf, "cid", pod)
    assert pod.ping("10.88.0.1")


def test_check_detects_drift(node: Netns, netns: NetnsFactory, tmp_path: Path) -> None:
    env = CniEnv(node, tmp_path)
    conf = net_conf(env, "bnet", V4, version="1.1.0", isDefaultGateway=True, ipMasq=True)
    pod = netns("pod")
    result = plugin_ok(node, "ADD", conf, "cid", pod)
    checked = {**conf, "prevResult": result}
    plugin_ok(node, "CHECK", checked, "cid", pod)
    host = result["interfaces"][1]["name"]

    def broken(what: str) -> None:
        code, out = run_plugin(node, "CHECK", checked, "cid", pod)
        assert code == 1 and what in out["msg"], out

    node.run(["nft", "flush", "set", "inet", "podnet-bridge", "masq-pods-v4"])
    broken("masquerade for 10.88.0.2")
    plugin_ok(node, "DEL", conf, "cid")
    result = plugin_ok(node, "ADD", conf, "cid", pod)
    checked = {**conf, "prevResult": result}
    node.run(["ip", "link", "set", host, "nomaster"])
    broken(f"{host} is not a port of bridge br-test")
    node.run(["ip", "link", "set", host, "master", "br-test"])
    pod.run(["ip", "link", "set", "eth0", "address", "02:00:00:00:00:99"])
    broken("has MAC 02:00:00:00:00:99")
    pod.run(["ip", "link", "set", "eth0", "address", result["interfaces"][2]["mac"]])
    pod.run(["ip", "route", "del", "default"])
    broken("route to 0.0.0.0/0")
    pod.run(["ip", "addr", "flush", "dev", "eth0"])
    broken(f"address {result['ips'][0]['address']} is missing")
    no_prev = run_plugin(node, "CHECK", conf, "cid", pod)
    assert no_prev[0] == 1 and no_prev[1]["code"] == 7 and "prevResult" in no_prev[1]["msg"]
    plugin_ok(node, "DEL", conf, "cid", pod)
    assert_clean(env, node, "bnet", [pod])


def test_mac_mtu_hairpin_and_promisc(node: Netns, netns: NetnsFactory, tmp_path: Path) -> None:
    env = CniEnv(node, tmp_path, cni_path=PODNET_BIN)
    plugin = bridge_plugin(env, V4, mtu=1400, hairpinMode=True, capabilities={"mac": True})
    env.write_conflist("bnet", [plugin], version="1.0.0")
    pods = [netns("pod"), netns("pod"), netns("pod")]
    env.add("bnet", pods[0], "--container-id", "a", "--args", "MAC=02:11:22:33:44:55")
    env.add("bnet", pods[1], "--container-id", "b", "--cap-args", json.dumps({"mac": "02:11:22:33:44:66"}))
    assert link(pods[0], "eth0")["address"] == "02:11:22:33:44:55"
    assert link(pods[1], "eth0")["address"] == "02:11:22:33:44:66"
    eth0 = link(pods[0], "eth0")
    assert eth0["mtu"] == 1400
    host = [x for x in veths(node)]
    for name in host:
        port = link(node, name)
        assert port["mtu"] == 1400 and port["master"] == "br-test"
        assert port["linkinfo"]["info_slave_data"]["hairpin"] is True
    assert "PROMISC" not in link(node, "br-test")["flags"]
    env.cni("del", "bnet", pods[0], "--container-id", "a")
    env.cni("del", "bnet", pods[1], "--container-id", "b")
    # promiscMode on another bridge; hairpin is off by default.
    env.write_conflist("pnet", [bridge_plugin(env, "10.89.0.0/24", bridge="br-promisc", promiscMode=True)])
    env.add("pnet", pods[2], "--container-id", "c")
    assert "PROMISC" in link(node, "br-promisc")["flags"]
    port = link(node, veths(node)[0])
    assert port["linkinfo"]["info_slave_data"]["hairpin"] is False
    env.cni("check", "pnet", pods[2], "--container-id", "c")
    env.cni("del", "pnet", pods[2], "--container-id", "c")
    assert_clean(env, node, "bnet", pods) and veths(node) == []


def test_force_address(node: Netns, netns: NetnsFactory, tmp_path: Path) -> None:
    env = CniEnv(node, tmp_path)
    node.run(["ip", "link", "add", "br-test", "type", "bridge"])
    node.run(["ip", "addr", "add", "10.99.0.1/24", "dev", "br-test"])
    pod = netns("pod")
    conf = net_conf(env, "bnet", V4, isGateway=True)
    code, out = run_plugin(node, "ADD", conf, "cid", pod)
    assert code == 1 and "already has an IP address different from 10.88.0.1/24" in out["msg"]
    assert "10.99.0.1/24" in out["details"]
    assert_clean(env, node, "bnet", [pod])  # nothing half-built: no veth, no IP reserved
    plugin_ok(node, "ADD", {**conf, "forceAddress": True}, "cid", pod)
    assert addresses(node, "br-test") == {"10.88.0.1/24"}
    assert pod.ping("10.88.0.1")
    plugin_ok(node, "DEL", conf, "cid", pod)
    assert_clean(env, node, "bnet", [pod])


def test_layer2_only(node: Netns, netns: NetnsFactory, tmp_path: Path) -> None:
    """Without ipam the pod gets an up interface on the bridge and no addresses."""
    conf = {"cniVersion": "1.0.0", "name": "l2", "type": "podnet-bridge", "bridge": "br-l2"}
    pods = [netns("pod"), netns("pod")]
    results = [plugin_ok(node, "ADD", conf, f"c{i}", pod) for i, pod in enumerate(pods)]
    assert all("ips" not in r and len(r["interfaces"]) == 3 for r in results)
    for i, pod in enumerate(pods):
        pod.run(["ip", "addr", "add", f"192.168.77.{i + 1}/24", "dev", "eth0"])
    assert pods[0].ping("192.168.77.2")
    for i, pod in enumerate(pods):
        plugin_ok(node, "CHECK", {**conf, "prevResult": results[i]}, f"c{i}", pod)
        plugin_ok(node, "DEL", conf, f"c{i}", pod)
    assert veths(node) == []


def test_macspoofchk(node: Netns, netns: NetnsFactory, tmp_path: Path) -> None:
    """Frames from the pod with another source MAC are dropped at the bridge; CHECK, DEL and GC
    handle the spoof-check elements like the masquerade ones."""
    env = CniEnv(node, tmp_path)
    conf = net_conf(env, "bnet", V4, version="1.1.0", isGateway=True, macspoofchk=True)
    pods = [netns("pod"), netns("pod")]
    results = [plugin_ok(node, "ADD", conf, f"c{i}", pod) for i, pod in enumerate(pods)]
    other = results[1]["ips"][0]["address"].split("/")[0]
    assert pods[0].ping(other) and pods[0].ping("10.88.0.1")
    checked = {**conf, "prevResult": results[0]}
    plugin_ok(node, "CHECK", checked, "c0", pods[0])
    own_mac = results[0]["interfaces"][2]["mac"]
    pods[0].run(["ip", "link", "set", "eth0", "address", "02:00:00:00:66:66"])
    pods[0].run(["ip", "neigh", "flush", "all"])
    assert not pods[0].ping(other, timeout=1)  # spoofed source MAC: dropped
    pods[0].run(["ip", "link", "set", "eth0", "address", own_mac])
    assert pods[0].ping(other)
    spoof = node.run(["nft", "-j", "list", "table", "bridge", "podnet-bridge"]).stdout
    assert spoof.count('"bnet/c0/eth0"') == 2 and spoof.count('"bnet/c1/eth0"') == 2
    node.run(["nft", "flush", "set", "bridge", "podnet-bridge", "spoofchk-allowed"])
    code, out = run_plugin(node, "CHECK", checked, "c0", pods[0])
    assert code == 1 and "MAC spoof check" in out["msg"]
    plugin_ok(node, "DEL", conf, "c0")
    plugin_ok(node, "GC", {**conf, "cni.dev/valid-attachments": []})
    spoof = node.run(["nft", "-j", "list", "table", "bridge", "podnet-bridge"]).stdout
    assert "bnet/" not in spoof
    assert_clean(env, node, "bnet", pods)


def test_two_ipv4_range_sets(node: Netns, netns: NetnsFactory, tmp_path: Path) -> None:
    """Two IPv4 range sets: both gateways live on the bridge (neither is "another address")."""
    env = CniEnv(node, tmp_path)
    conf = net_conf(env, "bnet", V4, "10.87.0.0/24", isGateway=True)
    pod = netns("pod")
    result = plugin_ok(node, "ADD", conf, "cid", pod)
    assert addresses(node, "br-test") == {"10.88.0.1/24", "10.87.0.1/24"}
    assert addresses(pod, "eth0") == {ip["address"] for ip in result["ips"]} and len(result["ips"]) == 2
    assert pod.ping("10.88.0.1") and pod.ping("10.87.0.1")
    plugin_ok(node, "ADD", conf, "cid2", netns("pod"))  # the second ADD finds both in place
    plugin_ok(node, "DEL", conf, "cid", pod)
    plugin_ok(node, "DEL", conf, "cid2")
    assert veths(node) == [] and env.ip_files("bnet") == []


@pytest.mark.inprocess_only  # the elements themselves are checked in both modes by test_lifecycle
def test_ipmasq_reaches_a_host_without_a_route_back(node: Netns, netns: NetnsFactory, tmp_path: Path) -> None:
    """An "outside" namespace on the node with no route to the pod subnets answers the pod only
    because ipMasq rewrote the source to the node's address; without the pod's elements it cannot."""
    env = CniEnv(node, tmp_path)
    outside = netns("ext")
    node.run(["ip", "link", "add", "to-ext", "type", "veth", "peer", "name", "ext0", "netns", outside.name])
    for ns, dev, v4, v6 in ((node, "to-ext", "192.0.2.1/24", "fd99::1/64"),
                            (outside, "ext0", "192.0.2.2/24", "fd99::2/64")):
        ns.run(["ip", "addr", "add", v4, "dev", dev])
        ns.run(["ip", "addr", "add", v6, "dev", dev, "nodad"])
        ns.run(["ip", "link", "set", dev, "up"])
    conf = net_conf(env, "bnet", V4, V6, version="1.1.0", isDefaultGateway=True, ipMasq=True)
    pod = netns("pod")
    plugin_ok(node, "ADD", conf, "cid", pod)
    assert pod.ping("192.0.2.2") and pod.ping("fd99::2")
    for family in ("v4", "v6"):
        node.run(["nft", "flush", "set", "inet", "podnet-bridge", f"masq-pods-{family}"])
    assert not pod.ping("192.0.2.2", timeout=1) and not pod.ping("fd99::2", timeout=1)
    plugin_ok(node, "DEL", conf, "cid", pod)
    node.run(["ip", "link", "del", "to-ext"])
    assert_clean(env, node, "bnet", [pod])
