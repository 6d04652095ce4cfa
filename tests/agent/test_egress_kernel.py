"""Pod traffic leaving the cluster is masqueraded; to another node's pods and to nodes it keeps the
pod's address. A node namespace with one pod (10.244.1.0/24), an outside network (192.0.2.0/24) and
a peer node (172.16.0.2) holding the other pod range (10.244.2.0/24); the egress controller's part
in the agent's table through the real writer; a UDP listener in each place says which source
address it saw."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import ip_address, ip_network

import pytest

from nsutil import Netns, NetnsFactory
from podnet.agent.egress import EgressSync, contribution, egress_of
from podnet.agent.model import Node
from podnet.agent.objects import Kind
from podnet.agent.store import Event, EventType, Store
from podnet.dataplane.writer import TableWriter
from podnet.kernel.nft import LibNftables

pytestmark = pytest.mark.root

LISTEN = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 9999)); s.settimeout(5)
print("ready", flush=True)
data, peer = s.recvfrom(100); print(peer[0], flush=True)
"""
NODES = [Node("node-1", (ip_network("10.244.1.0/24"),), (ip_address("172.16.0.1"),)),
         Node("node-2", (ip_network("10.244.2.0/24"),), (ip_address("172.16.0.2"),))]


@dataclass
class World:
    node: Netns
    pod: Netns
    outside: Netns
    peer: Netns

    def seen_from_pod(self, where: Netns, address: str) -> str:
        """The source address ``where`` sees on a datagram the pod sends to ``address``."""
        listener = where.popen([sys.executable, "-c", LISTEN, address], stdout=subprocess.PIPE)
        try:
            assert listener.stdout is not None and listener.stdout.readline().strip() == b"ready"
            self.pod.run([sys.executable, "-c", "import socket,sys; socket.socket(socket.AF_INET, "
                          "socket.SOCK_DGRAM).sendto(b'x', (sys.argv[1], 9999))", address])
            return listener.stdout.readline().decode().strip()
        finally:
            listener.kill()
            listener.wait()


@pytest.fixture
def world(netns: NetnsFactory) -> World:
    w = World(netns("node"), netns("pod"), netns("outside"), netns("peer"))
    w.node.sh("sysctl -qw net.ipv4.ip_forward=1")
    for peer_ns, (link, mine, theirs, net) in ((w.pod, ("vpod", "10.244.1.1", "10.244.1.2", 24)),
                                               (w.outside, ("vout", "192.0.2.1", "192.0.2.2", 24)),
                                               (w.peer, ("vpeer", "172.16.0.1", "172.16.0.2", 24))):
        w.node.sh(f"ip link add {link} type veth peer name eth0 netns {peer_ns.path.rsplit('/', 1)[1]};"
                  f"ip addr add {mine}/{net} dev {link}; ip link set {link} up")
        peer_ns.sh(f"ip link set lo up; ip addr add {theirs}/{net} dev eth0; ip link set eth0 up")
    w.pod.sh("ip route add default via 10.244.1.1")
    w.peer.sh("ip addr add 10.244.2.1/32 dev lo; ip route add 10.244.1.0/24 via 172.16.0.1")
    w.node.sh("ip route add 10.244.2.0/24 via 172.16.0.2")
    return w


@pytest.fixture
def lib(world: World) -> Iterator[LibNftables]:
    with LibNftables(netns=world.node.path) as nft:
        yield nft


def test_only_traffic_leaving_the_cluster_is_masqueraded(world: World, lib: LibNftables) -> None:
    assert world.seen_from_pod(world.outside, "192.0.2.2") == "10.244.1.2"  # no rule yet: not translated
    writer = TableWriter(lib, "inet", "podnet")
    writer.contribute("egress", contribution(egress_of(NODES, "node-1")))
    assert writer.commit().full
    assert world.seen_from_pod(world.outside, "192.0.2.2") == "192.0.2.1"  # left the cluster: the node's
    assert world.seen_from_pod(world.peer, "10.244.2.1") == "10.244.1.2"  # another node's pod: the pod's
    assert world.seen_from_pod(world.peer, "172.16.0.2") == "10.244.1.2"  # a node: the pod's


def test_the_controller_follows_the_nodes(world: World, lib: LibNftables) -> None:
    store = Store("node-1")
    store.register_source("test")
    for kind in Kind:
        store.replace(kind, "test", NODES[1:] if kind is Kind.NODE else [])
    writer = TableWriter(lib, "inet", "podnet")
    sync = EgressSync(store, writer, retry_seconds=0.05)
    sync.start()
    try:
        assert _until(lambda: sync.status()["cluster"] != [])
        # This node's own pod range is not known yet: nothing is masqueraded.
        assert world.seen_from_pod(world.outside, "192.0.2.2") == "10.244.1.2"
        store.apply(Event(EventType.ADDED, NODES[0]), "test")
        assert _until(lambda: sync.status()["sources"] == ["10.244.1.0/24"])
        assert world.seen_from_pod(world.outside, "192.0.2.2") == "192.0.2.1"
        assert world.seen_from_pod(world.peer, "10.244.2.1") == "10.244.1.2"
        store.apply(Event(EventType.DELETED, NODES[1]), "test")  # node-2 left: its range is outside now
        assert _until(lambda: "10.244.2.0/24" not in sync.status()["cluster"])  # type: ignore[operator]
        assert world.seen_from_pod(world.peer, "10.244.2.1") == "172.16.0.1"
    finally:
        sync.stop()


def _until(check: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False
