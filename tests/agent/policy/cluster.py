"""The upstream netpol e2e model in real namespaces: namespaces x, y, z with pods a, b, c each,
every pod serving TCP and UDP on 80 and 81, a probe matrix run concurrently, and the truth table
printed as upstream prints it (``.`` reachable, ``X`` blocked; rows are clients, columns servers).

Pods are wired by podnet's own plugins (CNI ADD, in-process, static addresses): x and y pods by
podnet-bridge, as ports of one bridge in the node namespace (so x<->y traffic is switched, and
reaches the forward hook through br_netfilter); z pods by podnet-routed (/32 and /128, a host route
each). The policy is the real agent's: ``podnet agent`` runs in the node namespace, reads the
cluster's Namespaces, Pods and NetworkPolicies from its manifest directory and commits the policy
table through the dataplane's writer. Every change a test makes is written there and the test
waits until the agent says the kernel is current. The agent holds back the pod ranges
(``--pod-cidr``): every ADD names its pod (CNI_ARGS ``K8S_POD_*``) and asks the agent to admit it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

from nsutil import Netns, NetnsFactory
from podnet.agent.model import ContainerPort, Namespace, NetworkPolicy, Pod, Protocol
from podnet.agent.policy import PolicyInputs, allowed

from .agentproc import AgentProcess
from .manifests import ManifestDir

NAMESPACES = ("x", "y", "z")
NAMES = ("a", "b", "c")
NODE = "node-1"
NS_LABEL = "kubernetes.io/metadata.name"
PORTS = tuple(ContainerPort(f"serve-{n}-{p.value.lower()}", n, p)
              for n in (80, 81) for p in (Protocol.TCP, Protocol.UDP))
AGENT = Path(__file__).with_name("podagent.py")
BLOCKED_TIMEOUT = 0.5
RETRY_TIMEOUT = 2.0
CLUSTER_FILE = "cluster"  # the manifest file holding the whole world of the matrix

Cell = tuple[str, str]


@dataclass
class PodNs:
    key: str
    netns: Netns
    ip4: IPv4Address
    ip6: IPv6Address
    routed: bool
    labels: dict[str, str] = field(default_factory=dict)  # what reset() gives it back
    proc: subprocess.Popen[str] | None = None

    def address(self, family: int) -> str:
        return str(self.ip4 if family == 4 else self.ip6)


@dataclass
class Cluster:
    node: Netns
    agent: AgentProcess
    manifests: ManifestDir
    workdir: Path
    pods: dict[str, PodNs] = field(default_factory=dict)
    namespaces: dict[str, Namespace] = field(default_factory=dict)
    model: dict[str, Pod] = field(default_factory=dict)
    policies: tuple[NetworkPolicy, ...] = ()

    # -- the model ---------------------------------------------------------------------------------

    def reset(self) -> None:
        self.namespaces = {n: Namespace(n, {NS_LABEL: n}) for n in NAMESPACES}
        self.model = {k: model_pod(k, p.labels, (p.ip4, p.ip6)) for k, p in self.pods.items()}

    def label_pod(self, key: str, labels: Mapping[str, str]) -> None:
        old = self.model[key]
        self.model[key] = Pod(old.namespace, old.name, labels=dict(labels), ips=old.ips,
                              node_name=old.node_name, ports=old.ports)

    def label_namespace(self, name: str, labels: Mapping[str, str]) -> None:
        self.namespaces[name] = Namespace(name, {NS_LABEL: name, **labels})

    def inputs(self) -> PolicyInputs:
        return PolicyInputs.of(self.namespaces, self.model.values(), self.policies, NODE)

    def apply(self, policies: Iterable[NetworkPolicy] | None = None) -> bool:
        """Write the model with these policies (default: the current ones) to the agent's manifest
        directory and wait until the agent has committed it. False when nothing changed."""
        if policies is not None:
            self.policies = tuple(policies)
        return self.write(CLUSTER_FILE, self.objects())

    def objects(self) -> list[Namespace | Pod | NetworkPolicy]:
        return [*self.namespaces.values(), *self.model.values(), *self.policies]

    def write(self, name: str, objects: Iterable[Namespace | Pod | NetworkPolicy]) -> bool:
        """Replace one manifest file and wait for the agent to commit all of it (this file holds
        every object the agent has)."""
        objects = list(objects)
        since = self.agent.generation()
        if not self.manifests.write(name, objects):
            return False
        counts = Counter(type(o).__name__ for o in objects)
        self.agent.wait_current(since, {kind: counts[kind] for kind in ("Namespace", "Pod", "NetworkPolicy")})
        return True

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


def check(cluster: Cluster, p: int, proto: Protocol, hand: Reach | None = None, family: int = 4) -> None:
    keys = list(cluster.pods)
    want = cluster.oracle(p, proto, family)
    if hand is not None:
        # Upstream ignores loopback (its meaning is undefined there); podnet always allows it.
        off = {c for c in want if c[0] != c[1] and want[c] != hand.cells[c]}
        assert not off, comparison("semantics vs upstream's expectation", want, hand.cells, keys)
    got = cluster.matrix(p, proto, family, want)
    print(f"\n{proto.value}/{p} IPv{family}\n{table(got, keys)}")
    assert got == want, comparison(f"kernel vs semantics, {proto.value}/{p} IPv{family}", got, want, keys)


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
POD_CIDRS = tuple(s for pair in SUBNETS.values() for s in pair)
FIRST_HOST = 10  # static addresses from .10 / ::10 up; .1 / ::1 is the bridge's gateway


def model_pod(key: str, labels: Mapping[str, str], ips: tuple[IPv4Address | IPv6Address, ...] = ()) -> Pod:
    space, name = key.split("/")
    return Pod(space, name, labels=dict(labels), ips=ips, node_name=NODE, ports=PORTS)


def addresses(kind: str, index: int) -> tuple[IPv4Address, IPv6Address]:
    """The static addresses of the ``index``-th pod of this plugin's subnets."""
    v4, v6 = SUBNETS[kind]
    ip4 = ip_address(v4.split("/")[0]) + FIRST_HOST + index
    ip6 = ip_address(v6.split("/")[0]) + FIRST_HOST + index
    assert isinstance(ip4, IPv4Address) and isinstance(ip6, IPv6Address)
    return ip4, ip6


