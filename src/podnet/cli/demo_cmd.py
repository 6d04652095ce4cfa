"""``podnet demo``: a live demonstration in throw-away namespaces on this machine.

A "node" namespace stands in for the host; pod namespaces are attached to a bridge network and a
loopback network by podnet's runtime (``podnet cni``, run inside the node namespace) driving
Debian's Go reference plugins. The demo prints each pod's address and a ping matrix, checks and
deletes every attachment, and removes everything it made, also when it fails or is interrupted.
The machine's own network namespace is never changed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

GO_PLUGINS = "/usr/lib/cni"
SUBNET = "10.250.0.0/24"
ROUTED_SUBNET = "10.251.0.0/24"
PODNET_BIN = str(Path(sys.executable).parent)


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="live demo in throw-away namespaces",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pods", type=int, default=3, help="pods per network (default 3)")
    p.add_argument("--go", action="store_true",
                   help=f"use Debian's Go reference plugins from {GO_PLUGINS} instead of podnet's own")
    p.set_defaults(func=run)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@contextmanager
def _namespace(name: str) -> Iterator[str]:
    _ip("netns", "add", name)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


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
    def __init__(self, node: str, conf_dir: Path, cache_dir: Path, cni_path: str) -> None:
        self.node = node
        # The plugins' lock files go with the demo's other temporary files, not to the node's
        # /run/podnet: the demo leaves nothing behind.
        self.env = dict(os.environ, NETCONFPATH=str(conf_dir), CNI_PATH=cni_path,
                        CNI_CACHE_DIR=str(cache_dir), PODNET_LOCK_DIR=str(cache_dir.parent / "locks"))

    def cni(self, command: str, network: str, pod: str, ifname: str = "eth0") -> str:
        argv = ["ip", "netns", "exec", self.node, sys.executable, "-m", "podnet.cli.main",
                "cni", command, network, f"/run/netns/{pod}", "--ifname", ifname]
        proc = subprocess.run(argv, env=self.env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"podnet cni {command} {network} {pod} failed: {proc.stderr.strip()}")
        return proc.stdout


def _ping(pod: str, addr: str) -> bool:
    argv = ["ip", "netns", "exec", pod, "ping", "-n", "-q", "-c", "1", "-W", "2", addr]
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def _print_matrix(pods: Sequence[str], addrs: dict[str, str]) -> bool:
    width = max(len(p) for p in pods) + 2
    print("\nping matrix (row pings column):")
    print(" " * width + "".join(p.ljust(width) for p in pods))
    all_ok = True
    for src in pods:
        cells = []
        for dst in pods:
            ok = _ping(src, addrs[dst])
            all_ok &= ok
            cells.append(("ok" if ok else "FAIL").ljust(width))
        print(src.ljust(width) + "".join(cells))
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


def _attach(demo: Demo, network: str, pods: Sequence[str]) -> dict[str, str]:
    addrs = {}
    for pod in pods:
        demo.cni("add", "demo-lo", pod, ifname="lo")
        result = json.loads(demo.cni("add", network, pod))
        ip = result["ips"][0]
        addrs[pod] = ip["address"].split("/")[0]
        host_if = next((i["name"] for i in result.get("interfaces", []) if not i.get("sandbox")
                        and i["name"] != "pndemo0"), "-")
        print(f"  {network:12} {pod}: eth0 {ip['address']:16} host side {host_if}")
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


def _detach(demo: Demo, network: str, pods: Sequence[str]) -> None:
    for pod in pods:
        demo.cni("check", network, pod)
        demo.cni("del", network, pod)
        demo.cni("del", "demo-lo", pod, ifname="lo")


def _leftovers(work: Path, node: str) -> list[str]:
    left = [f"IP file {p.parent.name}/{p.name}" for p in (work / "ipam").glob("*/*") if p.name[0].isdigit()]
    left += [f"cache entry {p.name}" for p in (work / "cache" / "results").glob("*")]
    left += [f"veth {name}" for name in _host_veths(node)]
    return left


def run(ns: argparse.Namespace) -> int:
    problem = _check_tools(ns.go)
    if problem:
        print(f"podnet demo: {problem}", file=sys.stderr)
        return 1
    tag = str(os.getpid())
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="podnet-demo-")))
        for sub in ("conf", "cache", "ipam"):
            (work / sub).mkdir()
        networks = _go_networks(work / "ipam") if ns.go else _podnet_networks(work / "ipam")
        _write_configs(work / "conf", networks)
        node = stack.enter_context(_namespace(f"pndemo-node-{tag}"))
        names = [n["name"] for n in networks if n["name"] != "demo-lo"]
        pods = {net: [stack.enter_context(_namespace(f"pndemo-{net[5:]}{i}-{tag}"))
                      for i in range(1, ns.pods + 1)] for net in names}
        demo = Demo(node, work / "conf", work / "cache", GO_PLUGINS if ns.go else PODNET_BIN)
        who = "Debian's Go reference plugins" if ns.go else "podnet's own plugins"
        print(f"node namespace {node}; pods attached by podnet's runtime with {who}:")
        addrs: dict[str, str] = {}
        for net in names:
            addrs.update(_attach(demo, net, pods[net]))
        types = _addr_assign_types(node, _host_veths(node))
        print("\nhost veth MAC origin (addr_assign_type): 1 = random, rewritten by udev's persistent "
              "MAC policy; 3 = set explicitly, left alone")
        print("  " + ", ".join(f"{k}={v}" for k, v in sorted(types.items())))
        all_ok = _print_matrix([p for net in names for p in pods[net]], addrs)
        for net in names:
            _detach(demo, net, pods[net])
        leaked = _leftovers(work, node)
        print(f"\nCHECK and DEL done for every pod; left behind: {', '.join(leaked) or 'nothing'}")
        print("removing namespaces and temporary files")
    print("every pair reachable" if all_ok else "SOME PAIRS UNREACHABLE")
    return 0 if all_ok and not leaked else 1
