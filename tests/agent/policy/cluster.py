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

Built with ``services=True``, every pod also gets a dual-stack ClusterIP Service of its own (its
four ports, the pod the only endpoint), and a matrix is probed in both modes at once: at the pod
addresses and at ``ClusterIP:port``. Policy judges a connection after the proxy's DNAT, on the real
destination pod, so both modes must give the semantics' table. A pod reaching itself through its
own Service is hairpin traffic: left out, as upstream leaves it out (policy does not define it, and
a bridged pod's packet would need hairpin mode on its bridge port, which this wiring leaves off), so
those diagonal cells are not probed through the Service (``-`` in a table).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Any

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
SERVICES_FILE = "services"  # the Services and EndpointSlices, written once at build
POD, SERVICE = "pod address", "ClusterIP"  # the two ways a matrix is probed

Cell = tuple[str, str]


@dataclass(frozen=True)
class Way:
    """How one matrix is probed: to each server's pod address or its Service's ClusterIP, on one
    port, protocol and family."""

    mode: str  # POD or SERVICE
    port: int
    proto: Protocol
    family: int = 4

    @property
    def matrix(self) -> tuple[int, Protocol, int]:
        return self.port, self.proto, self.family

    def __str__(self) -> str:
        return f"{self.proto.value}/{self.port} IPv{self.family} to the {self.mode}"


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
    vips: dict[str, tuple[IPv4Address, IPv6Address]] = field(default_factory=dict)  # pod -> its Service's

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

    def address(self, way: Way, key: str) -> str:
        if way.mode == POD:
            return self.pods[key].address(way.family)
        return str(self.vips[key][0 if way.family == 4 else 1])

    def modes(self) -> tuple[str, ...]:
        return (POD, SERVICE) if self.vips else (POD,)

    def probe(self, cells: Iterable[Cell], port: int, proto: Protocol, family: int,
              timeout: float) -> dict[Cell, bool]:
        """These cells probed at the pod addresses."""
        way = Way(POD, port, proto, family)
        return self.probe_ways({way: cells}, timeout)[way]

    def probe_ways(self, cells: Mapping[Way, Iterable[Cell]], timeout: float) -> dict[Way, dict[Cell, bool]]:
        """Each way's cells probed, all at once: one batch per client, every probe of it concurrent
        in the client's prober (so any number of ways costs one timeout)."""
        by_src: dict[str, list[tuple[Way, str]]] = {}
        for way, some in cells.items():
            for src, dst in some:
                by_src.setdefault(src, []).append((way, dst))

        def run(src: str) -> list[tuple[Way, Cell, bool]]:
            proc = self.pods[src].proc
            assert proc is not None and proc.stdin is not None and proc.stdout is not None
            targets = by_src[src]
            proc.stdin.write("".join(f"{i} {self.address(way, dst)} {way.port} {way.proto.value.lower()} "
                                     f"{timeout}\n" for i, (way, dst) in enumerate(targets)))
            proc.stdin.flush()
            got = dict(proc.stdout.readline().split() for _ in targets)
            return [(way, (src, dst), got[str(i)] == "1") for i, (way, dst) in enumerate(targets)]

        out: dict[Way, dict[Cell, bool]] = {way: {} for way in cells}
        with ThreadPoolExecutor(len(by_src) or 1) as pool:
            for part in pool.map(run, by_src):
                for way, cell, reached in part:
                    out[way][cell] = reached
        return out

    def matrix(self, port: int, proto: Protocol, family: int = 4,
               expected: Mapping[Cell, bool] | None = None) -> dict[Cell, bool]:
        """The whole matrix at the pod addresses."""
        way = Way(POD, port, proto, family)
        return self.matrices({way: expected})[way]

    def matrices(self, ways: Mapping[Way, Mapping[Cell, bool] | None]) -> dict[Way, dict[Cell, bool]]:
        """Each way's whole matrix (through a Service, less the hairpin diagonal), all probed
        concurrently; the value: what the way is expected to give, if known."""
        cells = {way: [(s, d) for s in self.pods for d in self.pods if way.mode == POD or s != d]
                 for way in ways}
        got = self.probe_ways(cells, BLOCKED_TIMEOUT)
        # A first packet may wait on neighbour resolution: cells that should be reachable and were
        # not get one slower try (a dropped packet stays dropped however long we wait).
        again = {way: [c for c in some if not got[way][c] and (ways[way] or {}).get(c, True)]
                 for way, some in cells.items()}
        if any(again.values()):
            for way, part in self.probe_ways(again, RETRY_TIMEOUT).items():
                got[way].update(part)
        return got

    def oracle(self, port: int, proto: Protocol, family: int = 4) -> dict[Cell, bool]:
        inputs = self.inputs()
        return {(s, d): allowed(inputs, self.model[s], self.model[d], port, proto, family=family)
                for s in self.pods for d in self.pods}


def table(cells: Mapping[Cell, bool], keys: Iterable[str]) -> str:
    """Upstream's truth table: clients down, servers across (``-``: a cell not probed)."""
    keys = list(keys)

    def mark(cell: Cell) -> str:
        return "-" if cell not in cells else "." if cells[cell] else "X"
    rows = ["-\t" + "\t".join(keys)]
    rows += [k + "\t" + "\t".join(mark((k, d)) for d in keys) for k in keys]
    return "\n".join(rows)


def comparison(title: str, got: Mapping[Cell, bool], want: Mapping[Cell, bool], keys: list[str]) -> str:
    marks = {c: got[c] == want[c] for c in got}
    return (f"{title}\nexpected:\n{table({c: want[c] for c in got}, keys)}\nobserved:\n{table(got, keys)}\n"
            f"agreement (X = differs):\n{table(marks, keys)}")


@dataclass(frozen=True)
class Expect:
    """One matrix a check probes, and upstream's hand-written expectation of it (if it has one)."""

    port: int
    proto: Protocol
    hand: Reach | None = None
    family: int = 4


def check(cluster: Cluster, p: int, proto: Protocol, hand: Reach | None = None, family: int = 4) -> None:
    checks(cluster, Expect(p, proto, hand, family))


def checks(cluster: Cluster, *expects: Expect) -> None:
    """For each matrix: the semantics agree with upstream's expectation (when given), and the kernel
    with the semantics in every probe mode the cluster has (pod address, ClusterIP). Every matrix
    of one policy state is probed at once; a failure shows the tables of every mode of each matrix
    that differs, the agreeing modes too."""
    keys = list(cluster.pods)
    wants: dict[Way, dict[Cell, bool]] = {}
    for e in expects:
        want = cluster.oracle(e.port, e.proto, e.family)
        if e.hand is not None:
            # Upstream ignores loopback (its meaning is undefined there); podnet always allows it.
            off = {c for c in want if c[0] != c[1] and want[c] != e.hand.cells[c]}
            assert not off, comparison(f"semantics vs upstream's expectation, {e.proto.value}/{e.port} "
                                       f"IPv{e.family}", want, e.hand.cells, keys)
        wants.update({Way(mode, e.port, e.proto, e.family): want for mode in cluster.modes()})
    got = cluster.matrices(wants)
    for way, cells in got.items():
        print(f"\n{way}\n{table(cells, keys)}")
    wrong = [way for way, cells in got.items() if any(cells[c] != wants[way][c] for c in cells)]
    shown = [way for way in got if any(way.matrix == w.matrix for w in wrong)]
    assert not wrong, (f"the kernel differs from the semantics probing {', '.join(map(str, wrong))}:\n\n"
                       + "\n\n".join(comparison(f"kernel vs semantics, {way}", got[way], wants[way], keys)
                                       for way in shown))


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
SERVICE_NETS = ("10.96.1.0", "fd00:96::")  # the Services' cluster IPs, from .10 / ::10 up


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


def vips(index: int) -> tuple[IPv4Address, IPv6Address]:
    """The cluster IPs of the ``index``-th pod's Service."""
    ip4, ip6 = (ip_address(net) + FIRST_HOST + index for net in SERVICE_NETS)
    assert isinstance(ip4, IPv4Address) and isinstance(ip6, IPv6Address)
    return ip4, ip6


def service_objects(cluster: Cluster) -> list[dict[str, Any]]:
    """Each pod's Service (dual-stack ClusterIP, the pod's four ports) and its two EndpointSlices
    (one per family, the pod the one ready endpoint), as the API server would serve them."""
    out: list[dict[str, Any]] = []
    ports = [{"name": c.name, "port": c.port, "protocol": c.protocol.value} for c in PORTS]
    for key, ips in cluster.vips.items():
        space, name = key.split("/")
        pod, svc = cluster.pods[key], f"svc-{name}"
        out.append({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": space, "name": svc},
                    "spec": {"type": "ClusterIP", "clusterIP": str(ips[0]),
                             "clusterIPs": [str(ip) for ip in ips],
                             "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack",
                             "ports": [{**p, "targetPort": p["port"]} for p in ports]}})
        for family in (4, 6):
            out.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                        "addressType": f"IPv{family}",
                        "metadata": {"namespace": space, "name": f"{svc}-ipv{family}",
                                     "labels": {"kubernetes.io/service-name": svc}},
                        "endpoints": [{"addresses": [pod.address(family)], "conditions": {"ready": True},
                                       "nodeName": NODE}],
                        "ports": ports})
    return out


def wait_proxied(cluster: Cluster, timeout: float = 10.0) -> None:
    """Until the proxy has committed every Service with all of its endpoints (one per pod, family
    and port)."""
    want = {"proxied": len(cluster.vips), "endpoints": len(cluster.vips) * 2 * len(PORTS)}
    deadline = time.monotonic() + timeout
    while True:
        status = cluster.agent.status()["services"]
        if all(status[k] == n for k, n in want.items()):
            return
        assert time.monotonic() < deadline, f"services not proxied after {timeout}s: {status}, want {want}"
        time.sleep(0.02)


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


def build(factory: NetnsFactory, workdir: Path, services: bool = False) -> Cluster:
    """Nine pods in the manifests first (so their ADDs are admitted at once), then wired; with
    ``services``, each pod's Service too (in the agent's first commit)."""
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
    if services:
        cluster.vips = {key: vips(i) for i, key in enumerate(cluster.pods)}
        manifests.write(SERVICES_FILE, service_objects(cluster))
    agent.start()
    if services:
        wait_proxied(cluster)
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
