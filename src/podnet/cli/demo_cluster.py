"""``podnet demo`` (the default): a three-node cluster in throw-away namespaces.

The nodes (:mod:`podnet.cli.demo_nodes`) each run ``podnet daemon`` and ``podnet agent`` from one
manifest directory, as a DaemonSet would from the API server. Two pods per node are made as kubelet
makes them: the Pod object (Pending), CNI ADD through the node's daemon with the config its agent
wrote, then the Pod's status with the address. The demo prints the ping matrix between every pod
and the path each pair takes (on the node, host-gw routes, or the VXLAN overlay), a ClusterIP
Service with endpoints on two nodes probed from the third, and the TCP matrix before and with a
NetworkPolicy; then it deletes every pod and removes everything it made, also when it fails or is
interrupted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml  # type: ignore[import-untyped]

from podnet.cli.demo_agent import NAMESPACE, AgentProcess, namespace_manifest, pod_manifest, write_manifest
from podnet.cli.demo_netns import namespace, netns_exec
from podnet.cli.demo_nodes import (
    NETWORK,
    NODES,
    ROUTER,
    ClusterNode,
    node_ip,
    node_manifest,
    pod_cidr,
    running_nodes,
    wire_underlay,
)
from podnet.cli.demo_policy import POLICY, check_matrix, policy_manifest
from podnet.cli.demo_probe import PORT, Probers, probers

ROLES = {"n1": ("frontend", "db"), "n2": ("backend", "db"), "n3": ("frontend", "backend")}
# Twenty tries: the chance that one of two endpoints gets none of them is about one in half a million.
SERVICE, SERVICE_IP, SERVICE_TRIES = "db", "10.96.0.10", 20
SERVICE_CLIENT = "frontend-n3"  # on the node without a db pod, behind the router
T = TypeVar("T")


@dataclass(frozen=True)
class ClusterPod:
    name: str  # ROLE-NODE, in namespace NAMESPACE, labelled app=ROLE
    role: str
    node: str
    netns: str


def _each(fn: Callable[[T], Any], items: Iterable[T]) -> list[Any]:
    """``fn`` of every item at once (each mostly waits on a process); the first error is raised."""
    items = list(items)
    with ThreadPoolExecutor(max(1, len(items))) as pool:
        return list(pool.map(fn, items))


def _manifests(pods: Sequence[ClusterPod], addrs: Mapping[str, str]) -> list[dict[str, Any]]:
    return [namespace_manifest(), *(pod_manifest(p.name, {"app": p.role}, addrs.get(p.name), p.node)
                                    for p in pods)]


def _write_all(nodes: Mapping[str, ClusterNode], manifests: Path, name: str,
               objects: Sequence[Mapping[str, Any]], what: str) -> None:
    """Write a manifest and wait until every node's agent holds it in its kernel."""
    before = {n: node.agent.status()["generation"] for n, node in nodes.items()}
    write_manifest(manifests, name, objects)
    _each(lambda n: nodes[n].agent.applied_after(before[n], what), nodes)


# -- pods ------------------------------------------------------------------------------------------

def _network(node: ClusterNode) -> str:
    """The name of the network in the conflist the node's agent wrote."""
    for path in node.conf_dir.glob("*.conflist"):
        return str(json.loads(path.read_text())["name"])
    raise RuntimeError(f"the agent of {node.name} wrote no CNI config into {node.conf_dir}")


def _cni(node: ClusterNode, command: str, pod: ClusterPod) -> str:
    network = _network(node)
    argv = netns_exec(node.netns, sys.executable, "-m", "podnet.cli.main", "cni", command, network,
                      f"/run/netns/{pod.netns}",
                      "--args", f"IgnoreUnknown=1;K8S_POD_NAMESPACE={NAMESPACE};K8S_POD_NAME={pod.name}")
    done = subprocess.run(argv, env=node.cni_env(), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"podnet cni {command} {pod.name} on {node.name} failed: {done.stderr.strip()}")
    return done.stdout


def _add_pods(nodes: Mapping[str, ClusterNode], pods: Sequence[ClusterPod]) -> dict[str, str]:
    """CNI ADD of every pod, the nodes at once, each node's pods in order (so their addresses are
    the same every run); pod name -> its address."""
    def on(node: str) -> dict[str, str]:
        results = {p.name: json.loads(_cni(nodes[node], "add", p)) for p in pods if p.node == node}
        return {name: str(r["ips"][0]["address"].split("/")[0]) for name, r in results.items()}

    addrs: dict[str, str] = {}
    for part in _each(on, nodes):
        addrs.update(part)
    return addrs


