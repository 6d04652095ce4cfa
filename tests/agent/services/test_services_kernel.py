"""The compiled service table in real namespaces, loaded by the real writer (libnftables bound to
a node namespace).

Wiring: a node namespace with a bridge (10.244.0.1/24, fd00:244::1/64) and four pods p0..p3 on it
(veth, hairpin on, default route via the bridge), a "client" namespace on a separate link standing
in for a host outside the cluster (192.168.50.2 and fd00:50::2, the node being .1 and ::1), and a
default route in the node out of an unused veth (a node always has some route for service addresses; without
one the node's own connections fail before any hook sees them). Every pod runs ``netprobe.py
serve``: TCP and UDP servers answering with the pod's name.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import ip_network
from pathlib import Path

import pytest

from nsutil import Netns, NetnsFactory, namespaces
from podnet.agent.model import (
    EndpointPort,
    EndpointSlice,
    Protocol,
    Service,
    ServicePort,
    ServiceType,
    TrafficPolicy,
)
from podnet.agent.services import compile
from podnet.dataplane.writer import TableWriter
from podnet.kernel.nft import backend, close_backend

from .world import NODE, endpoint, service, slice_, tcp, udp

pytestmark = pytest.mark.root

PROBE = str(Path(__file__).with_name("netprobe.py"))
PODS = ("p0", "p1", "p2", "p3")
BACKENDS = ("p0", "p1", "p2")
NODE_IP = "192.168.50.1"
NODE_IP6 = "fd00:50::1"
PORTS = (EndpointPort("http", 8080), EndpointPort("dns", 5353, Protocol.UDP))


def pod_ip(name: str, family: int = 4) -> str:
    n = 10 + PODS.index(name)
    return f"10.244.0.{n}" if family == 4 else f"fd00:244::{n}"


def endpoints_of(names: tuple[str, ...], family: int = 4) -> list[EndpointSlice]:
    return [slice_("", *(endpoint(pod_ip(n, family)) for n in names), ports=PORTS, family=family)]


def world_services() -> list[Service]:
    return [
        service("web", ("10.96.0.10", "fd00:96::10"), tcp("http", 80, 30080), udp("dns", 53, 30053),
                type=ServiceType.NODE_PORT, external_ips=("192.0.2.10",)),
        service("sticky", "10.96.0.11", tcp("http", 80), affinity=300),
        service("empty", "10.96.0.12", tcp("http", 80)),
        service("self", "10.96.0.13", tcp("http", 80)),
        service("churn", "10.96.0.14", tcp("http", 80)),
        service("local", "10.96.0.15", tcp("http", 80, 30081), type=ServiceType.NODE_PORT,
                etp=TrafficPolicy.LOCAL, itp=TrafficPolicy.LOCAL),
    ]


def world_slices(churn: tuple[str, ...] = BACKENDS) -> list[EndpointSlice]:
    def named(svc: str, pods: tuple[str, ...], family: int = 4) -> EndpointSlice:
        s = endpoints_of(pods, family)[0]
        return EndpointSlice(s.namespace or "default", f"{svc}-{family}", svc, s.address_type, s.endpoints,
                             s.ports)
    # p0 here, and an endpoint on another node that nothing answers for: Local never picks it.
    local = slice_("local", endpoint(pod_ip("p0")), endpoint("10.244.1.99", "node-2"), ports=PORTS)
    return [named("web", BACKENDS), named("web", BACKENDS, 6), named("sticky", BACKENDS),
            named("empty", ()), named("self", ("p3",)), named("churn", churn), local]


@dataclass
class World:
    node: Netns
    pods: dict[str, Netns]
    client: Netns
    writer: TableWriter

    def apply(self, slices: list[EndpointSlice]) -> bool:
        """Compile and commit; whether the commit was a full rebuild."""
        self.writer.contribute("services", compile(
            world_services(), slices, node_name=NODE,
            pod_cidrs=(ip_network("10.244.0.0/24"), ip_network("fd00:244::/64"))))
        return self.writer.commit().full

    def probe(self, ns: Netns, mode: str, host: str, port: int, count: int = 1) -> list[str]:
        out = ns.run([sys.executable, PROBE, mode, host, str(port), str(count)], timeout=120).stdout
        result: list[str] = json.loads(out)
        return result


def _wire(node: Netns, pods: dict[str, Netns], client: Netns) -> None:
    node.sh("set -e; sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1;"
            "ip link add br0 type bridge mcast_snooping 0; ip addr add 10.244.0.1/24 dev br0;"
            "ip addr add fd00:244::1/64 dev br0 nodad; ip link set br0 up;"
            "ip link add up0 type veth peer name up1; ip link set up0 up; ip link set up1 up;"
            "ip route add default dev up0; ip -6 route add default dev up0")
    for i, (name, ns) in enumerate(pods.items()):
        node.sh(f"set -e; ip link add vp{i} type veth peer name eth0 netns {ns.name};"
                f"ip link set vp{i} master br0 up; ip link set dev vp{i} type bridge_slave hairpin on")
        ns.sh(f"set -e; ip addr add {pod_ip(name)}/24 dev eth0;"
              f"ip addr add {pod_ip(name, 6)}/64 dev eth0 nodad; ip link set eth0 up;"
              "ip route add default via 10.244.0.1; ip -6 route add default via fd00:244::1")
    node.sh(f"set -e; ip link add vc0 type veth peer name eth0 netns {client.name};"
            f"ip addr add {NODE_IP}/24 dev vc0; ip addr add {NODE_IP6}/64 dev vc0 nodad; ip link set vc0 up")
    client.sh(f"set -e; ip addr add 192.168.50.2/24 dev eth0; ip addr add fd00:50::2/64 dev eth0 nodad;"
              f"ip link set eth0 up; ip route add default via {NODE_IP};"
              f"ip -6 route add default via {NODE_IP6}")


def _serve(name: str, ns: Netns) -> None:
    proc = ns.popen([sys.executable, PROBE, "serve", name, "8080", "5353"], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready", f"server in {name}"


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with namespaces() as make:
        node = make("node")
        pods = {name: make(name) for name in PODS}
        client = make("client")
        _wire(node, pods, client)
        for name, ns in pods.items():
            _serve(name, ns)
        nft = backend(node.path)
        try:
            w = World(node, pods, client, TableWriter(nft, "inet", "podnet"))
            assert w.apply(world_slices())
            yield w
        finally:
            close_backend(nft)


def test_cluster_ip_from_pods_tcp_and_udp(world: World) -> None:
    got = world.probe(world.pods["p3"], "tcp", "10.96.0.10", 80, 12)
    assert set(got) <= set(BACKENDS) and len(got) == 12, got
    got = world.probe(world.pods["p3"], "udp", "10.96.0.10", 53, 6)
    assert set(got) <= set(BACKENDS) and len(got) == 6, got


def test_cluster_ip_from_the_node_itself(world: World) -> None:
    got = world.probe(world.node, "tcp", "10.96.0.10", 80, 6)
    assert set(got) <= set(BACKENDS), got


def test_ipv6_cluster_ip(world: World) -> None:
    got = world.probe(world.pods["p3"], "tcp", "fd00:96::10", 80, 6)
    assert set(got) <= set(BACKENDS), got


def test_node_port_and_external_ip_from_outside(world: World) -> None:
    assert set(world.probe(world.client, "tcp", NODE_IP, 30080, 6)) <= set(BACKENDS)
    assert set(world.probe(world.client, "udp", NODE_IP, 30053, 1)) <= set(BACKENDS)
    assert set(world.probe(world.client, "tcp", "192.0.2.10", 80, 6)) <= set(BACKENDS)


def test_masquerade_by_traffic_policy(world: World) -> None:
    # Cluster: an outside client is masqueraded (the endpoint might be on another node); a pod is not.
    assert {g.split()[1] for g in world.probe(world.client, "peer", NODE_IP, 30080, 4)} == {"10.244.0.1"}
    from_pod = world.probe(world.pods["p3"], "peer", "10.96.0.10", 80, 4)
    assert {g.split()[1] for g in from_pod} == {pod_ip("p3")}
    # Local: only this node's endpoint, and the outside client's address is kept.
    assert world.probe(world.client, "peer", NODE_IP, 30081, 6) == ["p0 192.168.50.2"] * 6
    assert world.probe(world.pods["p3"], "tcp", "10.96.0.15", 80, 10) == ["p0"] * 10


def test_ipv6_node_port_from_outside(world: World) -> None:
    got = world.probe(world.client, "peer", NODE_IP6, 30080, 4)
    assert {g.split()[0] for g in got} <= set(BACKENDS), got
    assert {g.split()[1] for g in got} == {"fd00:244::1"}, got  # masqueraded (Cluster policy)


def test_load_spread_over_endpoints(world: World) -> None:
    got = Counter(world.probe(world.pods["p3"], "tcp", "10.96.0.10", 80, 300))
    assert set(got) == set(BACKENDS), got
    expected = 100.0
    chi2 = sum((got[n] - expected) ** 2 / expected for n in BACKENDS)
    p_value = math.exp(-chi2 / 2)  # the chi-square survival function for 2 degrees of freedom
    assert p_value > 0.001, (got, chi2)


def test_client_ip_affinity_holds(world: World) -> None:
    for pod in ("p3", "p0"):
        got = world.probe(world.pods[pod], "tcp", "10.96.0.11", 80, 25)
        assert len(set(got)) == 1 and got[0] in BACKENDS, got


def test_no_endpoint_service_is_rejected_fast(world: World) -> None:
    for ns in (world.pods["p3"], world.node):
        got = world.probe(ns, "tcp", "10.96.0.12", 80, 5)
        assert all(g.startswith("!ECONNREFUSED ") for g in got), got
        assert max(float(g.split()[1]) for g in got) < 10, got


def test_hairpin_pod_reaches_itself(world: World) -> None:
    assert world.probe(world.pods["p3"], "tcp", "10.96.0.13", 80, 3) == ["p3"] * 3


def test_endpoint_removal_keeps_established_connections(world: World) -> None:
    holder = world.pods["p3"].popen([sys.executable, PROBE, "hold", "10.96.0.14", "80"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdin is not None and holder.stdout is not None
    first = holder.stdout.readline().strip()
    assert first in BACKENDS
    removed = next(n for n in BACKENDS if n != first)
    try:
        assert not world.apply(world_slices(churn=tuple(n for n in BACKENDS if n != removed)))
        holder.stdin.write("after-commit\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == f"{first} after-commit"
        got = world.probe(world.pods["p3"], "tcp", "10.96.0.14", 80, 20)
        assert removed not in got and set(got) <= set(BACKENDS), got
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
        world.apply(world_slices())


def _affinity_clients(world: World) -> set[str]:
    state = world.writer.nft.list_table("inet", "podnet")
    assert state is not None
    return {e.key for name, s in state.sets.items() if name.endswith("-aff") for e in s.elements}


def test_verify_keeps_affinity(world: World) -> None:
    """verify compared the elements packets put in the affinity sets with the union, took them for
    drift and rebuilt the table, emptying every affinity set."""
    world.probe(world.pods["p3"], "tcp", "10.96.0.11", 80, 2)
    assert pod_ip("p3") in _affinity_clients(world)
    assert world.writer.verify() == 0
    assert pod_ip("p3") in _affinity_clients(world)


def test_sctp_rules_load_without_the_sctp_module(netns: NetnsFactory) -> None:
    """This kernel has no SCTP at all (no module, no /proc/net/sctp): the SCTP service still loads,
    because every rule matches with ``meta l4proto`` / ``th dport``."""
    node = netns("sctp")
    svc = service("s", "10.96.0.20", ServicePort("s", 9, Protocol.SCTP, 30009), type=ServiceType.NODE_PORT)
    slices = [slice_("s", endpoint("10.244.0.2"), endpoint("10.244.0.3"),
                     ports=(EndpointPort("s", 9, Protocol.SCTP),))]
    nft = backend(node.path)
    try:
        writer = TableWriter(nft, "inet", "podnet")
        writer.contribute("services", compile([svc], slices, node_name=NODE))
        assert writer.commit().full
        listed = node.run(["nft", "list", "table", "inet", "podnet"]).stdout
        assert "10.96.0.20 . sctp . 9" in listed and "sctp . 30009" in listed
        # Both endpoints under the ClusterIP's and the NodePort's keys, in the slot maps.
        assert "10.96.0.20 . sctp . 9 : 10.244.0.3 . 9" in listed
        assert "sctp . 30009 : 10.244.0.3 . 9" in listed
        assert "meta l4proto { tcp, udp, sctp } dnat ip to ip daddr . meta l4proto . th dport map" in listed
    finally:
        close_backend(nft)
