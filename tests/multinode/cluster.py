"""A podnet cluster in namespaces: node namespaces n1 and n2 on one underlay bridge and n4 behind a
router (``agent.routes_cluster.wire_nodes``), each running ``podnet daemon`` and ``podnet agent``
under its own node name, all fed from one record of the cluster's objects.

The record (:class:`Source`) is served two ways at once: as a manifest directory (the agents of n1
and n2 read it) and by the local list/watch server (n4's agent reads it with ``--kubeconfig``), so
one cluster shows both sources driving routes, CNI configs, policy and services. The server listens
in the router namespace (on 10.80.0.254, which every node reaches).

Each agent runs with ``--routing auto`` and writes its node's conflist from its Node's pod CIDRs
(10.244.i.0/24 and fd44:i::/64); n1 and n4 use ``--cni-network bridge``, n2 ``routed``, so pod pairs
cross both plugins, host-gw routes and the VXLAN overlay. Pods are made as kubelet makes them: the
Pod object first (Pending, no address), then CNI ADD through the node's daemon with that conflist
and the pod named in CNI_ARGS, then the Pod object's status gets the addresses the ADD gave.

Every pod runs ``podproc.py``: a TCP server on port 80 that answers with its name and the client
address it saw, and a prober. Everything (processes by PID, namespaces) goes when the block ends.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any, TypeVar

from agent.kubeserver import KubeServer
from agent.policy.agentproc import LOGS, PODNET, AgentError, AgentProcess, current
from agent.policy.manifests import ManifestDir, to_object
from agent.routes_cluster import Underlay, node_ip, wire_nodes
from cnienv import NodeDaemon
from nsutil import Netns, namespaces
from podnet.agent.model import ContainerPort, Namespace, NetworkPolicy, Pod, Protocol

NODES = ("n1", "n2", "n4")
NETWORK = {"n1": "bridge", "n2": "routed", "n4": "bridge"}  # each agent's --cni-network
KUBE_SOURCED = frozenset({"n4"})  # agents reading the list/watch server; the others the manifest dir
PERIOD = 0.5  # --route-check-period
API_HOST = "10.80.0.254"  # the router's address on the underlay
NS_LABEL = "kubernetes.io/metadata.name"
NAMESPACES = ("x", "y")
PODS = (("x", "a"), ("x", "b"), ("y", "c"))  # on every node: x/a-n1, x/b-n1, y/c-n1, ...
PORT = 80
PROTO = "proto 157"  # podnet's routes
POLICY_KINDS = frozenset({"Namespace", "Pod", "NetworkPolicy"})
PORTS = (ContainerPort("http", PORT, Protocol.TCP),)
PODPROC = Path(__file__).with_name("podproc.py")
VENV_BIN = Path(sys.executable).parent
T = TypeVar("T")


def pod_cidrs(node: str) -> tuple[str, str]:
    i = int(node[1:])
    return f"10.244.{i}.0/24", f"fd44:{i}::/64"


def node_object(node: str) -> dict[str, Any]:
    i = int(node[1:])
    v4, v6 = pod_cidrs(node)
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node},
            "spec": {"podCIDR": v4, "podCIDRs": [v4, v6]},
            "status": {"addresses": [{"type": "InternalIP", "address": node_ip(i, 4)},
                                     {"type": "InternalIP", "address": node_ip(i, 6)}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def parallel(fn: Callable[[str], T], items: Iterable[str]) -> dict[str, T]:
    """``fn`` of each item at once (each one mostly waits on a process); the first error raised."""
    items = list(items)
    with ThreadPoolExecutor(max(1, len(items))) as pool:
        return dict(zip(items, pool.map(fn, items), strict=True))


# ---- the cluster's objects ------------------------------------------------------------------------

def _key(obj: dict[str, Any]) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace", ""), meta["name"]


class Source:
    """The cluster's objects, kept in named groups; each write goes to the manifest directory (one
    file per group, replaced whole) and to the list/watch server (objects put, the group's dropped
    ones deleted)."""

    def __init__(self, manifests: ManifestDir, server: KubeServer) -> None:
        self.manifests, self.server = manifests, server
        self.groups: dict[str, list[dict[str, Any]]] = {}

    def write(self, group: str, objects: Iterable[dict[str, Any]]) -> None:
        objects = list(objects)
        before = {_key(o): o for o in self.groups.get(group, [])}
        self.groups[group] = objects
        self.manifests.write(group, objects)
        now = {_key(o) for o in objects}
        for obj in objects:
            if before.get(_key(obj)) != obj:
                self.server.put(obj)
        for kind, namespace, name in before.keys() - now:
            self.server.delete(kind, name, namespace)

    def counts(self) -> Counter[str]:
        return Counter(o["kind"] for group in self.groups.values() for o in group)


# ---- the processes of a node ----------------------------------------------------------------------

class NodeAgent(AgentProcess):
    """``podnet agent`` as a DaemonSet runs it on a node: its own node name, its source, routing,
    the node's CNI config written into the node's conf dir."""

    def __init__(self, node: Netns, workdir: Path, name: str, source_args: Sequence[str]) -> None:
        super().__init__(node, workdir, workdir / "unused", name, ())
        self.source_args = tuple(source_args)
        self.conf_dir, self.data_dir = workdir / "net.d", workdir / "ipam"

    def argv(self) -> list[str]:
        return [str(PODNET), "agent", *self.source_args, "--node-name", self.node_name,
                "--socket", self.socket, "--log-level", "debug",
                "--cni-conf-dir", str(self.conf_dir), "--cni-network", NETWORK[self.node_name],
                "--cni-data-dir", str(self.data_dir),
                "--routing", "auto", "--route-check-period", str(PERIOD)]

    def launch(self) -> None:
        self.starts += 1
        with open(self.log, "ab") as log:
            self.proc = self.node.popen(self.argv(), stdout=log, stderr=subprocess.STDOUT)
        if self.log not in LOGS:
            LOGS.append(self.log)

    def start(self, timeout: float = 20.0) -> None:
        self.launch()
        self.wait(lambda s: bool(s["synced"]) and current(s), timeout, "not current after start")

    def wait(self, check: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        """Poll the status until ``check`` holds; AgentError (with the log) after ``timeout``."""
        deadline = time.monotonic() + timeout
        status: dict[str, Any] | None = None
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AgentError(f"{self.node_name}: agent exited with {self.proc.returncode}\n"
                                 f"{self.log_text()}")
            status = self.try_status()
            if status is not None and check(status):
                return status
            if time.monotonic() > deadline:
                raise AgentError(f"{self.node_name}: agent {what} in {timeout}s: {status}\n{self.log_text()}")
            time.sleep(0.02)


@dataclass
class PodProc:
    key: str  # namespace/name
    node: str
    netns: Netns
    labels: dict[str, str]
    ips: tuple[str, ...] = ()
    proc: subprocess.Popen[str] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def namespace(self) -> str:
        return self.key.split("/")[0]

    @property
    def name(self) -> str:
        return self.key.split("/")[1]

    def address(self, family: int = 4) -> str:
        return next(ip for ip in self.ips if (":" in ip) == (family == 6))

    def model(self) -> Pod:
        return Pod(self.namespace, self.name, labels=dict(self.labels),
                   ips=tuple(ip_address(ip) for ip in self.ips), node_name=self.node, ports=PORTS)

    def probe(self, targets: Sequence[tuple[str, int]], timeout: float) -> list[str | None]:
        """Connect to each ``(address, port)`` at once: the server's line, or None (no answer)."""
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        with self.lock:
            self.proc.stdin.write("".join(f"{i} {a} {p} {timeout}\n" for i, (a, p) in enumerate(targets)))
            self.proc.stdin.flush()
            got = dict(self.proc.stdout.readline().rstrip("\n").split(" ", 1) for _ in targets)
        return [got[str(i)][2:] if got[str(i)].startswith("1 ") else None for i in range(len(targets))]


