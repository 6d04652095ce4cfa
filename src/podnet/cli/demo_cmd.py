"""``podnet demo``: a live demonstration in throw-away namespaces on this machine.

By default, a three-node cluster (:mod:`podnet.cli.demo_cluster`): pods on every node, the ping
matrix across nodes over host-gw routes and VXLAN, a Service with endpoints on two nodes and a
NetworkPolicy, all through podnet's daemon and agent on each node.

``--single-node``: one "node" namespace stands in for the host; pod namespaces are attached to a
bridge network, a routed network and a loopback network by podnet's runtime (``podnet cni``, run
inside the node namespace) driving podnet's plugins (``--go``: Debian's Go reference plugins,
bridge only). The node agent (``podnet agent``) runs in the node namespace on a manifest directory
that lists the pods, as the Kubernetes API would. The demo prints each pod's address and a ping
matrix, then a TCP connectivity matrix before, with and after a NetworkPolicy, checks and deletes
every attachment.

Either way it removes everything it made (namespaces, processes, temporary files), also when it
fails or is interrupted. The machine's own network namespace is never changed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podnet.cli.demo_agent import (
    NAMESPACE,
    AgentError,
    AgentProcess,
    namespace_manifest,
    pod_manifest,
    running_agent,
    write_manifest,
)
from podnet.cli.demo_cluster import show_cluster
from podnet.cli.demo_netns import namespace, signals
from podnet.cli.demo_policy import ROLES, policy_tour
from podnet.cli.demo_probe import ProbeError, probers

GO_PLUGINS = "/usr/lib/cni"
SUBNET = "10.250.0.0/24"
ROUTED_SUBNET = "10.251.0.0/24"
PODNET_BIN = str(Path(sys.executable).parent)
SHORT = {"demo-bridge": "br", "demo-routed": "rt"}


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="live demo in throw-away namespaces",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--single-node", action="store_true",
                   help="the one-node demo (bridge and routed pods, policy explain, CHECK and DEL) "
                   "instead of the three-node cluster")
    p.add_argument("--pods", type=_pod_count, default=None,
                   help="pods per network, 1 to 9 (default 3; implies --single-node)")
    p.add_argument("--go", action="store_true",
                   help=f"use Debian's Go reference plugins from {GO_PLUGINS} instead of podnet's own "
                   "(implies --single-node)")
    p.set_defaults(func=run)


def _pod_count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 9:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number from 1 to 9")
    return int(text)


@dataclass(frozen=True)
class DemoPod:
    name: str  # its Kubernetes name, in namespace NAMESPACE
    role: str  # its label app=ROLE
    netns: str
    network: str


def _go_networks(data_dir: Path) -> list[dict[str, Any]]:
    bridge = {"type": "bridge", "bridge": "pndemo0", "isGateway": True, "isDefaultGateway": True,
              "ipam": {"type": "host-local", "dataDir": str(data_dir), "ranges": [[{"subnet": SUBNET}]]}}
    return [{"cniVersion": "1.0.0", "name": "demo-lo", "plugins": [{"type": "loopback"}]},
            {"cniVersion": "1.0.0", "name": "demo-bridge", "plugins": [bridge]}]


def _podnet_networks(data_dir: Path) -> list[dict[str, Any]]:
    def ipam(subnet: str) -> dict[str, Any]:
        return {"type": "podnet-host-local", "dataDir": str(data_dir), "ranges": [[{"subnet": subnet}]]}

    bridge = {"type": "podnet-bridge", "bridge": "pndemo0", "isGateway": True, "isDefaultGateway": True,
              "ipam": ipam(SUBNET)}
    routed = {"type": "podnet-routed", "ipam": ipam(ROUTED_SUBNET)}
    return [{"cniVersion": "1.1.0", "name": "demo-lo", "plugins": [{"type": "podnet-loopback"}]},
            {"cniVersion": "1.1.0", "name": "demo-bridge", "plugins": [bridge]},
            {"cniVersion": "1.1.0", "name": "demo-routed", "plugins": [routed]}]


def _write_configs(conf_dir: Path, networks: list[dict[str, Any]]) -> None:
    for i, net in enumerate(networks):
        (conf_dir / f"{10 + i}-{net['name']}.conflist").write_text(json.dumps(net, indent=2))


class Demo:
    def __init__(self, node: str, work: Path, cni_path: str, agent_socket: str) -> None:
        self.node = node
        # The plugins' lock files go with the demo's other temporary files, not to the node's
        # /run/podnet: the demo leaves nothing behind. The agent socket tells podnet's plugins
        # where to announce each new pod, so the agent lets its traffic through.
        self.env = dict(os.environ, NETCONFPATH=str(work / "conf"), CNI_PATH=cni_path,
                        CNI_CACHE_DIR=str(work / "cache"), PODNET_LOCK_DIR=str(work / "locks"),
                        PODNET_AGENT_SOCKET=agent_socket)

    def cni(self, command: str, network: str, pod: DemoPod, ifname: str = "eth0") -> str:
        # As kubelet does: the pod's name in CNI_ARGS, which is how the agent knows whose address it is.
        args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE={NAMESPACE};K8S_POD_NAME={pod.name}"
        argv = ["ip", "netns", "exec", self.node, sys.executable, "-m", "podnet.cli.main",
                "cni", command, network, f"/run/netns/{pod.netns}", "--ifname", ifname, "--args", args]
        proc = subprocess.run(argv, env=self.env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"podnet cni {command} {network} {pod.name} failed: {proc.stderr.strip()}")
        return proc.stdout


def _ping(pod: DemoPod, addr: str) -> bool:
    argv = ["ip", "netns", "exec", pod.netns, "ping", "-n", "-q", "-c", "1", "-W", "2", addr]
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def _print_matrix(pods: Sequence[DemoPod], addrs: Mapping[str, str]) -> bool:
    width = max(len(p.name) for p in pods) + 2
    print("\nping matrix (row pings column):")
    print((" " * width + "".join(p.name.ljust(width) for p in pods)).rstrip())
    all_ok = True
    for src in pods:
        cells = []
        for dst in pods:
            ok = _ping(src, addrs[dst.name])
            all_ok &= ok
            cells.append(("ok" if ok else "FAIL").ljust(width))
        print((src.name.ljust(width) + "".join(cells)).rstrip())
    return all_ok


def _check_tools(go: bool) -> str | None:
    if os.geteuid() != 0:
        return "podnet demo needs root (it creates network namespaces)"
    if shutil.which("ip") is None:
        return "podnet demo needs iproute2's 'ip' (make demo installs it)"
    cni_path, plugins = (GO_PLUGINS, ("bridge", "host-local", "loopback")) if go else (
        PODNET_BIN, ("podnet-bridge", "podnet-routed", "podnet-host-local", "podnet-loopback"))
    for plugin in plugins:
        if not os.access(os.path.join(cni_path, plugin), os.X_OK):
            return f"plugin {plugin} not found in {cni_path} (make demo installs it)"
    return None


def _attach(demo: Demo, pods: Sequence[DemoPod]) -> dict[str, str]:
    addrs = {}
    for pod in pods:
        demo.cni("add", "demo-lo", pod, ifname="lo")
        result = json.loads(demo.cni("add", pod.network, pod))
        ip = result["ips"][0]
        addrs[pod.name] = ip["address"].split("/")[0]
        host_if = next((i["name"] for i in result.get("interfaces", []) if not i.get("sandbox")
                        and i["name"] != "pndemo0"), "-")
        print(f"  {pod.network:12} {NAMESPACE}/{pod.name:12} eth0 {ip['address']:16} host side {host_if:16}"
              f" netns {pod.netns}")
    return addrs


def _addr_assign_types(node: str, names: Sequence[str]) -> dict[str, str]:
    """The kernel's record of who chose each MAC: 3 = set explicitly (udev leaves it alone)."""
    out = {}
    for name in names:
        proc = subprocess.run(["ip", "netns", "exec", node, "cat", f"/sys/class/net/{name}/addr_assign_type"],
                              capture_output=True, text=True, check=False)
        out[name] = proc.stdout.strip() or "?"
    return out


