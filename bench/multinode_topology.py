"""Namespaces and controllers for bench_multinode: a small cluster of node namespaces, each with a
:class:`RouteSync` fed by its own :class:`Store` (in a process of its own per node,
:mod:`bench.multinode_agent`; in this process for simulated peers), and a watcher that says when a
node's kernel holds what podnet should have written for a peer.

The cluster (IPv4 only): an underlay bridge namespace; nodes ``n1``..``nN`` on it (10.80.0.i/24);
a router namespace on it (10.80.0.254) with a second subnet 10.81.0.0/24 behind it, where off-link
nodes live. Node i has the pod CIDR 10.90.i.0/24 on a bridge ``cbr0`` (10.90.i.1) and pods
10.90.i.2, .3, ... on veths. Every namespace and process made here is removed by :meth:`Cluster.close`.

Simulated peers (:func:`sim_peers`) are Node objects only, for one node namespace whose underlay is
a veth pair (10.82.0.1/16): peers at 10.82.1.x are on-link (host-gw), peers at 10.83.1.x are not
(VXLAN).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

from bench.multinode_agent import node_json
from podnet.agent.model import Node
from podnet.agent.objects import Kind
from podnet.agent.routes import RouteSync, RoutingOptions
from podnet.agent.routes_kernel import RouteKernel
from podnet.agent.routes_plan import device_name, vtep_address, vxlan_mac
from podnet.agent.store import Event, EventType, Store
from podnet.kernel.dump import NETLINK_ADD_MEMBERSHIP, NETLINK_ROUTE
from podnet.kernel.errors import KernelError
from podnet.kernel.model import RTNLGRP_IPV4_ROUTE, RTNLGRP_NEIGH, RTPROT_PODNET, Route
from podnet.kernel.netns import socket_in_netns
from podnet.kernel.wire import SOL_NETLINK

SOURCE = "bench"
CHECK_PERIOD = 10.0  # the agent's default: no periodic check runs inside a measurement
ROUTER_UNDERLAY, ROUTER_OFFLINK = "10.80.0.254", "10.81.0.254"
REPO = Path(__file__).resolve().parent.parent


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=timeout)


@dataclass
class Ns:
    name: str

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def sh(self, script: str) -> str:
        return run(self.argv(["sh", "-ec", script])).stdout


class AgentProc:
    """A node's controller process (:mod:`bench.multinode_agent`), spoken to in JSON lines."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def send(self, *cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(list(cmd)) + "\n")
        self.proc.stdin.flush()

    def answer(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line not in ("ok", "ready"):
            raise RuntimeError(f"node controller (pid {self.proc.pid}): {line or 'ended'}")

    def call(self, *cmd: Any) -> None:
        self.send(*cmd)
        self.answer()


@dataclass
class Member:
    """One node of the cluster: its namespace, Node object, pods, and its own store and RouteSync."""

    ns: Ns
    node: Node
    pods: list[Ns] = field(default_factory=list)
    store: Store | None = None  # simulated nodes: the controller runs in this process
    sync: RouteSync | None = None
    agent: AgentProc | None = None  # cluster nodes: the controller runs in a process of its own

    @property
    def name(self) -> str:
        return self.node.name

    def pod_ip(self, k: int = 0) -> str:
        return str(self.node.pod_cidrs[0].network_address + 2 + k)


def node_object(name: str, index: int, internal_ip: str) -> Node:
    return Node(name, (ip_network(f"10.90.{index}.0/24"),), (ip_address(internal_ip),))


class Cluster:
    """Namespaces named ``<prefix>-<role>``; every one made is listed for removal."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.made: list[Ns] = []
        self.procs: list[subprocess.Popen[str]] = []
        self.members: dict[str, Member] = {}
        self.underlay = self.router = Ns("")

    def netns(self, role: str) -> Ns:
        ns = Ns(f"{self.prefix}-{role}")
        run(["ip", "netns", "add", ns.name])
        self.made.append(ns)
        ns.sh("ip link set lo up")
        return ns

    def popen(self, ns: Ns, argv: Sequence[str]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(ns.argv(argv), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.procs.append(proc)
        return proc

    def end(self, proc: subprocess.Popen[str]) -> None:
        """End one of our processes, by its PID."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def close(self) -> None:
        for member in self.members.values():
            if member.sync is not None:
                member.sync.stop()
            if member.agent is not None and member.agent.proc.stdin is not None:
                member.agent.proc.stdin.close()  # its loop ends and it stops its controller
        for member in self.members.values():
            if member.agent is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    member.agent.proc.wait(timeout=5)
        for proc in self.procs:
            self.end(proc)
        for ns in reversed(self.made):
            run(["ip", "netns", "del", ns.name], check=False)

    # ---- building ----

    def build_underlay(self) -> None:
        self.underlay, self.router = self.netns("ul"), self.netns("rt")
        self.underlay.sh("ip link add br0 type bridge; ip link set br0 up")
        self._veth(self.router, "eth0", self.underlay, "u0")
        self.underlay.sh("ip link set u0 master br0 up")
        self.router.sh(f"sysctl -qw net.ipv4.ip_forward=1; ip addr add {ROUTER_UNDERLAY}/24 dev eth0;"
                       "ip link set eth0 up")

    def add_node(self, name: str, index: int, *, offlink: bool = False, pods: int = 1) -> Member:
        """A node on the underlay bridge, or (``offlink``: one such node at most, the router has one
        interface on that subnet) behind the router, with its pods."""
        ns = self.netns(name)
        if offlink:
            ip = f"10.81.0.{index}"
            self._veth(self.router, f"r{index}", ns, "eth0")
            self.router.sh(f"ip addr add {ROUTER_OFFLINK}/24 dev r{index}; ip link set r{index} up")
            ns.sh(f"ip addr add {ip}/24 dev eth0; ip link set eth0 up;"
                  f"ip route add default via {ROUTER_OFFLINK}")
        else:
            ip = f"10.80.0.{index}"
            self._veth(ns, "eth0", self.underlay, f"u{index}")
            self.underlay.sh(f"ip link set u{index} master br0 up")
            ns.sh(f"ip addr add {ip}/24 dev eth0; ip link set eth0 up;"
                  f"ip route add 10.81.0.0/24 via {ROUTER_UNDERLAY}")
        ns.sh(f"sysctl -qw net.ipv4.ip_forward=1; ip link add cbr0 type bridge;"
              f"ip addr add 10.90.{index}.1/24 dev cbr0; ip link set cbr0 up")
        member = Member(ns, node_object(name, index, ip))
        for k in range(pods):
            pod = self.netns(f"{name}p{k}")
            self._veth(ns, f"v{k}", pod, "eth0")
            ns.sh(f"ip link set v{k} master cbr0 up")
            pod.sh(f"ip addr add {member.pod_ip(k)}/24 dev eth0; ip link set eth0 up;"
                   f"ip route add default via 10.90.{index}.1")
            member.pods.append(pod)
        self.members[name] = member
        return member

    def _veth(self, a: Ns, a_name: str, b: Ns, b_name: str) -> None:
        run(["ip", "-n", a.name, "link", "add", a_name, "type", "veth", "peer", "name", b_name,
             "netns", b.name])

    def start(self, member: Member, known: Sequence[Node]) -> None:
        """The member's RouteSync, its store listing ``known`` (and the member itself)."""
        member.store = Store(member.name)
        member.store.register_source(SOURCE, [Kind.NODE])
        member.sync = RouteSync(member.store, RoutingOptions(check_period=CHECK_PERIOD, netns=member.ns.path))
        member.sync.start()
        member.store.replace(Kind.NODE, SOURCE, list({n.name: n for n in (*known, member.node)}.values()))

    def start_agents(self, members: Sequence[Member], known: Sequence[Node]) -> None:
        """Each member's controller process, its store listing ``known`` (and the member itself);
        started together, then each waited for."""
        for member in members:
            argv = [sys.executable, "-m", "bench.multinode_agent", member.name, member.ns.path]
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
            self.procs.append(proc)
            member.agent = AgentProc(proc)
        for member in members:
            assert member.agent is not None
            member.agent.answer()
            nodes = {n.name: n for n in (*known, member.node)}
            member.agent.call("replace", [node_json(n) for n in nodes.values()])


def agents_of(members: Sequence[Member]) -> list[AgentProc]:
    return [m.agent for m in members if m.agent is not None]


def broadcast(agents: Sequence[AgentProc], *cmd: Any) -> None:
    """Send to every agent first, then read every answer: the agents work at the same time."""
    for agent in agents:
        agent.send(*cmd)
    for agent in agents:
        agent.answer()


def add(store: Store, node: Node) -> None:
    store.apply(Event(EventType.ADDED, node), SOURCE)


def delete(store: Store, node: Node) -> None:
    store.apply(Event(EventType.DELETED, node), SOURCE)


def settle(syncs: Sequence[RouteSync], timeout: float = 10.0) -> None:
    """Every controller has synced since now (so earlier changes are in the kernel)."""
    for sync in syncs:
        if not sync.wait_for(sync.request(), timeout):
            raise RuntimeError(f"route sync did not finish in {timeout}s: {sync.last_error}")


def sim_member(cluster: Cluster, role: str) -> Member:
    """A lone node namespace whose underlay is a veth pair (no dummy module needed) on 10.82.0.0/16."""
    ns = cluster.netns(role)
    ns.sh("ip link add eth0 type veth peer name eth1; ip addr add 10.82.0.1/16 dev eth0;"
          "ip link set eth1 up; ip link set eth0 up")
    member = Member(ns, Node(role, (ip_network("10.91.0.0/24"),), (ip_address("10.82.0.1"),)))
    cluster.members[role] = member
    return member


def sim_peers(count: int, vxlan: bool) -> list[Node]:
    """``count`` peers with pod CIDRs the i-th /24 of 10.128.0.0/9: on-link InternalIPs (10.82.x.y,
    host-gw), or off-link ones (10.83.x.y, VXLAN)."""
    net = "10.83" if vxlan else "10.82"
    return [Node(f"peer{i:04d}", (ip_network(f"{ip_address('10.128.0.0') + 256 * i}/24"),),
                 (ip_address(f"{net}.{1 + i // 250}.{i % 250}"),)) for i in range(1, count + 1)]


# ---- reading the kernel -------------------------------------------------------------------------------


class KernelWatch:
    """Hears route and neighbour notifications of one namespace and, after each burst, reads the
    kernel with podnet's consistent dumps to see whether the peers' entries are (all) there."""

    def __init__(self, netns: str) -> None:
        self.reader = RouteKernel(netns)
        self.sock = socket_in_netns(netns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.sock.bind((0, 0))
        for group in (RTNLGRP_IPV4_ROUTE, RTNLGRP_NEIGH):
            self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
        self.sock.setblocking(False)

    def close(self) -> None:
        self.sock.close()
        self.reader.close()

    def drain(self) -> None:
        while True:
            try:
                if not self.sock.recv(1 << 16):
                    return
            except BlockingIOError:
                return
            except OSError:  # ENOBUFS: notifications were lost, which only means something changed
                continue

    def arm(self) -> None:
        """Forget what was heard so far: called just before the change to be timed."""
        self.drain()

    def wait(self, check: Callable[[], bool], timeout: float = 10.0) -> float:
        """The monotonic time of the notification (since :meth:`arm`) after which ``check()`` first
        held. The kernel is read only after a notification, so the reads do not compete with the
        controller before it has written anything."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                raise RuntimeError(f"kernel entries not there after {timeout}s")
            heard = time.monotonic()
            self.drain()
            if check():
                return heard

    def present(self, peers: Sequence[Node], vxlan: bool) -> bool:
        """Whether the kernel has every peer's route (host-gw: via its InternalIP; VXLAN: via its
        VTEP on podnet's device) and, for VXLAN, its neighbour and forwarding entries. Routes are
        read first: podnet writes them last in a pass."""
        routes = {(r.destination, r.gateway) for r in self.podnet_routes()}
        want = {(str(p.pod_cidrs[0]), vtep_address(p.pod_cidrs[0]) if vxlan else str(p.internal_ips[0]))
                for p in peers}
        if not want <= routes:
            return False
        if not vxlan:
            return True
        try:
            index = self.reader.nl.index(device_name(4))
        except KernelError:
            return False
        neigh = {(n.dst, n.lladdr) for n in self.reader.nl.neighbours(index) if n.permanent}
        fdb = {(e.mac, e.dst) for e in self.reader.fdb(index)}
        return all((vtep_address(p.pod_cidrs[0]), vxlan_mac(p.name)) in neigh
                   and (vxlan_mac(p.name), str(p.internal_ips[0])) in fdb for p in peers)

    def absent(self, peers: Sequence[Node]) -> bool:
        cidrs = {str(p.pod_cidrs[0]) for p in peers}
        return not any(r.destination in cidrs for r in self.podnet_routes())

    def podnet_routes(self) -> list[Route]:
        return [r for r in self.reader.main_routes() if r.protocol == RTPROT_PODNET]