# ---- the cluster ----------------------------------------------------------------------------------

@dataclass
class MultiCluster:
    underlay: Underlay
    workdir: Path
    source: Source
    server: KubeServer
    kube_sourced: frozenset[str]  # the nodes whose agents read the list/watch server
    daemons: dict[str, NodeDaemon] = field(default_factory=dict)
    agents: dict[str, NodeAgent] = field(default_factory=dict)
    pods: dict[str, PodProc] = field(default_factory=dict)
    namespaces: dict[str, Namespace] = field(default_factory=dict)
    policies: tuple[NetworkPolicy, ...] = ()

    @property
    def nodes(self) -> dict[str, Netns]:
        return self.underlay.nodes

    def generations(self) -> dict[str, int]:
        return {name: agent.generation() for name, agent in self.agents.items()}

    def write(self, group: str, objects: Iterable[dict[str, Any]]) -> None:
        """Change the cluster's objects and wait until every agent has seen all of them and its
        policy table holds them."""
        objects = list(objects)
        since = self.generations()
        kinds = {o["kind"] for o in [*objects, *self.source.groups.get(group, [])]}
        self.source.write(group, objects)
        counts = self.source.counts()
        want = {kind: counts[kind] for kind in ("Namespace", "Pod", "NetworkPolicy", "Node", "Service")}
        # The policy table's generation catches up with the model's only on a change policy reads
        # (agent/sync.py ignores the others): waiting for it after a Node or Service change would
        # wait for the next policy change. Those are waited for by what they drive.
        policy = bool(kinds & POLICY_KINDS)

        def settled(name: str) -> None:
            self.agents[name].wait(lambda s: s["generation"] > since[name] and (current(s) or not policy)
                                   and all(s["objects"].get(k, 0) == n for k, n in want.items()),
                                   10.0, f"did not take {group}")
        parallel(settled, self.agents)

    def apply_policies(self, policies: Iterable[NetworkPolicy]) -> None:
        self.policies = tuple(policies)
        self.write("policies", [to_object(p) for p in self.policies])

    def write_pods(self) -> None:
        self.write("pods", [to_object(p.model()) for p in self.pods.values()])

    def routing_everything(self, status: dict[str, Any]) -> bool:
        """The agent has its conflist and a route per family to every other node."""
        return (bool(status["synced"]) and current(status) and status["cni_config"]["state"] == "current"
                and status["routing"]["routes"] == 2 * (len(self.nodes) - 1))

    def routing(self, name: str) -> dict[str, Any]:
        routing: dict[str, Any] = self.agents[name].status()["routing"]
        return routing

    def ping_failures(self, family: int, attempts: int = 2) -> list[str]:
        """Every pod pings every other pod's address of ``family`` (each pod's pings at once, every pod
        at once); the pairs that got no answer, each tried ``attempts`` times."""
        todo = {key: [p.address(family) for k, p in self.pods.items() if k != key] for key in self.pods}
        for _ in range(attempts):
            procs = {}
            for key, targets in todo.items():
                script = " ".join(f"(ping -n -q -c1 -W2 {t} >/dev/null 2>&1 || echo {t}) &" for t in targets)
                argv = self.pods[key].netns.exec_argv(["sh", "-c", script + " wait"])
                procs[key] = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
            outs = {key: proc.communicate(timeout=30)[0].split() for key, proc in procs.items()}
            todo = {key: failed for key, failed in outs.items() if failed}
            if not todo:
                return []
        return [f"{key} -> {t}" for key, targets in todo.items() for t in targets]

    def outside(self, targets: Sequence[tuple[str, int]], timeout: float) -> list[str | None]:
        """Connect to each ``(address, port)`` at once from the router (a client outside the
        cluster, off every pod range): the server's line, or None."""
        script = ("import json, sys; from concurrent.futures import ThreadPoolExecutor; "
                  f"sys.path.insert(0, {str(PODPROC.parent)!r}); from podproc import probe; "
                  "t = json.loads(sys.stdin.read()); "
                  "print(json.dumps(list(ThreadPoolExecutor(len(t)).map(lambda a: probe(*a), t))))")
        done = self.underlay.router.run([sys.executable, "-c", script], timeout=timeout + 30,
                                        input=json.dumps([[a, p, timeout] for a, p in targets]))
        return [r[2:] if r.startswith("1 ") else None for r in json.loads(done.stdout)]

    def cni(self, pod: PodProc, command: str) -> subprocess.CompletedProcess[str]:
        """``podnet cni`` on the pod's node with the conflist its agent wrote, through its daemon."""
        agent, daemon = self.agents[pod.node], self.daemons[pod.node]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env.update(NETCONFPATH=str(agent.conf_dir), CNI_PATH=str(VENV_BIN),
                   CNI_CACHE_DIR=str(self.workdir / pod.node / "cache"), PODNET_SOCKET=str(daemon.socket),
                   PODNET_AGENT_SOCKET=agent.socket)
        argv = [sys.executable, "-m", "podnet.cli.main", "cni", command, "podnet", pod.netns.path,
                "--args", f"K8S_POD_NAMESPACE={pod.namespace};K8S_POD_NAME={pod.name}"]
        done = self.nodes[pod.node].run(argv, check=False, env=env)
        assert done.returncode == 0 and "Traceback" not in done.stderr, \
            f"{pod.key}: cni {command} failed ({done.returncode}): {done.stdout} {done.stderr}"
        return done