def _host_veths(node: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", node, "ip", "-j", "link", "show", "type", "veth"],
                         capture_output=True, text=True, check=False).stdout
    return [link["ifname"] for link in json.loads(out or "[]")]


def _detach(demo: Demo, pods: Sequence[DemoPod]) -> None:
    for pod in pods:
        demo.cni("check", pod.network, pod)
        demo.cni("del", pod.network, pod)
        demo.cni("del", "demo-lo", pod, ifname="lo")


def _leftovers(work: Path, node: str) -> list[str]:
    left = [f"IP file {p.parent.name}/{p.name}" for p in (work / "ipam").glob("*/*") if p.name[0].isdigit()]
    left += [f"cache entry {p.name}" for p in (work / "cache" / "results").glob("*")]
    left += [f"veth {name}" for name in _host_veths(node)]
    return left


def _make_pods(stack: ExitStack, networks: Sequence[str], per_network: int, tag: str) -> list[DemoPod]:
    """Pods ``frontend-br``, ``backend-br``, ``db-br``, ... labelled app=frontend, backend, db."""
    pods = []
    for net in networks:
        for i in range(per_network):
            role, n = ROLES[i % len(ROLES)], i // len(ROLES)
            netns = stack.enter_context(namespace(f"pndemo-{net[5:]}{i + 1}-{tag}"))
            pods.append(DemoPod(f"{role}-{SHORT[net]}{n + 1 if n else ''}", role, netns, net))
    return pods