def _make_pods(stack: ExitStack, tag: str) -> list[ClusterPod]:
    return [ClusterPod(f"{role}-{node}", role, node,
                       stack.enter_context(namespace(f"pndemo-{role}-{node}-{tag}")))
            for node in NODES for role in ROLES[node]]


# -- what the demo shows ---------------------------------------------------------------------------

def _print_nodes(nodes: Mapping[str, ClusterNode]) -> dict[tuple[str, str], str]:
    """Each node and how it reaches the others' pods, as its agent reports; (node, peer) -> mode."""
    paths = {}
    for name, node in nodes.items():
        peers = node.agent.status()["routing"]["peers"]
        paths.update({(name, p["name"]): p["mode"] for p in peers})
        via = ", ".join(f"{p['name']} {p['mode']}" for p in peers)
        print(f"  {name}  {node_ip(name):13} pod CIDR {pod_cidr(name):14} podnet-{NETWORK[name]:7} "
              f"agent pid {node.agent.pid}, routes to {via}")
    return paths


def _ping(pod: ClusterPod, addr: str) -> bool:
    """One ping, and a second if it got no answer (on a busy machine a first packet that waits on
    neighbour resolution can miss the deadline; a missing route misses both)."""
    for _ in range(2):
        argv = netns_exec(pod.netns, "ping", "-n", "-q", "-c", "1", "-W", "2", addr)
        if subprocess.run(argv, capture_output=True, check=False).returncode == 0:
            return True
    return False


def _ping_matrix(pods: Sequence[ClusterPod], addrs: Mapping[str, str],
                 paths: Mapping[tuple[str, str], str]) -> bool:
    pairs = [(s, d) for s in pods for d in pods]
    got = dict(zip(pairs, _each(lambda sd: _ping(sd[0], addrs[sd[1].name]), pairs), strict=True))
    width = max(len(p.name) for p in pods) + 2
    print("\nping matrix (row pings column): ✓ answered, ✗ no answer, and the path: local (same node), "
          "host-gw or vxlan")
    print((" " * width + "".join(p.name.ljust(width) for p in pods)).rstrip())
    for src in pods:
        cells = [f"{'✓' if got[(src, d)] else '✗'} {paths.get((src.node, d.node), 'local')}".ljust(width)
                 for d in pods]
        print((src.name.ljust(width) + "".join(cells)).rstrip())
    return all(got.values())


def _leave_cluster(pods: Sequence[ClusterPod]) -> bool:
    """Every pod pings the router, which has no route to any pod CIDR: an answer proves the node
    masqueraded the pod's traffic leaving the cluster."""
    got = _each(lambda p: _ping(p, ROUTER), pods)
    print(f"\nevery pod pings the router {ROUTER}, outside the cluster (it has no route to the pods; "
          "the nodes masquerade):")
    print("  " + "  ".join(f"{p.name} {'✓' if ok else '✗'}" for p, ok in zip(pods, got, strict=True)))
    return all(got)


def _service_manifests(endpoints: Sequence[ClusterPod], addrs: Mapping[str, str]) -> list[dict[str, Any]]:
    ports = [{"name": "http", "port": PORT, "protocol": "TCP"}]
    return [{"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": NAMESPACE, "name": SERVICE},
             "spec": {"type": "ClusterIP", "clusterIP": SERVICE_IP, "clusterIPs": [SERVICE_IP],
                      "ipFamilies": ["IPv4"], "ports": [{**ports[0], "targetPort": PORT}]}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
             "metadata": {"namespace": NAMESPACE, "name": f"{SERVICE}-1",
                          "labels": {"kubernetes.io/service-name": SERVICE}},
             "endpoints": [{"addresses": [addrs[p.name]], "conditions": {"ready": True}, "nodeName": p.node}
                           for p in endpoints],
             "ports": ports}]


