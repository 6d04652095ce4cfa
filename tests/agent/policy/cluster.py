"""The upstream netpol e2e model in real namespaces: namespaces x, y, z with pods a, b, c each,
every pod serving TCP and UDP on 80 and 81, a probe matrix run concurrently, and the truth table
printed as upstream prints it (``.`` reachable, ``X`` blocked; rows are clients, columns servers).

Wiring, as podnet's two plugins wire pods: x and y pods are ports of one bridge in the node
namespace (so x<->y traffic is switched, and reaches the forward hook through br_netfilter); z pods
are routed (/32 and /128 with a host route per pod and the 169.254.1.1 / fe80::1 gateway). Links
are made with ``ip`` here so the module needs no IPAM state; the policy table is loaded with the
TEST-ONLY whole-table loader until the dataplane writer replaces it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

from nsutil import Netns, NetnsFactory
from podnet.agent.model import ContainerPort, Namespace, NetworkPolicy, Pod, Protocol
from podnet.agent.policy import PolicyInputs, allowed, compile
from podnet.dataplane.contribution import Contribution

from .nftload import render

NAMESPACES = ("x", "y", "z")
NAMES = ("a", "b", "c")
NODE = "node-1"
NS_LABEL = "kubernetes.io/metadata.name"
PORTS = tuple(ContainerPort(f"serve-{n}-{p.value.lower()}", n, p)
              for n in (80, 81) for p in (Protocol.TCP, Protocol.UDP))
AGENT = Path(__file__).with_name("podagent.py")
BLOCKED_TIMEOUT = 0.5
RETRY_TIMEOUT = 2.0

Cell = tuple[str, str]


@dataclass
class PodNs:
    key: str
    netns: Netns
    ip4: IPv4Address
    ip6: IPv6Address
    routed: bool
    proc: subprocess.Popen[str] | None = None

    def address(self, family: int) -> str:
        return str(self.ip4 if family == 4 else self.ip6)


@dataclass
class Cluster:
    node: Netns
    pods: dict[str, PodNs] = field(default_factory=dict)
    namespaces: dict[str, Namespace] = field(default_factory=dict)
    model: dict[str, Pod] = field(default_factory=dict)
    policies: tuple[NetworkPolicy, ...] = ()

    # -- the model ---------------------------------------------------------------------------------

    def reset(self) -> None:
        self.namespaces = {n: Namespace(n, {NS_LABEL: n}) for n in NAMESPACES}
        self.model = {k: Pod(k.split("/")[0], k.split("/")[1], labels={"pod": k.split("/")[1]},
                             ips=(p.ip4, p.ip6), node_name=NODE, ports=PORTS)
                      for k, p in self.pods.items()}

    def label_pod(self, key: str, labels: Mapping[str, str]) -> None:
        old = self.model[key]
        self.model[key] = Pod(old.namespace, old.name, labels=dict(labels), ips=old.ips,
                              node_name=old.node_name, ports=old.ports)

    def label_namespace(self, name: str, labels: Mapping[str, str]) -> None:
        self.namespaces[name] = Namespace(name, {NS_LABEL: name, **labels})

    def inputs(self) -> PolicyInputs:
        return PolicyInputs.of(self.namespaces, self.model.values(), self.policies, NODE)

    def apply(self, policies: Iterable[NetworkPolicy] | None = None) -> Contribution:
        """Compile the model with these policies (default: the current ones) and load the table."""
        if policies is not None:
            self.policies = tuple(policies)
        contribution = compile(self.namespaces, self.model.values(), self.policies, NODE)
        self.node.run(["nft", "-f", "-"], input=render(contribution))
        return contribution

    # -- probing -----------------------------------------------------------------------------------

    def probe(self, cells: Iterable[Cell], port: int, proto: Protocol, family: int,
              timeout: float) -> dict[Cell, bool]:
        by_src: dict[str, list[str]] = {}
        for src, dst in cells:
            by_src.setdefault(src, []).append(dst)

        def run(src: str) -> dict[Cell, bool]:
            proc = self.pods[src].proc
            assert proc is not None and proc.stdin is not None and proc.stdout is not None
            dsts = by_src[src]
            lines = [f"{i} {self.pods[d].address(family)} {port} {proto.value.lower()} {timeout}"
                     for i, d in enumerate(dsts)]
            proc.stdin.write("\n".join(lines) + "\n")
            proc.stdin.flush()
            got = dict(proc.stdout.readline().split() for _ in dsts)
            return {(src, d): got[str(i)] == "1" for i, d in enumerate(dsts)}

        out: dict[Cell, bool] = {}
        with ThreadPoolExecutor(len(by_src) or 1) as pool:
            for part in pool.map(run, by_src):
                out.update(part)
        return out

    def matrix(self, port: int, proto: Protocol, family: int = 4,
               expected: Mapping[Cell, bool] | None = None) -> dict[Cell, bool]:
        cells = [(s, d) for s in self.pods for d in self.pods]
        got = self.probe(cells, port, proto, family, BLOCKED_TIMEOUT)
        # A first packet may wait on neighbour resolution: cells that should be reachable and were
        # not get one slower try (a dropped packet stays dropped however long we wait).
        again = [c for c in cells if not got[c] and (expected is None or expected[c])]
        if again:
            got.update(self.probe(again, port, proto, family, RETRY_TIMEOUT))
        return got

    def oracle(self, port: int, proto: Protocol, family: int = 4) -> dict[Cell, bool]:
        inputs = self.inputs()
        return {(s, d): allowed(inputs, self.model[s], self.model[d], port, proto, family=family)
                for s in self.pods for d in self.pods}


def table(cells: Mapping[Cell, bool], keys: Iterable[str]) -> str:
    """Upstream's truth table: clients down, servers across."""
    keys = list(keys)
    rows = ["-\t" + "\t".join(keys)]
    rows += [k + "\t" + "\t".join("." if cells[(k, d)] else "X" for d in keys) for k in keys]
    return "\n".join(rows)