def _pod_manifests(pods: Sequence[DemoPod], addrs: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    return [namespace_manifest(), *(pod_manifest(p.name, {"app": p.role}, (addrs or {}).get(p.name))
                                    for p in pods)]


def _bridge_netfilter(node: str) -> None:
    """Two pods on one bridge are switched, not routed: br_netfilter hands their packets to the
    forward hook where the policy table is (set in the demo's node namespace only)."""
    setting = "net.bridge.bridge-nf-call-iptables=1"
    done = subprocess.run(["ip", "netns", "exec", node, "sysctl", "-q", "-w", setting],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"note: cannot set {setting} ({done.stderr.strip()}): without br_netfilter the policy "
              "cannot see traffic between pods of one bridge")


def _wire(stack: ExitStack, ns: argparse.Namespace,
          work: Path) -> tuple[AgentProcess, Demo, list[DemoPod], dict[str, str]]:
    """Namespaces, the agent on a manifest directory that lists the pods, then the pods' ADDs."""
    networks = _go_networks(work / "ipam") if ns.go else _podnet_networks(work / "ipam")
    _write_configs(work / "conf", networks)
    tag = str(os.getpid())
    node = stack.enter_context(namespace(f"pndemo-node-{tag}"))
    pods = _make_pods(stack, [n["name"] for n in networks if n["name"] != "demo-lo"], ns.pods or 3, tag)
    _bridge_netfilter(node)
    manifests = work / "manifests"
    write_manifest(manifests, "pods", _pod_manifests(pods))
    agent = stack.enter_context(running_agent(node, manifests, [SUBNET, ROUTED_SUBNET], work))
    print(f"node namespace {node}: node agent running (pid {agent.pid}), reading {manifests};")
    print(f"  it holds back pod addresses of {SUBNET} and {ROUTED_SUBNET} until it knows their pod")
    who = "Debian's Go reference plugins" if ns.go else "podnet's own plugins"
    print(f"pods attached by podnet's runtime with {who}:")
    demo = Demo(node, work, GO_PLUGINS if ns.go else PODNET_BIN, agent.socket)
    addrs = _attach(demo, pods)
    # The kubelet's part: the pods' addresses into their status (the Go plugins do not tell the agent).
    generation = agent.status()["generation"]
    write_manifest(manifests, "pods", _pod_manifests(pods, addrs))
    agent.applied_after(generation, "read the pods' addresses")
    return agent, demo, pods, addrs


def _cluster(ns: argparse.Namespace) -> bool:
    return not (ns.single_node or ns.go or ns.pods is not None)


def _show(stack: ExitStack, ns: argparse.Namespace, work: Path) -> bool:
    for sub in ("conf", "cache", "ipam", "manifests"):
        (work / sub).mkdir()
    agent, demo, pods, addrs = _wire(stack, ns, work)
    types = _addr_assign_types(demo.node, _host_veths(demo.node))
    print("\nhost veth MAC origin (addr_assign_type): 1 = random, rewritten by udev's persistent "
          "MAC policy; 3 = set explicitly, left alone")
    print("  " + ", ".join(f"{k}={v}" for k, v in sorted(types.items())))
    all_ok = _print_matrix(pods, addrs)
    with probers({p.name: p.netns for p in pods}, addrs) as probe:
        policy_ok = policy_tour(agent, work / "manifests", probe, {p.name: p.role for p in pods})
    _detach(demo, pods)
    leaked = _leftovers(work, demo.node)
    print(f"\nCHECK and DEL done for every pod; left behind: {', '.join(leaked) or 'nothing'}")
    print("every pair pings" if all_ok else "SOME PAIRS DO NOT PING")
    print("every TCP matrix matches the policy in force" if policy_ok else "SOME TCP CELLS ARE WRONG")
    print("stopping the agent; removing namespaces and temporary files")
    return all_ok and policy_ok and not leaked


def run(ns: argparse.Namespace) -> int:
    problem = _check_tools(ns.go)
    if problem:
        print(f"podnet demo: {problem}", file=sys.stderr)
        return 1
    start = time.monotonic()
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ExitStack() as stack:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="podnet-demo-")))
            with signals():
                ok = show_cluster(stack, work, str(os.getpid())) if _cluster(ns) else _show(stack, ns, work)
    except KeyboardInterrupt:
        print("\npodnet demo: interrupted; everything it made is removed", file=sys.stderr)
        return 130
    except (AgentError, ProbeError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"podnet demo: {exc}\neverything it made is removed", file=sys.stderr)
        return 1
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    print(f"demo done in {time.monotonic() - start:.0f} s")
    return 0 if ok else 1
