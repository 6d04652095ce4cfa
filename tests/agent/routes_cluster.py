"""A small cluster in namespaces for the routing tests: node namespaces n1..n3 on one underlay bridge
(its own namespace), n4 in another subnet behind a router namespace (so it is off-link from the
others), each with one pod namespace on a veth, and a :class:`RouteSync` per node fed from its own
:class:`Store` (as each node's agent is fed by its own source).

Addresses: node i is 10.80.0.i / fd80::i (n4: 10.81.0.4 / fd81::4), its pod CIDRs 10.90.i.0/24 and
fd90:i::/64, its pod .2 / ::2 behind the node's .1 / ::1.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network

from nsutil import Netns, NetnsFactory
from podnet.agent.model import Node
from podnet.agent.objects import Kind
from podnet.agent.routes import RouteSync, RoutingOptions
from podnet.agent.store import Event, EventType, Store

NAMES = ("n1", "n2", "n3", "n4")
PERIOD = 0.5  # the controllers' check period


def node_ip(i: int, version: int = 4) -> str:
    if i == 4:
        return "10.81.0.4" if version == 4 else "fd81::4"
    return f"10.80.0.{i}" if version == 4 else f"fd80::{i}"


def pod_ip(i: int, version: int = 4) -> str:
    return f"10.90.{i}.2" if version == 4 else f"fd90:{i}::2"


def node_object(i: int) -> Node:
    return Node(f"n{i}", (ip_network(f"10.90.{i}.0/24"), ip_network(f"fd90:{i}::/64")),
                (ip_address(node_ip(i, 4)), ip_address(node_ip(i, 6))))


@dataclass
class Cluster:
    nodes: dict[str, Netns]
    pods: dict[str, Netns]
    stores: dict[str, Store] = field(default_factory=dict)
    syncs: dict[str, RouteSync] = field(default_factory=dict)

    def start(self, names: tuple[str, ...] = NAMES) -> None:
        for name in names:
            store = Store(name)
            store.register_source("t", [Kind.NODE])
            self.stores[name] = store
            options = RoutingOptions(check_period=PERIOD, netns=self.nodes[name].path)
            self.syncs[name] = RouteSync(store, options)
            self.syncs[name].start()
            store.replace(Kind.NODE, "t", [node_object(i) for i in range(1, 5)])

    def stop(self) -> None:
        for sync in self.syncs.values():
            sync.stop()

    def delete_node(self, name: str) -> None:
        for store in self.stores.values():
            store.apply(Event(EventType.DELETED, node_object(int(name[1]))), "t")

    def settled(self, names: tuple[str, ...] | None = None, timeout: float = 5.0) -> None:
        """Every controller (of ``names``) has synced since now."""
        for name, sync in self.syncs.items():
            if names is None or name in names:
                assert sync.wait_for(sync.request(), timeout), f"{name}: no sync ({sync.last_error})"

    def sh(self, name: str, cmd: str) -> str:
        return self.nodes[name].sh(cmd)


def wait_until(check: Callable[[], bool], timeout: float, step: float = 0.02) -> float:
    """Seconds until ``check()`` held (AssertionError after ``timeout``)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not true after {timeout}s")
        time.sleep(step)
    return time.monotonic() - start


def _wire(ns: Netns, cmds: list[str]) -> None:
    ns.sh("\n".join(["set -e", *cmds]))


def _veth(a: Netns, a_name: str, b: Netns, b_name: str) -> None:
    a.run(["ip", "link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", b.path])


@dataclass
class Underlay:
    """The node namespaces wired to the underlay (bridged ones and n4 behind the router), without pods."""

    nodes: dict[str, Netns]
    bridge: Netns  # the underlay bridge's namespace
    router: Netns  # 10.80.0.254 / fd80::254 on the bridge, 10.81.0.254 / fd81::254 toward n4


