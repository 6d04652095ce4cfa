"""NetworkPolicy at scale: 1,000 policies over 1,000 pods compiled to table ``inet podnet-policy`` and
loaded through the table writer, in a throw-away "node" namespace (removed at the end).

Measured in one run:

* full: compile + contribute + the writer's first commit (a full rebuild, one transaction) with the
  in-process libnftables backend, and with ``nft -f`` as the anchor; the rules, chains, sets, maps
  and elements the kernel then holds (read with ``nft -j list table``);
* incremental: one local pod's labels change in the store, the snapshot is compiled again (the
  agent's PolicyCompiler: only the policies the change touches), the changed owners' parts handed
  to the writer and committed: p50 / p99 over many changes, split into store, compile, contribute, diff
  and kernel time; after each change the kernel's verdict map holds the pod's new verdict once;
* throughput: two pods on a bridge in the node namespace (veth pairs, br_netfilter on), iperf3 from
  one to the other with the 1,000 policies loaded and both pods isolated (policies allow the iperf3
  port; a port they deny is checked to be dropped), and the same two pods on twin node namespaces
  with no table (the anchor) and with a conntrack-only table (to tell conntrack's share of a loss
  from the policies'), runs rotating between the three.

Targets (reported, not asserted): full <= 1 s, incremental p50 and p99 <= 20 ms, median throughput
with the policies >= 0.9 x the median with no table. Raw numbers go to bench/out/bench_policy.json
(and a PNG when matplotlib is installed).

    python -m bench.bench_policy [--pods N] [--policies N] [--changes N] [--full-runs N]
                                 [--iperf-seconds N] [--iperf-rounds N] [--seed N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any, cast

from podnet.agent.model import (
    EVERYTHING,
    ContainerPort,
    Direction,
    IPBlock,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    Operator,
    Peer,
    Pod,
    PolicyPort,
    Protocol,
    Requirement,
    Rule,
)
from podnet.agent.objects import Kind
from podnet.agent.policy import FAMILY, TABLE, PolicyInputs, allowed
from podnet.agent.policy.compile import SHARED_OWNER, PolicyCompiler
from podnet.agent.store import Event, EventType, Store
from podnet.dataplane.contribution import Chain, Contribution
from podnet.dataplane.image import Image
from podnet.dataplane.writer import TableWriter
from podnet.kernel.nft import FakeNft, Family, LibNftables, Nft, NftExec, TableState, Transaction
from podnet.kernel.nft.setelem import SetType

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
NODE = "bench-node"
INET: Family = "inet"  # FAMILY, typed for the writer
TARGETS = {"full_s": 1.0, "incremental_s": 0.020, "throughput_ratio": 0.9}
IPERF_PORT = 5201
LOCAL_NET = IPv4Network("10.244.0.0/20")  # this node's pod range
REMOTE_NET = IPv4Network("10.245.0.0/16")  # other nodes' pods

# --------------------------------------------------------------------------------------------------
# The synthetic cluster
# --------------------------------------------------------------------------------------------------

TEAMS = ("payments", "search", "identity", "catalog", "checkout")
ENVS = ("prod", "staging")
# app -> (tier, named container ports): the shape of a typical microservice namespace.
APPS: dict[str, tuple[str, tuple[tuple[str, int], ...]]] = {
    "web": ("frontend", (("http", 8080), ("metrics", 9090))),
    "gateway": ("frontend", (("https", 8443), ("metrics", 9090))),
    "api": ("backend", (("http", 8080), ("grpc", 9000), ("metrics", 9090))),
    "auth": ("backend", (("grpc", 9000), ("metrics", 9090))),
    "search": ("backend", (("http", 8080), ("metrics", 9090))),
    "worker": ("backend", (("metrics", 9090),)),
    "reports": ("backend", (("http", 8080), ("metrics", 9090))),
    "db": ("data", (("postgres", 5432), ("metrics", 9187))),
    "cache": ("data", (("redis", 6379), ("metrics", 9121))),
    "queue": ("data", (("amqp", 5672), ("metrics", 15692))),
}
SERVICE_PORT = {"web": 8080, "gateway": 8443, "api": 8080, "auth": 9000, "search": 8080, "worker": 9090,
                "reports": 8080, "db": 5432, "cache": 6379, "queue": 5672}


@dataclass
class Cluster:
    namespaces: dict[str, Namespace]
    pods: list[Pod]
    policies: list[NetworkPolicy]
    client: Pod  # the two pods the throughput test wires for real
    server: Pod
    denied_port: int  # a port the policies refuse from client to server (the negative control)


def sel(**labels: str) -> LabelSelector:
    return LabelSelector(match_labels=tuple(sorted(labels.items())))


def tcp(port: int | str, end: int | None = None) -> PolicyPort:
    return PolicyPort(Protocol.TCP, port, end)


def make_namespaces() -> dict[str, Namespace]:
    out = {}
    for team in TEAMS:
        for env in ENVS:
            for k in (0, 1):
                name = f"{team}-{env}-{k}"
                out[name] = Namespace(name, {"team": team, "env": env, "kubernetes.io/metadata.name": name})
    for name, team in (("kube-system", "platform"), ("monitoring", "platform")):
        out[name] = Namespace(name, {"team": team, "kubernetes.io/metadata.name": name})
    return out


def make_pods(rng: random.Random, namespaces: Mapping[str, Namespace], count: int,
              local_share: float) -> list[Pod]:
    """One deployment per app per namespace (labels app, tier, team, pod-template-hash, a fifth of
    the pods a version): each gets one pod, then pods go to deployments at random until ``count``.
    Local pods get addresses from this node's range, the others from other nodes' ranges."""
    apps = [(ns, app) for ns in namespaces if ns not in ("kube-system", "monitoring") for app in APPS]
    apps += [("kube-system", "coredns"), ("monitoring", "prometheus")]
    pods: list[Pod] = []
    local = iter(LOCAL_NET.hosts())
    next(local)  # .1 stays free (a gateway, were there one)
    remote = iter(REMOTE_NET.hosts())
    while len(pods) < count:
        ns, app = apps[len(pods) % len(apps)] if len(pods) < len(apps) else rng.choice(apps)
        tier, ports = APPS.get(app, ("platform", (("dns", 53),) if app == "coredns" else (("web", 9090),)))
        labels = {"app": app, "tier": tier, "team": namespaces[ns].labels["team"],
                  "pod-template-hash": f"{zlib.crc32(f'{ns}/{app}'.encode()):08x}"}
        if app == "coredns":
            labels["k8s-app"] = "kube-dns"
        if rng.random() < 0.2:
            labels["version"] = rng.choice(("v1", "v2"))
        is_local = rng.random() < local_share
        pods.append(Pod(ns, f"{app}-{len(pods)}", labels=labels, ips=(next(local if is_local else remote),),
                        node_name=NODE if is_local else f"node-{rng.randrange(2, 40)}",
                        ports=tuple(ContainerPort(n, p) for n, p in ports)))
    return pods


def policy_kinds(rng: random.Random, ns: Namespace, i: int) -> NetworkPolicy:
    """One policy of the mix: mostly app-to-app allow rules on a service port, then cross-namespace
    peers, egress, named ports, ipBlocks, matchExpressions and port ranges."""
    app = rng.choice(list(APPS))
    caller = rng.choice([a for a in APPS if a != app])
    name = f"np-{i:04d}-{app}"
    kind = rng.choices(("app", "named", "xns", "egress", "ipblock", "expr", "range"),
                       weights=(45, 10, 14, 13, 8, 6, 4))[0]
    if kind == "app":
        rule = Rule((Peer(pod_selector=sel(app=caller)),), (tcp(SERVICE_PORT[app]),))
        return NetworkPolicy(ns.name, name, sel(app=app), ingress=(rule,))
    if kind == "named":
        port = rng.choice(APPS[app][1])[0]
        peers = (Peer(namespace_selector=sel(**{"kubernetes.io/metadata.name": "monitoring"}),
                      pod_selector=sel(app="prometheus")),) if port == "metrics" \
            else (Peer(pod_selector=sel(app=caller)),)
        return NetworkPolicy(ns.name, name, sel(app=app), ingress=(Rule(peers, (tcp(port),)),))
    if kind == "xns":
        other = rng.choice(TEAMS)
        peer = Peer(namespace_selector=sel(team=other, env=ns.labels["env"]),
                    pod_selector=sel(tier="frontend"))
        return NetworkPolicy(ns.name, name, sel(app=app), ingress=(Rule((peer,), (tcp(SERVICE_PORT[app]),)),))
    if kind == "egress":
        return egress_policy(rng, ns, name, app)
    if kind == "ipblock":
        block = IPBlock(IPv4Network(rng.choice(("0.0.0.0/0", "192.168.0.0/16", "172.16.0.0/12"))),
                        (IPv4Network("192.168.10.0/24"),) if rng.random() < 0.5 else ())
        return NetworkPolicy(ns.name, name, sel(app=app),
                             ingress=(Rule((Peer(ip_block=block),), (tcp(443), tcp(SERVICE_PORT[app]))),))
    if kind == "expr":
        tiers = Requirement("tier", Operator.IN, frozenset({"backend", "data"}))
        subject = LabelSelector(requirements=(tiers,))
        versioned = LabelSelector(requirements=(Requirement("app", Operator.NOT_IN, frozenset({"worker"})),
                                                Requirement("version", Operator.EXISTS)))
        return NetworkPolicy(ns.name, name, subject, ingress=(Rule((Peer(pod_selector=versioned),),
                                                                   (tcp(9090),)),))
    first = rng.choice((30000, 31000, 32000))
    return NetworkPolicy(ns.name, name, sel(app=app),
                         ingress=(Rule((Peer(pod_selector=sel(app=caller)),), (tcp(first, first + 100),)),))


def egress_policy(rng: random.Random, ns: Namespace, name: str, app: str) -> NetworkPolicy:
    """Egress to the data tier and to DNS in kube-system (the usual default-deny-egress companion),
    sometimes to a network outside the cluster."""
    dns = Peer(namespace_selector=sel(**{"kubernetes.io/metadata.name": "kube-system"}),
               pod_selector=sel(**{"k8s-app": "kube-dns"}))
    rules = [Rule((dns,), (PolicyPort(Protocol.UDP, 53), tcp(53))),
             Rule((Peer(pod_selector=sel(app=rng.choice(("db", "cache", "queue")))),),
                  (tcp(5432), tcp(6379), tcp(5672)))]
    if rng.random() < 0.3:
        outside = IPBlock(IPv4Network("10.0.0.0/8"), (IPv4Network("10.244.0.0/14"),))
        rules.append(Rule((Peer(ip_block=outside),), (tcp(443),)))
    return NetworkPolicy(ns.name, name, sel(app=app), frozenset({Direction.EGRESS}), egress=tuple(rules))


def make_policies(rng: random.Random, namespaces: Mapping[str, Namespace], count: int) -> list[NetworkPolicy]:
    """A default-deny-ingress per application namespace, then the mix spread over them."""
    spaces = [ns for name, ns in namespaces.items() if name not in ("kube-system", "monitoring")]
    out = [NetworkPolicy(ns.name, "default-deny-ingress", EVERYTHING) for ns in spaces][:count]
    while len(out) < count:
        out.append(policy_kinds(rng, spaces[len(out) % len(spaces)], len(out)))
    return out


def iperf_policies(client: Pod, server: Pod) -> list[NetworkPolicy]:
    """What lets the throughput client reach the server: ingress to the server from the client's app
    and egress of the client to the server's app, on the iperf3 port."""
    to_server = Rule((Peer(pod_selector=sel(app=server.labels["app"])),), (tcp(IPERF_PORT),))
    from_client = Rule((Peer(pod_selector=sel(app=client.labels["app"])),), (tcp(IPERF_PORT),))
    return [NetworkPolicy(server.namespace, "allow-iperf-in", sel(app=server.labels["app"]),
                          ingress=(from_client,)),
            NetworkPolicy(client.namespace, "allow-iperf-out", sel(app=client.labels["app"]),
                          frozenset({Direction.EGRESS}), egress=(to_server,))]