def comparison(title: str, got: Mapping[Cell, bool], want: Mapping[Cell, bool], keys: list[str]) -> str:
    wrong = {c: True for c in got if got[c] != want[c]}
    marks = {c: c not in wrong for c in got}
    return (f"{title}\nexpected:\n{table(want, keys)}\nobserved:\n{table(got, keys)}\n"
            f"agreement (X = differs):\n{table(marks, keys)}")


class Reach:
    """A hand-written expectation, upstream style: everything reachable, then peers switched."""

    def __init__(self, keys: Iterable[str]) -> None:
        self.keys = list(keys)
        self.cells = {(s, d): True for s in self.keys for d in self.keys}

    def peer(self, frm: str = "*/*", to: str = "*/*", ok: bool = False) -> Reach:
        def hit(pattern: str) -> Callable[[str], bool]:
            ns, _, pod = pattern.partition("/")
            return lambda k: ns in ("*", k.split("/")[0]) and pod in ("*", "", k.split("/")[1])
        src, dst = hit(frm), hit(to)
        for s, d in self.cells:
            if src(s) and dst(d):
                self.cells[(s, d)] = ok
        return self

    def ingress(self, pod: str, ok: bool) -> Reach:
        return self.peer("*/*", pod, ok)

    def egress(self, pod: str, ok: bool) -> Reach:
        return self.peer(pod, "*/*", ok)


# -- wiring ----------------------------------------------------------------------------------------

def _ip(ns: Netns, script: Iterable[str]) -> None:
    subprocess.run(["ip", "-n", ns.name, "-b", "-"], input="\n".join(script) + "\n", text=True,
                   check=True, capture_output=True)


def _sysctl(ns: Netns, *settings: str) -> None:
    ns.run(["sysctl", "-q", "-w", *settings])


def build(factory: NetnsFactory) -> Cluster:
    node = factory("node")
    _sysctl(node, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
            "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0",
            # br_netfilter hands bridged IPv4/IPv6 to the inet hooks (with conntrack).
            "net.bridge.bridge-nf-call-iptables=1", "net.bridge.bridge-nf-call-ip6tables=1")
    _ip(node, ["link add br0 type bridge", "link set br0 up", "addr add 10.100.0.1/24 dev br0",
               "addr add fd00:100::1/64 dev br0 nodad"])
    cluster = Cluster(node)
    for n, space in enumerate(NAMESPACES):
        for m, name in enumerate(NAMES):
            key, index = f"{space}/{name}", n * len(NAMES) + m + 1
            pod_ns = factory(f"{space}{name}")
            _sysctl(pod_ns, "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0")
            routed = space == "z"
            if routed:
                pod = PodNs(key, pod_ns, IPv4Address(f"10.100.1.{index}"),
                            IPv6Address(f"fd00:101::{index:x}"), True)
            else:
                pod = PodNs(key, pod_ns, IPv4Address(f"10.100.0.{index + 10}"),
                            IPv6Address(f"fd00:100::{index + 10:x}"), False)
            _wire(node, pod, index)
            cluster.pods[key] = pod
    for pod in cluster.pods.values():
        pod.proc = pod.netns.popen([sys.executable, str(AGENT)], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True, bufsize=1)  # type: ignore[assignment]
    for pod in cluster.pods.values():
        assert pod.proc is not None and pod.proc.stdout is not None
        assert pod.proc.stdout.readline().strip() == "ready", f"{pod.key}: server did not start"
    cluster.reset()
    return cluster


def _wire(node: Netns, pod: PodNs, index: int) -> None:
    host = f"h{index}"
    mac = f"02:00:00:00:00:{index:02x}"
    _ip(node, [f"link add {host} address {mac} type veth peer name eth0 netns {pod.netns.name}"])
    if pod.routed:
        _ip(node, [f"link set {host} up", f"addr add fe80::1/64 dev {host} nodad",
                   f"route add {pod.ip4}/32 dev {host}", f"route add {pod.ip6}/128 dev {host}"])
        _ip(pod.netns, ["link set eth0 up", f"addr add {pod.ip4}/32 dev eth0",
                        f"addr add {pod.ip6}/128 dev eth0 nodad",
                        f"neigh add 169.254.1.1 lladdr {mac} dev eth0 nud permanent",
                        "route add 169.254.1.1 dev eth0 scope link",
                        "route add default via 169.254.1.1 dev eth0",
                        "route add ::/0 via fe80::1 dev eth0"])
    else:
        _ip(node, [f"link set {host} master br0", f"link set {host} up"])
        _ip(pod.netns, ["link set eth0 up", f"addr add {pod.ip4}/24 dev eth0",
                        f"addr add {pod.ip6}/64 dev eth0 nodad", "route add default via 10.100.0.1",
                        "route add ::/0 via fd00:100::1"])


def pod_ip(cluster: Cluster, key: str) -> str:
    return str(ip_address(cluster.pods[key].ip4))
