"""The node the service kernel tests share: a node namespace with a bridge (10.244.0.1/24), three
endpoint pods serving TCP 8080 and UDP 5353 (netprobe.py), and a client pod."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from nsutil import Netns, NetnsFactory

PROBE = str(Path(__file__).parent / "netprobe.py")
ENDPOINTS = {"p0": "10.244.0.10", "p1": "10.244.0.11", "p2": "10.244.0.12"}
CLIENT = ("c0", "10.244.0.20")
ADDRESSES = {**ENDPOINTS, CLIENT[0]: CLIENT[1]}


@dataclass
class Bridged:
    node: Netns
    pods: dict[str, Netns]  # the endpoints and the client, by name

    @property
    def client(self) -> Netns:
        return self.pods[CLIENT[0]]


def wire(make: NetnsFactory, *, node_default_route: bool = False) -> Bridged:
    """Build it (the factory removes it all). ``node_default_route``: a default route on the node
    (its own connections to a service address need some route before the output hook DNATs them)."""
    node = make("node")
    node.sh("set -e; sysctl -qw net.ipv4.ip_forward=1; ip link add br0 type bridge mcast_snooping 0;"
            "ip addr add 10.244.0.1/24 dev br0; ip link set br0 up")
    if node_default_route:
        node.sh("set -e; ip link add up0 type veth peer name up1; ip link set up0 up; ip link set up1 up;"
                "ip route add default dev up0")
    pods = {name: make(name) for name in ADDRESSES}
    for i, (name, ns) in enumerate(pods.items()):
        node.sh(f"set -e; ip link add vp{i} type veth peer name eth0 netns {ns.name};"
                f"ip link set vp{i} master br0 up")
        ns.sh(f"set -e; ip addr add {ADDRESSES[name]}/24 dev eth0; ip link set eth0 up;"
              "ip route add default via 10.244.0.1")
    for name in ENDPOINTS:
        argv = [sys.executable, PROBE, "serve", name, "8080", "5353"]
        proc = pods[name].popen(argv, stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready", name
    return Bridged(node, pods)