def make_cluster(seed: int, pods: int, policies: int, local_share: float = 0.9) -> Cluster:
    rng = random.Random(seed)
    namespaces = make_namespaces()
    all_pods = make_pods(rng, namespaces, pods, local_share)
    home = next(iter(namespaces))
    local = [p for p in all_pods if p.namespace == home and p.node_name == NODE]
    client = next(p for p in local if p.labels["app"] == "web")
    server = next(p for p in local if p.labels["app"] == "api")
    # The iperf3 pair replaces two policies of the mix, so the total stays ``policies``.
    mix = make_policies(rng, namespaces, policies - 2) + iperf_policies(client, server)
    inputs = PolicyInputs.of(namespaces, all_pods, mix, NODE)
    denied = next(p for p in range(IPERF_PORT + 1, IPERF_PORT + 200)
                  if not allowed(inputs, client, server, p, Protocol.TCP))
    if not allowed(inputs, client, server, IPERF_PORT, Protocol.TCP):
        raise RuntimeError("the synthetic policies do not allow the iperf3 port")
    return Cluster(namespaces, all_pods, mix, client, server, denied)


# --------------------------------------------------------------------------------------------------
# The node namespace and the kernel
# --------------------------------------------------------------------------------------------------

def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def in_ns(ns: str, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=check,
                          timeout=timeout)