# ---- reading a node's kernel ---------------------------------------------------------------------

def routes(c: MultiCluster, node: str, family: int = 4) -> dict[str, dict[str, object]]:
    out = c.nodes[node].sh(f"ip -{family} -j route show {PROTO}")
    return {r["dst"]: r for r in json.loads(out or "[]")}


def fdb(c: MultiCluster, node: str, device: str = "podnet.vx4") -> dict[str, str]:
    # No device (no VXLAN peer left): no entries.
    out = json.loads(c.nodes[node].sh(f"bridge -j fdb show dev {device} 2>/dev/null", check=False) or "[]")
    return {e["mac"]: e["dst"] for e in out if "dst" in e}


def neighbours(c: MultiCluster, node: str, device: str = "podnet.vx4") -> dict[str, str]:
    out = json.loads(c.nodes[node].sh(f"ip -j neigh show dev {device} nud permanent 2>/dev/null",
                                      check=False) or "[]")
    return {e["dst"]: e["lladdr"] for e in out}


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


def serve_api(ns: Netns, host: str) -> KubeServer:
    """The list/watch server, its socket made inside ``ns`` (by a thread that moves there and
    ends; the socket keeps its namespace, this process's own stays as it was)."""
    made: list[KubeServer | BaseException] = []

    def run() -> None:
        try:
            _setns(ns.path)
            made.append(KubeServer(host=host))
        except BaseException as exc:  # handed to the caller
            made.append(exc)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if isinstance(made[0], BaseException):
        raise made[0]
    return made[0]


