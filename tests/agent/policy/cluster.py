"""The upstream netpol e2e model in real namespaces: namespaces x, y, z with pods a, b, c each,
every pod serving TCP and UDP on 80 and 81, a probe matrix run concurrently, and the truth table
printed as upstream prints it (``.`` reachable, ``X`` blocked; rows are clients, columns servers).

Pods are wired by podnet's own plugins (CNI ADD, in-process): x and y pods by podnet-bridge, as
ports of one bridge in the node namespace (so x<->y traffic is switched, and reaches the forward
hook through br_netfilter); z pods by podnet-routed (/32 and /128, a host route each). The policy
table is loaded with the TEST-ONLY whole-table loader until the dataplane writer replaces it.
"""

from __future__ import annotations

import json
import os
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

PLUGINS = Path(sys.executable).parent
SUBNETS = {"bridge": ("10.100.0.0/24", "fd00:100::/64"), "routed": ("10.100.1.0/24", "fd00:101::/64")}


def _sysctl(ns: Netns, *settings: str) -> None:
    ns.run(["sysctl", "-q", "-w", *settings])


def _conf(kind: str, workdir: Path) -> dict[str, object]:
    ipam = {"type": "podnet-host-local", "dataDir": str(workdir / f"ipam-{kind}"),
            "ranges": [[{"subnet": s}] for s in SUBNETS[kind]]}
    conf: dict[str, object] = {"cniVersion": "1.0.0", "name": f"netpol-{kind}", "type": f"podnet-{kind}",
                               "ipam": ipam}
    if kind == "bridge":
        conf.update(bridge="br0", isDefaultGateway=True)
    return conf


def _add(node: Netns, pod: Netns, kind: str, workdir: Path,
         container_id: str) -> tuple[IPv4Address, IPv6Address]:
    """CNI ADD with podnet's own plugin, in-process (no daemon), as a runtime on the node would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update(CNI_COMMAND="ADD", CNI_CONTAINERID=container_id, CNI_NETNS=pod.path, CNI_IFNAME="eth0",
               CNI_PATH=str(PLUGINS), PODNET_SOCKET=str(workdir / "no-daemon.sock"))
    done = node.run([str(PLUGINS / f"podnet-{kind}")], input=json.dumps(_conf(kind, workdir)), env=env,
                    check=False)
    assert done.returncode == 0, f"{kind} ADD failed: {done.stdout} {done.stderr}"
    ips = [ip_address(ip["address"].split("/")[0]) for ip in json.loads(done.stdout)["ips"]]
    v4 = next(ip for ip in ips if isinstance(ip, IPv4Address))
    v6 = next(ip for ip in ips if isinstance(ip, IPv6Address))
    return v4, v6


def build(factory: NetnsFactory, workdir: Path) -> Cluster:
    node = factory("node")
    # br_netfilter hands bridged IPv4/IPv6 to the inet hooks (with conntrack): without it two pods
    # on one bridge would never meet a policy.
    _sysctl(node, "net.bridge.bridge-nf-call-iptables=1", "net.bridge.bridge-nf-call-ip6tables=1")
    cluster = Cluster(node)
    for space in NAMESPACES:
        for name in NAMES:
            key = f"{space}/{name}"
            pod_ns = factory(f"{space}{name}")
            kind = "routed" if space == "z" else "bridge"
            ip4, ip6 = _add(node, pod_ns, kind, workdir, f"netpol-{space}-{name}")
            cluster.pods[key] = PodNs(key, pod_ns, ip4, ip6, kind == "routed")
    for pod in cluster.pods.values():
        pod.proc = pod.netns.popen([sys.executable, str(AGENT)], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True, bufsize=1)  # type: ignore[assignment]
    for pod in cluster.pods.values():
        assert pod.proc is not None and pod.proc.stdout is not None
        assert pod.proc.stdout.readline().strip() == "ready", f"{pod.key}: server did not start"
    cluster.reset()
    return cluster