@dataclass
class Node:
    """The throw-away namespaces of one run: the node, and the two pods wired for throughput."""

    tag: str = field(default_factory=lambda: f"pnbp{os.getpid() % 100000}")
    made: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.tag}-node"

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def netns(self, name: str) -> str:
        ip("netns", "add", name)
        self.made.append(name)
        ip("-n", name, "link", "set", "lo", "up")
        return name

    def delete_table(self) -> None:
        in_ns(self.name, "nft", "delete", "table", FAMILY, TABLE, check=False)

    def kernel_json(self) -> list[dict[str, Any]]:
        out = in_ns(self.name, "nft", "-j", "list", "table", FAMILY, TABLE).stdout
        items: list[dict[str, Any]] = json.loads(out)["nftables"]
        return items

    def cleanup(self) -> None:
        for proc in self.procs:  # our iperf3 servers, by PID (`ip netns exec` exec'd them)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
        self.procs.clear()
        for name in reversed(self.made):
            ip("netns", "del", name, check=False)
        self.made.clear()


@contextlib.contextmanager
def node_env() -> Iterator[Node]:
    node = Node()
    try:
        node.netns(node.name)
        yield node
    finally:
        node.cleanup()


def kernel_counts(items: list[dict[str, Any]]) -> dict[str, int]:
    """Rules, chains, sets, maps and elements of the table as ``nft -j list table`` shows it."""
    counts = {"rules": 0, "chains": 0, "base_chains": 0, "sets": 0, "maps": 0, "set_elements": 0,
              "map_elements": 0}
    for item in items:
        if "rule" in item:
            counts["rules"] += 1
        elif "chain" in item:
            counts["chains"] += 1
            counts["base_chains"] += "hook" in item["chain"]
        elif "set" in item:
            counts["sets"] += 1
            counts["set_elements"] += len(item["set"].get("elem", ()))
        elif "map" in item:
            counts["maps"] += 1
            counts["map_elements"] += len(item["map"].get("elem", ()))
    return counts


def desired_counts(image: Image) -> dict[str, int]:
    """The same counts for the table the writer's union makes (to hold the kernel's listing to)."""
    maps = [s.name for s in image.sets.values() if s.value_type is not None]
    sets = [s.name for s in image.sets.values() if s.value_type is None]
    return {"rules": image.rule_count(), "chains": len(image.chains),
            "base_chains": sum(ch.hook is not None for ch in image.chains.values()), "sets": len(sets),
            "maps": len(maps), "set_elements": sum(len(image.elements.get(n, {})) for n in sets),
            "map_elements": sum(len(image.elements.get(n, {})) for n in maps)}