def _start_node(c: MultiCluster, name: str) -> None:
    node, work = c.nodes[name], c.workdir / name
    work.mkdir()
    c.daemons[name] = NodeDaemon(node, work / "podnet.sock", work / "daemon.log")
    if name in c.kube_sourced:
        source = ["--kubeconfig", str(c.server.kubeconfig(work / "kubeconfig"))]
    else:
        source = ["--manifests", str(c.source.manifests.path)]
    c.agents[name] = NodeAgent(node, work, name, source)
    c.agents[name].launch()
    c.daemons[name].start()


def build(stack: ExitStack, workdir: Path, names: Sequence[str] = NODES,
          kube_sourced: Iterable[str] = KUBE_SOURCED) -> MultiCluster:
    """The cluster of nodes ``names``, running; every part is registered on ``stack`` to be undone."""
    t0 = time.monotonic()

    def mark(what: str) -> None:
        print(f"{time.monotonic() - t0:6.2f}s {what}", file=sys.stderr)
    factory = stack.enter_context(namespaces())
    underlay = wire_nodes(factory, tuple(names))
    mark("wired")
    server = serve_api(underlay.router, API_HOST)
    stack.callback(server.close)
    c = MultiCluster(underlay, workdir, Source(ManifestDir(workdir / "manifests"), server), server,
                     frozenset(kube_sourced))
    stack.callback(_stop, c)  # runs before the namespaces go (the stack unwinds in reverse)
    c.namespaces = {n: Namespace(n, {NS_LABEL: n}) for n in NAMESPACES}
    c.source.write("nodes", [node_object(n) for n in names])
    c.source.write("namespaces", [to_object(n) for n in c.namespaces.values()])
    parallel(lambda n: _start_node(c, n), names)
    mark("daemons up")
    parallel(lambda n: c.agents[n].wait(c.routing_everything, 30.0, "not routing every peer"), names)
    mark("agents routing")
    pods = {f"{s}/{b}-{n}": (n, s, b) for n in names for s, b in PODS}
    for key, (n, _, b) in pods.items():
        c.pods[key] = PodProc(key, n, factory(key.replace("/", "")), {"pod": b})
    c.write_pods()  # Pending: kubelet's Pod objects exist before their sandboxes
    mark("pods pending")
    parallel(lambda key: _pod_up(c, c.pods[key]), c.pods)
    mark("pods added")
    c.write_pods()  # Running, with the addresses the ADDs gave
    mark("pods running")
    for pod in c.pods.values():
        assert pod.proc is not None and pod.proc.stdout is not None
        assert pod.proc.stdout.readline().strip() == "ready", f"{pod.key}: server did not start"
    return c


