"""The cluster demo's machines: three node namespaces and the network between them, and on each node
the processes a podnet DaemonSet runs (``podnet daemon`` and ``podnet agent``).

n1 and n2 share an underlay bridge (its own namespace) in 192.168.50.0/24; n3 sits in
192.168.51.0/24 behind a router namespace, so n1 and n2 reach each other's pods by plain routes
(host-gw) and n3's over VXLAN. Each node's Node object carries its pod CIDR 10.244.<i>.0/24 and its
InternalIP; each agent reads them from one manifest directory, writes its node's CNI config into its
own conf dir and routes the other nodes' pod CIDRs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podnet.cli.demo_agent import AgentProcess
from podnet.cli.demo_netns import end_process, ip, namespace, netns_exec

NODES = ("n1", "n2", "n3")
BEHIND_ROUTER = "n3"
NETWORK = {"n1": "bridge", "n2": "routed", "n3": "bridge"}  # each agent's --cni-network
UNDERLAY, FAR = "192.168.50", "192.168.51"  # n1 .1, n2 .2, router .254 | n3 .3, router .254
ROUTER = f"{UNDERLAY}.254"
ROUTE_CHECK_SECONDS = 1.0
START_SECONDS = 30.0


def node_ip(node: str) -> str:
    i = node[1:]
    return f"{FAR}.{i}" if node == BEHIND_ROUTER else f"{UNDERLAY}.{i}"


def pod_cidr(node: str) -> str:
    return f"10.244.{node[1:]}.0/24"


def node_manifest(node: str) -> dict[str, Any]:
    """The Node object the control plane would hold: the pod CIDR it gave out, the node's address."""
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node},
            "spec": {"podCIDR": pod_cidr(node), "podCIDRs": [pod_cidr(node)]},
            "status": {"addresses": [{"type": "InternalIP", "address": node_ip(node)}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}


# -- the underlay ----------------------------------------------------------------------------------

def _in(netns: str, *argv: str) -> None:
    done = subprocess.run(netns_exec(netns, *argv), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} in {netns}: {done.stderr.strip()}")


def _veth(a: str, a_name: str, b: str, b_name: str) -> None:
    ip("-n", a, "link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", b)


def _address(netns: str, dev: str, cidr: str) -> None:
    ip("-n", netns, "addr", "add", cidr, "dev", dev)
    ip("-n", netns, "link", "set", dev, "up")


def _port(bridge_ns: str, port: str) -> None:
    ip("-n", bridge_ns, "link", "set", port, "master", "br0", "up")


def wire_underlay(stack: ExitStack, tag: str) -> dict[str, str]:
    """The node namespaces (node name -> namespace name) wired as the module says; every namespace
    is registered on ``stack`` to be deleted."""
    bridge = stack.enter_context(namespace(f"pndemo-ul-{tag}"))
    router = stack.enter_context(namespace(f"pndemo-rt-{tag}"))
    nodes = {n: stack.enter_context(namespace(f"pndemo-{n}-{tag}")) for n in NODES}
    ip("-n", bridge, "link", "add", "br0", "type", "bridge")
    ip("-n", bridge, "link", "set", "br0", "up")
    _veth(router, "eth0", bridge, "u0")
    _port(bridge, "u0")
    _address(router, "eth0", f"{UNDERLAY}.254/24")
    _veth(router, "eth1", nodes[BEHIND_ROUTER], "eth0")
    _address(router, "eth1", f"{FAR}.254/24")
    for name, netns in [("router", router), *nodes.items()]:
        _in(netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        if name == "router":
            continue
        if name == BEHIND_ROUTER:
            _address(netns, "eth0", f"{node_ip(name)}/24")
            ip("-n", netns, "route", "add", "default", "via", f"{FAR}.254")
        else:
            _veth(netns, "eth0", bridge, f"u{name[1:]}")
            _port(bridge, f"u{name[1:]}")
            _address(netns, "eth0", f"{node_ip(name)}/24")
            ip("-n", netns, "route", "add", f"{FAR}.0/24", "via", f"{UNDERLAY}.254")
    return nodes


# -- a node's processes ----------------------------------------------------------------------------

class NodeDaemon:
    """``podnet daemon`` in a node namespace, serving the node's CNI calls warm; stopped by PID."""

    def __init__(self, netns: str, sock: Path, log: Path, lock_dir: Path) -> None:
        self.sock, self.log = sock, log
        # The plugins' lock files go with the demo's other files, not into the machine's /run/podnet.
        self.env = dict(os.environ, PODNET_LOCK_DIR=str(lock_dir))
        self.argv = netns_exec(netns, sys.executable, "-m", "podnet.cli.main", "daemon",
                               "--socket", str(sock), "--log-file", str(log), "--log-level", "warning")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # Its own session: a Ctrl-C reaches the demo alone, which stops the daemon by PID.
        self.proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)

    def wait_ready(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._accepts():
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"podnet daemon exited; its log: {self.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"podnet daemon not ready within {seconds:.0f} s")
            time.sleep(0.05)

    def _accepts(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(str(self.sock))
            except OSError:
                return False
        return True

    def stop(self) -> None:
        """SIGTERM (it finishes calls in flight), SIGKILL if it does not end in time."""
        proc, self.proc = self.proc, None
        end_process(proc, 15)


@dataclass
class ClusterNode:
    name: str
    netns: str
    work: Path  # its own directory: CNI config, IPAM data, result cache, locks, sockets, logs
    agent: AgentProcess
    daemon: NodeDaemon

    @property
    def conf_dir(self) -> Path:
        return self.work / "net.d"

    def cni_env(self) -> dict[str, str]:
        """What kubelet's runtime would hand ``podnet cni`` on this node: the conf dir the agent
        writes, podnet's plugins (their calls go to this node's daemon), and this node's agent to
        tell of each new pod. Locks and cache stay in the demo's directory: nothing is left behind."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env.update(NETCONFPATH=str(self.conf_dir), CNI_PATH=str(Path(sys.executable).parent),
                   CNI_CACHE_DIR=str(self.work / "cache"), PODNET_LOCK_DIR=str(self.work / "locks"),
                   PODNET_SOCKET=str(self.daemon.sock), PODNET_AGENT_SOCKET=self.agent.socket)
        return env


def _node(name: str, netns: str, work: Path, manifests: Path) -> ClusterNode:
    mine = work / name
    for sub in ("net.d", "ipam", "cache", "locks"):
        (mine / sub).mkdir(parents=True)
    # As a DaemonSet runs it: its node name, routes to the other nodes, its own CNI config from the
    # pod CIDR of its Node (no --pod-cidr: the agent takes the range from the Node), masquerade on.
    extra = ["--cni-conf-dir", str(mine / "net.d"), "--cni-network", NETWORK[name],
             "--cni-data-dir", str(mine / "ipam"), "--routing", "auto",
             "--route-check-period", str(ROUTE_CHECK_SECONDS), "--masquerade", "on"]
    agent = AgentProcess(netns, manifests, (), mine / "agent.sock", mine / "agent.log", name, extra)
    daemon = NodeDaemon(netns, mine / "podnet.sock", mine / "daemon.log", mine / "locks")
    return ClusterNode(name, netns, mine, agent, daemon)


def _routing_everyone(status: dict[str, Any]) -> bool:
    """Synced, its conflist written, a route (host-gw or VXLAN) in place to every other node."""
    peers = status.get("routing", {}).get("peers", [])
    return (bool(status["synced"]) and status["generation_applied"] == status["generation"]
            and status.get("cni_config", {}).get("state") == "current"
            and len(peers) == len(NODES) - 1 and all(p["state"] == "ok" for p in peers))


@contextmanager
def running_nodes(nodes: dict[str, str], work: Path, manifests: Path) -> Iterator[dict[str, ClusterNode]]:
    """Every node's daemon and agent, started together, stopped by PID when the block ends."""
    cluster = {n: _node(n, netns, work, manifests) for n, netns in nodes.items()}
    try:
        for node in cluster.values():
            node.daemon.start()
            node.agent.launch()
        for node in cluster.values():
            node.daemon.wait_ready(START_SECONDS)
            node.agent.wait(_routing_everyone, START_SECONDS, "write its CNI config and route every node")
        yield cluster
    finally:
        for node in cluster.values():
            node.agent.stop()
            node.daemon.stop()