class TimedNft:
    """A backend wrapper that adds up the time spent in the kernel backend, so a commit's time
    splits into the writer's own work (diff, render) and the backend's (apply, handle read-back)."""

    def __init__(self, inner: Nft) -> None:
        self.inner = inner
        self.apply_s = 0.0
        self.list_s = 0.0

    def reset(self) -> None:
        self.apply_s = self.list_s = 0.0

    def apply(self, tx: Transaction) -> None:
        start = time.perf_counter()
        try:
            self.inner.apply(tx)
        finally:
            self.apply_s += time.perf_counter() - start

    def apply_elements(self, tx: Transaction, types: Mapping[str, SetType]) -> bool:
        """The writer's element path (libnftables: one netlink batch), when the backend has one."""
        send = getattr(self.inner, "apply_elements", None)
        if send is None:
            return False
        start = time.perf_counter()
        try:
            return bool(send(tx, types))
        finally:
            self.apply_s += time.perf_counter() - start

    def rule_handles(self, family: Family, table: str,
                     chains: list[str] | None = None) -> dict[str, list[int]]:
        """The writer's handle read-back (libnftables: a netlink rule dump); a listing otherwise."""
        start = time.perf_counter()
        try:
            dump = getattr(self.inner, "rule_handles", None)
            if dump is not None:
                return cast(dict[str, list[int]], dump(family, table, chains))
            state = self.inner.list_table(family, table, elements=False)
            return {} if state is None else {name: state.handles(name) for name in state.chains}
        finally:
            self.list_s += time.perf_counter() - start

    def list_table(self, family: Family, table: str, *, elements: bool = True) -> TableState | None:
        start = time.perf_counter()
        try:
            return self.inner.list_table(family, table, elements=elements)
        finally:
            self.list_s += time.perf_counter() - start

    def has_table(self, family: Family, table: str) -> bool:
        return self.inner.has_table(family, table)


# --------------------------------------------------------------------------------------------------
# Full: compile + the first commit (a rebuild in one transaction)
# --------------------------------------------------------------------------------------------------

def full_once(node: Node, cluster: Cluster, backend: Nft) -> tuple[dict[str, float], TableWriter]:
    """One full load into a node without the table: seconds per step, and the writer (now holding
    the table, for what comes next)."""
    node.delete_table()
    timed = TimedNft(backend)
    start = time.perf_counter()
    parts = PolicyCompiler().update(cluster_inputs(cluster))
    compiled = time.perf_counter()
    writer = TableWriter(timed, INET, TABLE)
    contribute(writer, parts)
    contributed = time.perf_counter()
    result = writer.commit()
    done = time.perf_counter()
    if not result.full:
        raise RuntimeError("the writer's first commit was not a full rebuild")
    commit = done - contributed
    return {"total": done - start, "compile": compiled - start, "contribute": contributed - compiled,
            "commit": commit, "kernel_apply": timed.apply_s, "handle_readback": timed.list_s,
            "writer_own": commit - timed.apply_s - timed.list_s, "ops": float(result.ops)}, writer


def cluster_inputs(cluster: Cluster) -> PolicyInputs:
    return PolicyInputs.of(cluster.namespaces, cluster.pods, cluster.policies, NODE)


def contribute(writer: TableWriter, parts: Mapping[str, Contribution]) -> None:
    """Each owner's part, as the agent's policy sync hands them over (one owner per policy)."""
    for owner, part in parts.items():
        writer.contribute(owner, part)


def measure_full(node: Node, cluster: Cluster, lib: LibNftables, runs: int) -> dict[str, Any]:
    """``runs`` full loads per backend into a node without the table, the backends interleaved;
    then a rebuild over the loaded table (an agent restarting adopts the table it finds), what the
    kernel holds, and what one element command costs on a table this size."""
    samples: dict[str, list[dict[str, float]]] = {"libnftables": [], "nft -f": []}
    for _ in range(runs):
        samples["libnftables"].append(full_once(node, cluster, lib)[0])
        samples["nft -f"].append(full_once(node, cluster, NftExec(netns=node.path))[0])
    summary = {name: {key: statistics.median(s[key] for s in runs_) for key in runs_[0]}
               for name, runs_ in samples.items()}
    writer = full_once(node, cluster, lib)[1]
    start = time.perf_counter()
    writer.resync()
    adopt = time.perf_counter() - start
    items = node.kernel_json()
    return {"runs": samples, "median": summary, "rebuild_over_loaded_s": adopt,
            "kernel": kernel_counts(items), "compiled": desired_counts(writer.desired()),
            "one_element": one_element_cost(lib, items)}


def one_element_cost(lib: LibNftables, items: list[dict[str, Any]]) -> dict[str, Any]:
    """Seconds of one ``add element`` and one ``delete element`` command (a key no pod has, in the
    ingress verdict map) on the loaded table, and how many of its sets are interval sets: before an
    element command libnftables 1.0.x reads the elements of every interval set of the table into
    its cache."""
    key = "192.0.2.1"  # TEST-NET-1: never a pod address
    runs: dict[str, list[float]] = {"add": [], "delete": []}
    for _ in range(3):
        for verb, script in (("add", f"add element {FAMILY} {TABLE} ingress-ip4 {{ {key} : drop }}"),
                             ("delete", f"delete element {FAMILY} {TABLE} ingress-ip4 {{ {key} }}")):
            start = time.perf_counter()
            lib.run(script)
            runs[verb].append(time.perf_counter() - start)
    sets = [i["set"] for i in items if "set" in i]
    return {"add_s": statistics.median(runs["add"]), "delete_s": statistics.median(runs["delete"]),
            "interval_sets": sum("interval" in s.get("flags", ()) for s in sets), "sets": len(sets)}