def _sysctl(ns: Netns, *settings: str) -> None:
    ns.run(["sysctl", "-q", "-w", *settings])


def _conf(kind: str, ips: tuple[IPv4Address, IPv6Address]) -> dict[str, object]:
    # Static IPAM: the address is the test's choice, so the pod can be in the manifests (the
    # cluster's record of it) before its ADD, as kubelet's pod object exists before the sandbox.
    entries = []
    for ip, subnet in zip(ips, SUBNETS[kind], strict=True):
        entry = {"address": f"{ip}/{subnet.split('/')[1]}"}
        if kind == "bridge":
            entry["gateway"] = str(ip_address(subnet.split("/")[0]) + 1)
        entries.append(entry)
    conf: dict[str, object] = {"cniVersion": "1.0.0", "name": f"netpol-{kind}", "type": f"podnet-{kind}",
                               "ipam": {"type": "podnet-static", "addresses": entries}}
    if kind == "bridge":
        conf.update(bridge="br0", isDefaultGateway=True)
    return conf


def cni_add(node: Netns, pod: Netns, kind: str, ips: tuple[IPv4Address, IPv6Address], key: str,
            socket: str, mac: str = "") -> str:
    """CNI ADD with podnet's own plugin, in-process (no daemon), as kubelet would call it: the pod
    named in CNI_ARGS and the agent's socket in the env. Returns the plugin's stderr."""
    done = _cni("ADD", node, pod, kind, ips, key, socket, f";MAC={mac}" if mac else "")
    assert done.returncode == 0, f"{kind} ADD of {key} failed: {done.stdout} {done.stderr}"
    got = {ip_address(ip["address"].split("/")[0]) for ip in json.loads(done.stdout)["ips"]}
    assert got == set(ips), f"{key}: ADD gave {got}, not {ips}"
    return done.stderr


def start_server(pod: PodNs) -> None:
    pod.proc = pod.netns.popen([sys.executable, str(AGENT)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, bufsize=1)  # type: ignore[assignment]


def wait_server(pod: PodNs) -> None:
    assert pod.proc is not None and pod.proc.stdout is not None
    assert pod.proc.stdout.readline().strip() == "ready", f"{pod.key}: server did not start"


def build(factory: NetnsFactory, workdir: Path) -> Cluster:
    """Nine pods in the manifests first (so their ADDs are admitted at once), then wired."""
    node = factory("node")
    # br_netfilter hands bridged IPv4/IPv6 to the inet hooks (with conntrack): without it two pods
    # on one bridge would never meet a policy.
    _sysctl(node, "net.bridge.bridge-nf-call-iptables=1", "net.bridge.bridge-nf-call-ip6tables=1")
    manifests = ManifestDir(workdir / "manifests")
    agent = AgentProcess(node, workdir, manifests.path, NODE, POD_CIDRS)
    cluster = Cluster(node, agent, manifests, workdir)
    count = {"bridge": 0, "routed": 0}
    for space in NAMESPACES:
        for name in NAMES:
            kind = "routed" if space == "z" else "bridge"
            ip4, ip6 = addresses(kind, count[kind])
            count[kind] += 1
            key = f"{space}/{name}"
            cluster.pods[key] = PodNs(key, factory(f"{space}{name}"), ip4, ip6, kind == "routed",
                                      {"pod": name})
    cluster.reset()
    manifests.write(CLUSTER_FILE, [*cluster.namespaces.values(), *cluster.model.values()])
    agent.start()
    for pod in cluster.pods.values():
        start_server(pod)
        kind = "routed" if pod.routed else "bridge"
        said = cni_add(node, pod.netns, kind, (pod.ip4, pod.ip6), pod.key, agent.socket)
        assert "held back" not in said, f"{pod.key} was listed, yet not admitted: {said}"
    for pod in cluster.pods.values():
        wait_server(pod)
    return cluster


def cni_del(node: Netns, pod: Netns, kind: str, ips: tuple[IPv4Address, IPv6Address], key: str,
            socket: str) -> None:
    done = _cni("DEL", node, pod, kind, ips, key, socket)
    assert done.returncode == 0, f"{kind} DEL of {key} failed: {done.stdout} {done.stderr}"


def _cni(command: str, node: Netns, pod: Netns, kind: str, ips: tuple[IPv4Address, IPv6Address], key: str,
         socket: str, more_args: str = "") -> subprocess.CompletedProcess[str]:
    space, name = key.split("/")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update(CNI_COMMAND=command, CNI_CONTAINERID=f"netpol-{space}-{name}", CNI_NETNS=pod.path,
               CNI_IFNAME="eth0", CNI_PATH=str(PLUGINS), PODNET_SOCKET=str(Path(socket).with_name("no.sock")),
               CNI_ARGS=f"IgnoreUnknown=1;K8S_POD_NAMESPACE={space};K8S_POD_NAME={name}{more_args}",
               PODNET_AGENT_SOCKET=socket)  # PODNET_SOCKET: no daemon, the plugin works in-process
    return node.run([str(PLUGINS / f"podnet-{kind}")], input=json.dumps(_conf(kind, ips)), env=env,
                    check=False)