def wire_nodes(netns: NetnsFactory, names: tuple[str, ...] = NAMES) -> Underlay:
    """Node namespaces ``names`` (each ``n<i>``; n4 is the one behind the router) on the underlay,
    forwarding on; the namespaces are the factory's to remove."""
    underlay, router = netns("ul"), netns("rt")
    _wire(underlay, ["ip link add br0 type bridge", "ip link set br0 up"])
    nodes = {name: netns(name) for name in names}
    for ns in (underlay, router, *nodes.values()):
        _no_dad(ns)
    _veth(router, "eth0", underlay, "u9")
    _wire(underlay, ["ip link set u9 master br0 up"])
    _wire(router, ["ip addr add 10.80.0.254/24 dev eth0", "ip addr add fd80::254/64 dev eth0 nodad",
                   "ip link set eth0 up"])
    _forwarding(router)
    for name in names:
        _underlay(nodes[name], int(name[1:]), underlay, router)
        _forwarding(nodes[name])
    return Underlay(nodes, underlay, router)


def _no_dad(ns: Netns) -> None:
    # No duplicate address detection on the links to come: a link-local address still tentative
    # holds up neighbour discovery, so first IPv6 pings would wait a second for nothing.
    _wire(ns, ["sysctl -qw net.ipv6.conf.default.accept_dad=0", "sysctl -qw net.ipv6.conf.all.accept_dad=0"])


@contextmanager
def cluster(netns: NetnsFactory) -> Iterator[Cluster]:
    """The namespaces, wired; the controllers are started by :meth:`Cluster.start`. All of it is
    removed when the block ends (the namespaces by the factory, however the test ends)."""
    nodes = wire_nodes(netns).nodes
    pods = {name: netns(f"p{name}") for name in NAMES}
    for i, name in enumerate(NAMES, 1):
        _no_dad(pods[name])
        _pod(nodes[name], pods[name], i)
    c = Cluster(nodes, pods)
    try:
        yield c
    finally:
        c.stop()


def _underlay(n: Netns, i: int, underlay: Netns, router: Netns) -> None:
    if i == 4:  # behind the router, in a subnet of its own
        _veth(router, "eth1", n, "eth0")
        _wire(router, ["ip addr add 10.81.0.254/24 dev eth1", "ip addr add fd81::254/64 dev eth1 nodad",
                       "ip link set eth1 up"])
        _wire(n, ["ip addr add 10.81.0.4/24 dev eth0", "ip addr add fd81::4/64 dev eth0 nodad",
                  "ip link set eth0 up", "ip route add default via 10.81.0.254",
                  "ip -6 route add default via fd81::254"])
        return
    _veth(n, "eth0", underlay, f"u{i}")
    _wire(underlay, [f"ip link set u{i} master br0 up"])
    _wire(n, [f"ip addr add {node_ip(i)}/24 dev eth0", f"ip addr add {node_ip(i, 6)}/64 dev eth0 nodad",
              "ip link set eth0 up", "ip route add 10.81.0.0/24 via 10.80.0.254",
              "ip -6 route add fd81::/64 via fd80::254"])


def _forwarding(ns: Netns) -> None:
    _wire(ns, ["sysctl -qw net.ipv4.ip_forward=1", "sysctl -qw net.ipv6.conf.all.forwarding=1"])


def _pod(node: Netns, pod: Netns, i: int) -> None:
    _veth(node, "p0", pod, "eth0")
    _wire(node, [f"ip addr add 10.90.{i}.1/24 dev p0", f"ip addr add fd90:{i}::1/64 dev p0 nodad",
                 "ip link set p0 up"])
    _wire(pod, [f"ip addr add {pod_ip(i)}/24 dev eth0", f"ip addr add {pod_ip(i, 6)}/64 dev eth0 nodad",
                "ip link set eth0 up", f"ip route add default via 10.90.{i}.1",
                f"ip -6 route add default via fd90:{i}::1"])