# --------------------------------------------------------------------------------------------------
# Incremental: one pod's labels change -> the kernel updated
# --------------------------------------------------------------------------------------------------

def loaded_store(cluster: Cluster) -> Store:
    store = Store(NODE)
    store.register_source("bench", (Kind.NAMESPACE, Kind.POD, Kind.NETWORK_POLICY))
    store.replace(Kind.NAMESPACE, "bench", cluster.namespaces.values())
    store.replace(Kind.POD, "bench", cluster.pods)
    store.replace(Kind.NETWORK_POLICY, "bench", cluster.policies)
    if not store.synced:
        raise RuntimeError("the store is not synced after every kind was listed")
    return store


def relabeled(rng: random.Random, pod: Pod) -> Pod:
    """``kubectl label pod --overwrite app=OTHER`` (and its tier): the pod leaves its policies' sets
    and verdict-map groups for others."""
    app = rng.choice([a for a in APPS if a != pod.labels.get("app")])
    return replace(pod, labels={**pod.labels, "app": app, "tier": APPS[app][0]})


def change_once(store: Store, compiler: PolicyCompiler, writer: TableWriter, timed: TimedNft,
                pod: Pod) -> tuple[dict[str, float], Contribution]:
    """The path of one change, timed step by step: store, snapshot + compile, contribute, commit."""
    timed.reset()
    start = time.perf_counter()
    store.apply(Event(EventType.MODIFIED, pod), "bench")
    snap = store.snapshot()
    stored = time.perf_counter()
    inputs = PolicyInputs.of(snap.namespaces, snap.pods.values(), snap.policies.values(), NODE)
    parts = compiler.update(inputs)
    compiled = time.perf_counter()
    contribute(writer, parts)
    contributed = time.perf_counter()
    result = writer.commit()
    done = time.perf_counter()
    if result.full:
        raise RuntimeError("a label change made a full rebuild, not an incremental commit")
    commit = done - contributed
    return {"total": done - start, "store": stored - start, "compile": compiled - stored,
            "contribute": contributed - compiled, "commit": commit, "kernel_apply": timed.apply_s,
            "handle_readback": timed.list_s, "diff_render": commit - timed.apply_s - timed.list_s,
            "ops": float(result.ops), "changed": float(result.changed),
            "owners": float(len(parts))}, compiler.parts[SHARED_OWNER]


def map_values(lib: LibNftables, name: str, key: str) -> list[str]:
    """Every verdict the kernel's map holds for ``key`` (a correct table has at most one)."""
    out = json.loads(lib.run(f"list map {FAMILY} {TABLE} {name}", json=True))
    found = []
    for item in out["nftables"]:
        for elem_key, value in item.get("map", {}).get("elem", ()):
            if elem_key == key:
                verb, target = next(iter(value.items()))
                found.append(f"{verb} {target['target']}")
    return found


def check_kernel(lib: LibNftables, contribution: Contribution, pod: Pod) -> None:
    """The pod's address is in each verdict map once with the compiled verdict, or not at all."""
    for name in ("ingress-ip4", "egress-ip4"):
        for addr in (str(a) for a in pod.ips if a.version == 4):
            want = contribution.elements.get(name, {}).get(addr)
            have = map_values(lib, name, addr)
            if have != ([want] if want is not None else []):
                raise RuntimeError(f"map {name} holds {have} for {pod.namespace}/{pod.name} {addr}, "
                                   f"compiled: {want}")


def measure_incremental(node: Node, cluster: Cluster, lib: LibNftables, backend: Nft, changes: int,
                        seed: int, check: bool) -> list[dict[str, float]]:
    """``changes`` relabels of random local pods (never the throughput pair) through a writer on
    ``backend`` whose table is loaded first (untimed); each checked in the kernel when ``check``."""
    store, rng = loaded_store(cluster), random.Random(seed)
    timed = TimedNft(backend)
    writer = TableWriter(timed, INET, TABLE)
    compiler = PolicyCompiler()
    contribute(writer, compiler.update(cluster_inputs(cluster)))
    writer.commit()
    keep = {cluster.client.key, cluster.server.key}
    candidates = [p.key for p in cluster.pods if p.node_name == NODE and p.key not in keep]
    samples = []
    for _ in range(changes):
        pod = store.pod(*rng.choice(candidates))
        assert pod is not None
        new = relabeled(rng, pod)
        sample, contribution = change_once(store, compiler, writer, timed, new)
        samples.append(sample)
        if check:
            check_kernel(lib, contribution, new)
    return samples


