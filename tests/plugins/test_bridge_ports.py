"""What one ADD does to the rest of a busy bridge: the host end of a pod's veth is a plain bridge
port (no IPv6 of its own, so no DAD, MLD or router solicitations flooded to every other pod), and
the shared bridge is not touched again once its MAC is pinned (re-setting it makes the kernel
flush the bridge's neighbour table: every pod's entry at the gateway)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bridgeutil import net_conf, plugin_ok, veths

from cnienv import CniEnv
from nsutil import Netns, NetnsFactory

pytestmark = pytest.mark.root

V4, V6 = "10.88.0.0/24", "fd88::/64"


def _ipv6_addresses(ns: Netns, ifname: str) -> list[str]:
    out = ns.run(["ip", "-j", "-6", "addr", "show", "dev", ifname]).stdout
    return [a["local"] for x in json.loads(out or "[]") for a in x.get("addr_info", [])]


def _neighbours(ns: Netns, ifname: str) -> set[str]:
    out = ns.run(["ip", "-j", "-4", "neigh", "show", "dev", ifname]).stdout
    return {n["dst"] for n in json.loads(out or "[]") if "FAILED" not in n.get("state", [])}


def test_host_port_has_no_ipv6_of_its_own(node: Netns, netns: NetnsFactory, tmp_path: Path) -> None:
    env = CniEnv(node, tmp_path)
    conf = net_conf(env, "bnet", V4, V6, isGateway=True)
    pods = [netns("pod"), netns("pod")]
    results = [plugin_ok(node, "ADD", conf, f"c{i}", pod) for i, pod in enumerate(pods)]
    for name in veths(node):
        assert _ipv6_addresses(node, name) == []
        assert node.run(["sysctl", "-n", f"net.ipv6.conf.{name}.disable_ipv6"]).stdout.strip() == "1"
    # The pods' IPv6 is untouched: they reach each other and the gateway over the bridge.
    v6 = [next(ip["address"].split("/")[0] for ip in r["ips"] if ":" in ip["address"]) for r in results]
    assert pods[0].run(["ping", "-6", "-c1", "-W2", v6[1]], check=False).returncode == 0
    assert pods[1].run(["ping", "-6", "-c1", "-W2", "fd88::1"], check=False).returncode == 0
    for i in range(2):
        plugin_ok(node, "DEL", conf, f"c{i}")


def test_add_keeps_the_gateways_neighbours(node: Netns, netns: NetnsFactory, tmp_path: Path) -> None:
    env = CniEnv(node, tmp_path)
    conf = net_conf(env, "bnet", V4, isGateway=True)
    first = netns("pod")
    result = plugin_ok(node, "ADD", conf, "c0", first)
    pod_ip = result["ips"][0]["address"].split("/")[0]
    assert first.ping("10.88.0.1")
    assert pod_ip in _neighbours(node, "br-test")
    mac = node.run(["cat", "/sys/class/net/br-test/address"]).stdout.strip()
    plugin_ok(node, "ADD", conf, "c1", netns("pod"))
    assert pod_ip in _neighbours(node, "br-test"), "the second ADD flushed the bridge's neighbours"
    # Still pinned: the bridge kept its own MAC (NET_ADDR_SET) with a second port.
    assert node.run(["cat", "/sys/class/net/br-test/address"]).stdout.strip() == mac
    assert node.run(["cat", "/sys/class/net/br-test/addr_assign_type"]).stdout.strip() == "3"
    for cid in ("c0", "c1"):
        plugin_ok(node, "DEL", conf, cid)