def _service(nodes: Mapping[str, ClusterNode], manifests: Path, pods: Sequence[ClusterPod],
             addrs: Mapping[str, str], probe: Probers) -> bool:
    endpoints = [p for p in pods if p.role == "db"]
    write_manifest(manifests, "service", _service_manifests(endpoints, addrs))
    for node in nodes.values():
        node.agent.wait(lambda s: s["services"]["proxied"] == 1
                        and s["services"]["endpoints"] == len(endpoints), 10.0, "proxy the Service")
    where = ", ".join(f"{p.name} on {p.node}" for p in endpoints)
    print(f"\nService {NAMESPACE}/{SERVICE}: ClusterIP {SERVICE_IP} port {PORT}, endpoints {where}")
    answers = Counter(a or "no answer" for a in probe.connect(SERVICE_CLIENT, [SERVICE_IP] * SERVICE_TRIES))
    client_node = next(p.node for p in pods if p.name == SERVICE_CLIENT)
    print(f"{SERVICE_CLIENT} (on {client_node}) connects {SERVICE_TRIES} times to {SERVICE_IP}:{PORT}; "
          "answered by " + ", ".join(f"{name} {n}x" for name, n in sorted(answers.items())))
    return set(answers) == {p.name for p in endpoints}


def _policy(nodes: Mapping[str, ClusterNode], manifests: Path, pods: Sequence[ClusterPod],
            probe: Probers) -> bool:
    roles = {p.name: p.role for p in pods}
    ok = check_matrix("no NetworkPolicy: every pod reaches every pod", probe, roles, False)
    print("\nwriting a NetworkPolicy into the manifest directory every agent reads:")
    text = yaml.safe_dump(policy_manifest(), sort_keys=False, default_flow_style=None)
    print("  " + text.rstrip().replace("\n", "\n  "))
    _write_all(nodes, manifests, "policy", [policy_manifest()], "apply the policy")
    ok &= check_matrix(f"with NetworkPolicy {POLICY}: only app=frontend pods reach app=db pods, "
                       "whatever their node", probe, roles, True)
    _explain(nodes["n1"].agent, "backend-n3", "db-n1")
    return ok


def _explain(agent: AgentProcess, src: str, dst: str) -> None:
    print(f"\n$ podnet policy explain {NAMESPACE}/{src} {NAMESPACE}/{dst} {PORT}/TCP  (asked of "
          f"{agent.node_name}'s agent)")
    print(agent.explain(f"{NAMESPACE}/{src}", f"{NAMESPACE}/{dst}", f"{PORT}/TCP"))


def _leftovers(nodes: Mapping[str, ClusterNode]) -> list[str]:
    left = []
    for node in nodes.values():
        left += [f"IP file {node.name}/{p.name}" for p in (node.work / "ipam").glob("*/*")
                 if p.name[0].isdigit()]
        left += [f"cache entry {node.name}/{p.name}" for p in (node.work / "cache" / "results").glob("*")]
    return left


def show_cluster(stack: ExitStack, work: Path, tag: str) -> bool:
    """Build the cluster on ``stack`` (everything on it is undone when it closes), show it; whether
    every check held."""
    manifests = work / "manifests"
    manifests.mkdir()
    netns = wire_underlay(stack, tag)
    pods = _make_pods(stack, tag)
    write_manifest(manifests, "nodes", [node_manifest(n) for n in NODES])
    write_manifest(manifests, "pods", _manifests(pods, {}))  # Pending, as kubelet's Pods are before ADD
    nodes = stack.enter_context(running_nodes(netns, work, manifests))
    print(f"three nodes, each running podnet daemon and podnet agent, reading {manifests}:")
    paths = _print_nodes(nodes)
    addrs = _add_pods(nodes, pods)
    print("pods added by podnet's runtime through each node's daemon, with the config its agent wrote:")
    for p in pods:
        print(f"  {p.node}  {NAMESPACE}/{p.name:12} app={p.role:9} {addrs[p.name]}")
    _write_all(nodes, manifests, "pods", _manifests(pods, addrs), "read the pods' addresses")
    pings_ok = _ping_matrix(pods, addrs, paths) & _leave_cluster(pods)
    with probers({p.name: p.netns for p in pods}, addrs) as probe:
        service_ok = _service(nodes, manifests, pods, addrs, probe)
        policy_ok = _policy(nodes, manifests, pods, probe)
    _each(lambda p: _cni(nodes[p.node], "del", p), pods)
    leaked = _leftovers(nodes)
    print(f"\nDEL done for every pod; left behind: {', '.join(leaked) or 'nothing'}")
    print("every pair pings, and every pod reaches the router" if pings_ok else "SOME PINGS FAILED")
    print("the Service answered from both nodes" if service_ok else "THE SERVICE DID NOT ANSWER FROM BOTH")
    print("every TCP matrix matches the policy in force" if policy_ok else "SOME TCP CELLS ARE WRONG")
    print("stopping agents and daemons; removing namespaces and temporary files")
    return pings_ok and service_ok and policy_ok and not leaked