def profile_text(fn: Callable[[], object], top: int) -> str:
    """cProfile of one call: podnet's functions (and the stdlib ones they lean on) by cumulative
    time, so the chain from the step down to what dominates reads top to bottom."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(r"podnet|ipaddress|\{method", top)
    lines = text.getvalue().splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip().startswith("ncalls"))
    return "\n".join(line for line in lines[first:] if line.strip())


def step_profiles(cluster: Cluster, top: int = 12) -> dict[str, str]:
    """Where the two Python steps of a change go: one compile of the snapshot, and one contribute
    of a recompiled snapshot (one pod relabeled) to a writer holding the previous one."""
    compiler = PolicyCompiler()
    writer = TableWriter(FakeNft(), INET, TABLE)
    contribute(writer, compiler.update(cluster_inputs(cluster)))
    pods = list(cluster.pods)
    at = next(i for i, p in enumerate(pods) if p.node_name == NODE and p.key != cluster.client.key)
    pods[at] = relabeled(random.Random(0), pods[at])
    relabeled_inputs = PolicyInputs.of(cluster.namespaces, pods, cluster.policies, NODE)
    after = PolicyCompiler()
    after.update(cluster_inputs(cluster))
    changed = after.update(relabeled_inputs)
    return {"compile": profile_text(lambda: compiler.update(relabeled_inputs), top),
            "contribute": profile_text(lambda: contribute(writer, changed), top)}


# --------------------------------------------------------------------------------------------------
# Throughput: two real pods on a bridge in the node namespace
# --------------------------------------------------------------------------------------------------

CONNECT_PROBE = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("connected")
except ConnectionRefusedError:
    print("refused")
except (TimeoutError, socket.timeout):
    print("timeout")
"""


