"""agent.routes_plan: the routing plan from Node objects, and the agent's routing options and status
text (no root; the kernel side is tests/agent/test_routes_kernel.py)."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from podnet.agent.model import IPAddress, Node
from podnet.agent.objects import Kind
from podnet.agent.routes import RouteSync, RoutingOptions
from podnet.agent.routes_plan import covering, plan, vxlan_mac
from podnet.agent.store import Event, EventType, Store
from podnet.cli.agent_cmd import _routing_lines

PODNET = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "podnet")
# This node's main table: its own subnet, a more specific gateway route inside it, a blackhole, a default.
TABLE = [(ip_network("10.0.0.0/16"), None, 2), (ip_network("10.0.9.0/24"), "10.0.0.1", 2),
         (ip_network("10.0.8.0/24"), "-", None), (ip_network("0.0.0.0/0"), "10.0.0.1", 2),
         (ip_network("fd00::/64"), None, 2)]


def onlink(ip: IPAddress) -> int | None:
    return covering(TABLE, ip)


def node(name: str, cidrs: str, ips: str) -> Node:
    return Node(name, tuple(ip_network(c) for c in cidrs.split()), tuple(ip_address(i) for i in ips.split()))


def test_on_link_means_the_most_specific_route_has_no_gateway() -> None:
    assert onlink(ip_address("10.0.3.4")) == 2
    assert onlink(ip_address("10.0.9.4")) is None  # behind a gateway, though inside the /16
    assert onlink(ip_address("10.0.8.4")) is None  # a blackhole forwards nowhere
    assert onlink(ip_address("192.168.1.1")) is None  # only the default route covers it
    assert onlink(ip_address("fd00::7")) == 2 and onlink(ip_address("fd01::7")) is None


def test_each_peer_and_family_gets_host_gw_or_vxlan() -> None:
    nodes = {n.name: n for n in [
        node("me", "10.244.1.0/24 fd10:1::/64", "10.0.0.5 fd00::5"),
        node("near", "10.244.2.0/24 fd10:2::/64", "10.0.0.6 fd00::6"),
        node("far", "10.244.3.0/24 fd10:3::/64", "10.0.9.7 fd01::7"),  # off-link in both families
        node("v4only", "10.244.4.0/24 fd10:4::/64", "10.0.9.8"),  # IPv6 pods over the IPv4 underlay
    ]}
    p = plan("me", nodes, onlink)
    assert {s.name: s.mode for s in p.peers} == {"near": "host-gw", "far": "vxlan", "v4only": "vxlan"}
    assert all(s.state == "ok" for s in p.peers)
    near = p.routes[ip_network("10.244.2.0/24")]
    assert (near.gateway, near.oif, near.device) == ("10.0.0.6", 2, None)
    assert p.routes[ip_network("fd10:2::/64")].gateway == "fd00::6"
    far = p.routes[ip_network("10.244.3.0/24")]
    assert (far.gateway, far.device, far.onlink) == ("10.244.3.0", "podnet.vx4", True)
    assert p.routes[ip_network("fd10:3::/64")].device == "podnet.vx6"
    assert p.routes[ip_network("fd10:4::/64")].device == "podnet.vx4"
    vx4, vx6 = p.overlays["podnet.vx4"], p.overlays["podnet.vx6"]
    assert (vx4.local, vx4.mac, vx6.local) == ("10.0.0.5", vxlan_mac("me"), "fd00::5")
    assert vx4.addresses == vx6.addresses == {"10.244.1.0/32", "fd10:1::/128"}
    assert vx4.neighbours == {"10.244.3.0": vxlan_mac("far"), "10.244.4.0": vxlan_mac("v4only"),
                              "fd10:4::": vxlan_mac("v4only")}
    assert vx4.fdb == {vxlan_mac("far"): "10.0.9.7", vxlan_mac("v4only"): "10.0.9.8"}
    assert vx6.neighbours == {"fd10:3::": vxlan_mac("far")} and vx6.fdb == {vxlan_mac("far"): "fd01::7"}


def test_peers_without_a_route_say_why() -> None:
    nodes = {n.name: n for n in [
        node("me", "10.244.1.0/24", "10.0.0.5"),
        node("a-new", "", "10.0.0.6"),
        node("b-v6", "fd10:2::/64", "fd01::2"),
        node("c-same", "10.244.1.0/25", "10.0.0.7"),
        node("d-mixed", "10.244.4.0/24 fd10:4::/64", "10.0.0.8 fd01::8"),
    ]}
    p = plan("me", nodes, onlink)
    states = {s.name: (s.mode, s.state) for s in p.peers}
    assert states["a-new"] == ("none", "no pod CIDR")
    assert states["b-v6"][0] == "none" and "no InternalIP of a family both nodes have" in states["b-v6"][1]
    assert states["c-same"] == ("none", "10.244.1.0/25: overlaps the pod CIDR of node me")
    assert states["d-mixed"][0] == "mixed"  # IPv4 direct, IPv6 over the IPv4 underlay
    assert ip_network("10.244.1.0/25") not in p.routes
    alone = plan("me", {"peer": node("peer", "10.244.2.0/24", "10.0.9.2")}, onlink)
    why = "10.244.2.0/24: not on-link, and this node has no InternalIP for an overlay"
    assert alone.peers[0].state == why
    assert alone.overlays == {} and alone.routes == {}


def test_vxlan_macs_are_stable_unicast_and_local() -> None:
    mac = vxlan_mac("node-1")
    assert mac == vxlan_mac("node-1") != vxlan_mac("node-2")
    first = int(mac.split(":")[0], 16)
    assert first & 1 == 0 and first & 2 == 2


def test_a_plan_key_tells_a_model_change_from_drift() -> None:
    nodes = {"me": node("me", "10.244.1.0/24", "10.0.0.5"), "p": node("p", "10.244.2.0/24", "10.0.9.2")}
    again = plan("me", dict(nodes), onlink).key()
    assert plan("me", nodes, onlink).key() == again
    nodes["p"] = node("p", "10.244.2.0/24", "10.0.9.3")
    assert plan("me", nodes, onlink).key() != again


def test_routing_options_are_checked() -> None:
    with pytest.raises(ValueError, match="more than 0"):
        RouteSync(Store("n1"), RoutingOptions(check_period=0))
    proc = subprocess.run([PODNET, "agent", "--manifests", "/nonexistent", "--route-check-period", "5"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "--route-check-period without --routing auto" in proc.stderr
    proc = subprocess.run([PODNET, "agent", "--routing", "bgp"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_status_text_names_each_peer() -> None:
    assert _routing_lines(None) == []
    lines = _routing_lines({
        "peers": [{"name": "n2", "mode": "host-gw", "pod_cidrs": ["10.90.2.0/24"], "state": "ok"},
                  {"name": "n3", "mode": "none", "pod_cidrs": [], "state": "no pod CIDR"}],
        "devices": [{"name": "podnet.vx4", "local": "10.80.0.1", "vni": 1, "port": 8472, "peers": 0}],
        "routes": 1, "syncs": 4, "failed": 0, "repairs": 2, "last_error": None})
    assert lines == ["  routing: 2 peer(s), 1 route(s), 4 syncs (0 failed), 2 repairs; last error: none",
                     "    device podnet.vx4: local 10.80.0.1, VNI 1, port 8472, 0 peer(s)",
                     "    peer n2: host-gw, 10.90.2.0/24; ok",
                     "    peer n3: none; no pod CIDR"]


def test_only_a_change_routes_depend_on_asks_for_a_sync() -> None:
    store = Store("me")
    sync = RouteSync(store)
    store.register_source("t", [Kind.NODE])
    store.replace(Kind.NODE, "t", [node("p", "10.244.2.0/24", "10.0.0.6")])
    ticket = sync.request()
    store.apply(Event(EventType.MODIFIED, replace(node("p", "10.244.2.0/24", "10.0.0.6"), ready=False)), "t")
    assert sync.request() == ticket + 1  # readiness alone asked for nothing
    store.apply(Event(EventType.MODIFIED, node("p", "10.244.2.0/24", "10.0.0.7")), "t")
    assert sync.request() == ticket + 3
    sync.stop()


def test_claims_find_an_overlap_either_way() -> None:
    from ipaddress import ip_network

    from podnet.agent.routes_plan import Claims

    claims = Claims()
    claims.claim(ip_network("10.1.2.0/24"), "a")
    claims.claim(ip_network("10.2.0.0/16"), "b")
    claims.claim(ip_network("fd00:1::/64"), "c")
    assert claims.holder(ip_network("10.1.0.0/16")) == "a"  # holds a claimed longer one
    assert claims.holder(ip_network("10.2.3.0/24")) == "b"  # inside a claimed shorter one
    assert claims.holder(ip_network("10.1.2.0/24")) == "a"  # the same
    assert claims.holder(ip_network("10.3.0.0/24")) is None
    assert claims.holder(ip_network("fd00:1::/80")) == "c"
    assert claims.holder(ip_network("fd00:2::/64")) is None