def podproc(ns: Netns, name: str) -> subprocess.Popen[str]:
    """``podproc.py NAME`` started in ``ns`` (ended with the namespace, by its PID)."""
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE}
    proc: subprocess.Popen[str] = ns.popen([sys.executable, str(PODPROC), name],  # type: ignore[assignment]
                                           text=True, bufsize=1, **pipes)
    return proc


def _pod_up(c: MultiCluster, pod: PodProc) -> None:
    pod.proc = podproc(pod.netns, pod.key)
    done = c.cni(pod, "add")
    # The ADD named the pod and asked its node's agent (its socket through the daemon's call), which
    # listed the Pending pod already: confirmed at once.
    assert "node agent" not in done.stderr, f"{pod.key}: {done.stderr}"
    result = json.loads(done.stdout)
    pod.ips = tuple(ip["address"].split("/")[0] for ip in result["ips"])
    assert len(pod.ips) == 2, f"{pod.key}: expected an IPv4 and an IPv6 address: {result}"


def _stop(c: MultiCluster) -> None:
    """Agents and daemons by PID, gracefully (a failure to stop is reported after all are down)."""
    errors = []
    for agent in c.agents.values():
        try:
            agent.stop()
        except AgentError as exc:
            errors.append(str(exc))
    for daemon in c.daemons.values():
        if daemon.stop() != 0:
            errors.append(f"daemon exited with {daemon.proc.returncode if daemon.proc else '?'}")
    assert not errors, "\n".join(errors)


@contextmanager
def running_cluster(workdir: Path, names: Sequence[str] = NODES,
                    kube_sourced: Iterable[str] = KUBE_SOURCED) -> Iterator[MultiCluster]:
    with ExitStack() as stack:
        yield build(stack, workdir, names, kube_sourced)