def wire_pods(node: Node, bridge_ns: str, cluster: Cluster) -> tuple[str, str]:
    """A bridge in ``bridge_ns`` with br_netfilter handing bridged IPv4/IPv6 to the inet hooks (as
    podnet's bridge networks run), and a veth per pod carrying the pod's address: (client, server)."""
    in_ns(bridge_ns, "sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1",
          "net.bridge.bridge-nf-call-ip6tables=1")
    ip("-n", bridge_ns, "link", "add", "br0", "type", "bridge")
    ip("-n", bridge_ns, "link", "set", "br0", "up")
    names = []
    for role, pod in (("cli", cluster.client), ("srv", cluster.server)):
        ns = node.netns(f"{bridge_ns}-{role}")
        ip("-n", bridge_ns, "link", "add", f"h{role}", "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("-n", bridge_ns, "link", "set", f"h{role}", "master", "br0", "up")
        ip("-n", ns, "addr", "add", f"{pod.ips[0]}/{LOCAL_NET.prefixlen}", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        names.append(ns)
    return names[0], names[1]


def start_server(node: Node, ns: str, address: Any, client_ns: str) -> None:
    """iperf3 -s in the server pod, ours to end by PID; returns once the client reaches it (the
    iperf3 port is allowed by the policies)."""
    argv = ["ip", "netns", "exec", ns, "iperf3", "-s", "-p", str(IPERF_PORT)]
    node.procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        # The probe checks that the port is open (the bridge forwards, the server listens); the
        # server drops a connection that sends no test and goes on serving.
        if probe(client_ns, address, IPERF_PORT, 0.5) == "connected":
            return
        time.sleep(0.1)
    raise RuntimeError(f"the iperf3 server in {ns} cannot be reached from {client_ns}")


def probe(ns: str, address: Any, port: int, timeout: float) -> str:
    argv = (sys.executable, "-c", CONNECT_PROBE, str(address), str(port), str(timeout))
    return in_ns(ns, *argv).stdout.strip()


def iperf(client_ns: str, address: Any, seconds: int) -> float:
    """Gbit/s the server received over one iperf3 TCP test."""
    proc = in_ns(client_ns, "iperf3", "-c", str(address), "-p", str(IPERF_PORT), "-t", str(seconds), "-J",
                 check=False, timeout=seconds + 30)
    out = json.loads(proc.stdout or "{}")
    if proc.returncode != 0 or "error" in out:
        raise RuntimeError(f"iperf3 failed: {out.get('error', proc.stderr.strip())}")
    return float(out["end"]["sum_received"]["bits_per_second"]) / 1e9


SIDES = ("no_table", "conntrack_only", "policies")


def conntrack_only(ns: str) -> None:
    """A table with one forward chain accepting established traffic and nothing else: every packet
    pays conntrack, no packet meets a policy (tells the policies' share of a loss from conntrack's)."""
    chain = Chain("forward", type="filter", hook="forward", priority=0, policy="accept",
                  rules=("ct state established,related accept",))
    writer = TableWriter(NftExec(netns=f"/run/netns/{ns}"), INET, "podnet-bench-ct")
    writer.contribute("bench", Contribution(chains=(chain,)))
    writer.commit()


def measure_throughput(node: Node, cluster: Cluster, writer: TableWriter, lib: LibNftables, seconds: int,
                       rounds: int) -> dict[str, Any]:
    """iperf3 between the two pods on the node with the policy table loaded, and between the same
    two pods on twin node namespaces wired the same way: one with no table (the anchor), one with a
    conntrack-only table. Runs rotate between the three: on a shared machine the load drifts, and
    quick rotation keeps a drift from favouring one side. The denied port is probed on the anchor
    (refused: the pod answers) and on the node (timeout: dropped). With no table a namespace does
    not even track connections; with the policies every packet pays conntrack, and the first of
    each connection the policy chains and set lookups."""
    twins = {side: node.netns(f"{node.tag}-{side[:2]}") for side in SIDES[:2]}
    conntrack_only(twins["conntrack_only"])
    pairs = {side: wire_pods(node, twins.get(side, node.name), cluster) for side in SIDES}
    server = cluster.server.ips[0]
    writer.resync()
    check_isolated(lib, cluster)
    control = {}
    for side, (client_ns, server_ns) in pairs.items():
        start_server(node, server_ns, server, client_ns)
        control[side] = probe(client_ns, server, cluster.denied_port, 1.0)
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    for r in range(rounds):
        for side in SIDES[r % 3:] + SIDES[:r % 3]:
            rates[side].append(iperf(pairs[side][0], server, seconds))
    return {"gbit_s": rates, "median": {k: statistics.median(v) for k, v in rates.items()},
            "best": {k: max(v) for k, v in rates.items()},
            "paired_ratio": statistics.median(p / n for p, n in zip(rates["policies"], rates["no_table"],
                                                                     strict=True)),
            "denied_port": cluster.denied_port, "denied_port_probe": control}


def check_isolated(lib: LibNftables, cluster: Cluster) -> None:
    """Both pods are in the kernel's verdict maps: the client isolated for egress, the server for
    ingress, so the first packet of every connection goes through policy chains."""
    for name, pod in (("egress-ip4", cluster.client), ("ingress-ip4", cluster.server)):
        if len(map_values(lib, name, str(pod.ips[0]))) != 1:
            raise RuntimeError(f"{pod.namespace}/{pod.name} is not in the kernel's {name} map")


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def cluster_summary(cluster: Cluster) -> dict[str, Any]:
    return {"namespaces": len(cluster.namespaces), "pods": len(cluster.pods),
            "local_pods": sum(p.node_name == NODE for p in cluster.pods), "policies": len(cluster.policies),
            "egress_policies": sum(Direction.EGRESS in p.directions for p in cluster.policies),
            "label_groups": len({(p.namespace, frozenset(p.labels.items())) for p in cluster.pods})}


def steps(samples: list[dict[str, float]], keys: tuple[str, ...]) -> str:
    return ", ".join(f"{k} {statistics.median(s[k] for s in samples) * 1e3:.1f}" for k in keys)


def print_full(full: dict[str, Any]) -> None:
    med = full["median"]
    print(f"\nfull load, median of {len(full['runs']['libnftables'])} (ms):")
    print(f"  {'':12} {'total':>8} {'compile':>8} {'contrib':>8} {'commit':>8} {'= apply':>8} "
          f"{'readback':>9} {'writer':>7} {'ops':>7}")
    for name, m in med.items():
        print(f"  {name:12} {m['total'] * 1e3:8.1f} {m['compile'] * 1e3:8.1f} {m['contribute'] * 1e3:8.1f} "
              f"{m['commit'] * 1e3:8.1f} {m['kernel_apply'] * 1e3:8.1f} {m['handle_readback'] * 1e3:9.1f} "
              f"{m['writer_own'] * 1e3:7.1f} {m['ops']:7.0f}")
    print(f"  libnftables rebuild over the loaded table (an agent restart adopting it): "
          f"{full['rebuild_over_loaded_s'] * 1e3:.1f} ms")
    k, d = full["kernel"], full["compiled"]
    print("  in the kernel: " + ", ".join(f"{v} {n.replace('_', ' ')}" for n, v in k.items())
          + ("  (= the writer's union)" if k == d else f"\n  THE WRITER'S UNION DIFFERS: {d}"))
    one = full["one_element"]
    print(f"  one element command on this table through libnftables: add {one['add_s'] * 1e3:.1f} ms, "
          f"delete {one['delete_s'] * 1e3:.1f} ms ({one['interval_sets']} of its {one['sets']} sets are "
          f"interval sets, whose elements libnftables 1.0.x reads into its cache before any element command)")


def print_incremental(inc: list[dict[str, float]], anchor: list[dict[str, float]]) -> None:
    keys = ("store", "compile", "contribute", "diff_render", "kernel_apply", "handle_readback")
    print(f"\nincremental, one pod relabeled -> commit returned, {len(inc)} changes (ms):")
    for name, s in (("libnftables", inc), ("nft -f", anchor)):
        if s:
            totals = [x["total"] for x in s]
            p50, p99 = percentile(totals, 50) * 1e3, percentile(totals, 99) * 1e3
            ops = statistics.median(x["ops"] for x in s)
            changed = sum(x["changed"] > 0 for x in s)
            print(f"  {name:12} p50 {p50:7.1f}  p99 {p99:7.1f}  (n={len(s)}, {changed} changed the kernel; "
                  f"medians: {steps(s, keys)}; ops {ops:.0f})")


def print_targets(full: dict[str, Any], inc: list[dict[str, float]],
                  tput: dict[str, Any] | None) -> list[str]:
    totals = [x["total"] for x in inc]
    lib_full, anchor_full = full["median"]["libnftables"]["total"], full["median"]["nft -f"]["total"]
    rows = [("full compile+apply (s)", lib_full, TARGETS["full_s"], lib_full <= TARGETS["full_s"],
             f"nft -f {anchor_full:.3f} s, {lib_full / anchor_full:.2f}x of it"),
            ("incremental p50 (ms)", percentile(totals, 50) * 1e3, TARGETS["incremental_s"] * 1e3,
             percentile(totals, 50) <= TARGETS["incremental_s"], ""),
            ("incremental p99 (ms)", percentile(totals, 99) * 1e3, TARGETS["incremental_s"] * 1e3,
             percentile(totals, 99) <= TARGETS["incremental_s"], "")]
    if tput is not None:
        base, pol = tput["median"]["no_table"], tput["median"]["policies"]
        # A ratio measured while the policies do not isolate the pods would mean nothing.
        expected = {"no_table": "refused", "conntrack_only": "refused", "policies": "timeout"}
        isolating = tput["denied_port_probe"] == expected
        rows.append(("throughput ratio", pol / base, TARGETS["throughput_ratio"],
                     isolating and pol / base >= TARGETS["throughput_ratio"],
                     f"{pol:.2f} Gbit/s with policies / {base:.2f} Gbit/s without"
                     + ("" if isolating else "; THE DENIED PORT WAS NOT DENIED")))
    print(f"\n{'target':26} {'value':>9} {'target':>9}  result")
    missed = []
    for name, value, target, ok, note in rows:
        sign = ">=" if "throughput" in name else "<="
        print(f"  {name:24} {value:9.3f} {sign}{target:7.3f}  {'met' if ok else 'MISSED'}  {note}")
        if not ok:
            missed.append(name)
    return missed


def plot(inc: list[dict[str, float]], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no PNG (the JSON has every sample)"
    keys = ("store", "compile", "contribute", "diff_render", "kernel_apply", "handle_readback")
    fig, ax = plt.subplots(figsize=(10, 4))
    bottom = [0.0] * len(inc)
    for key in keys:
        values = [s[key] * 1e3 for s in inc]
        ax.bar(range(len(inc)), values, bottom=bottom, label=key)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.axhline(TARGETS["incremental_s"] * 1e3, color="red", linestyle="--", label="target")
    ax.set_xlabel("change")
    ax.set_ylabel("ms")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return f"incremental breakdown: {path}"


# --------------------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict[str, Any]:
    cluster = make_cluster(args.seed, args.pods, args.policies)
    print(f"   cluster: {cluster_summary(cluster)}", flush=True)
    out: dict[str, Any] = {"args": vars(args), "cluster": cluster_summary(cluster),
                           "loadavg_before": os.getloadavg()}
    with node_env() as node, LibNftables(netns=node.path) as lib:
        out["full"] = measure_full(node, cluster, lib, args.full_runs)
        print("   full loads done", flush=True)
        out["incremental"] = measure_incremental(node, cluster, lib, lib, args.changes, args.seed, True)
        out["incremental_nft_f"] = measure_incremental(node, cluster, lib, NftExec(netns=node.path),
                                                       args.anchor_changes, args.seed, True)
        print("   incremental changes done", flush=True)
        out["throughput"] = None
        if args.iperf_rounds:
            writer = TableWriter(lib, INET, TABLE)
            contribute(writer, PolicyCompiler().update(cluster_inputs(cluster)))
            out["throughput"] = measure_throughput(node, cluster, writer, lib, args.iperf_seconds,
                                                   args.iperf_rounds)
    out["loadavg_after"] = os.getloadavg()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_policy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--policies", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--anchor-changes", type=int, default=10, help="label changes through nft -f")
    parser.add_argument("--full-runs", type=int, default=3)
    parser.add_argument("--iperf-seconds", type=int, default=3)
    parser.add_argument("--iperf-rounds", type=int, default=4,
                        help="rounds of one run per side, order alternating; 0: no throughput test")
    parser.add_argument("--seed", type=int, default=10)
    args = parser.parse_args(argv)
    needed = ("ip", "nft", "iperf3")
    if os.geteuid() != 0 or any(shutil.which(t) is None for t in needed):
        print(f"bench_policy: skipped (needs root and {', '.join(needed)})")
        return 0
    out = run(args)
    print(f"\nload average before / after (2 cores, shared): {out['loadavg_before'][0]:.1f} / "
          f"{out['loadavg_after'][0]:.1f}")
    print_full(out["full"])
    print_incremental(out["incremental"], out["incremental_nft_f"])
    if out["throughput"] is not None:
        t = out["throughput"]
        runs = {k: " ".join(f"{x:.2f}" for x in v) for k, v in t["gbit_s"].items()}
        med = t["median"]
        print(f"\nthroughput, iperf3 TCP {args.iperf_seconds} s per run (Gbit/s): "
              f"no table {runs['no_table']}; conntrack only {runs['conntrack_only']}; "
              f"{args.policies} policies {runs['policies']}")
        print(f"  medians: conntrack only / no table {med['conntrack_only'] / med['no_table']:.3f}, "
              f"policies / conntrack only {med['policies'] / med['conntrack_only']:.3f}")
        print(f"  ratio of the best runs {t['best']['policies'] / t['best']['no_table']:.3f}, median of the "
              f"per-round ratios {t['paired_ratio']:.3f} (the target row uses the medians)")
        busy = max(out["loadavg_before"][0], out["loadavg_after"][0])
        if busy > (os.cpu_count() or 1):
            print(f"  the machine was busy (load {busy:.1f} on {os.cpu_count()} cores): iperf3 between two "
                  f"namespaces is CPU-bound, so these figures move with other processes' load")
        probe_ = t["denied_port_probe"]
        print(f"  port {t['denied_port']}, which the policies deny, client -> server: {probe_['no_table']} "
              f"without a table, {probe_['conntrack_only']} with conntrack only, {probe_['policies']} with "
              f"the policies (expected: refused, refused, timeout)")
    missed = print_targets(out["full"], out["incremental"], out["throughput"])
    out["profiles"] = step_profiles(make_cluster(args.seed, args.pods, args.policies))
    if missed:
        for step, text in out["profiles"].items():
            print(f"\nmissed {', '.join(missed)}: where one {step} of a relabeled snapshot goes (cProfile, "
                  f"cumulative)\n{text}")
    OUT.mkdir(exist_ok=True)
    (OUT / "bench_policy.json").write_text(json.dumps(out, indent=1, default=str))
    print(f"\nraw numbers: {OUT / 'bench_policy.json'}")
    print(plot(out["incremental"], OUT / "bench_policy.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
