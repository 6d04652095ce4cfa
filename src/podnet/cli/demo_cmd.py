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


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="live demo in throw-away namespaces",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pods", type=int, default=3, help="number of pod namespaces (default 3)")
    p.add_argument("--cni-path", default=GO_PLUGINS, help=f"plugin directory (default {GO_PLUGINS})")
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


def _write_configs(conf_dir: Path, data_dir: Path) -> None:
    bridge = {
        "cniVersion": "1.0.0", "name": "demo-bridge",
        "plugins": [{
            "type": "bridge", "bridge": "pndemo0", "isGateway": True,
            "ipam": {"type": "host-local", "dataDir": str(data_dir),
                     "ranges": [[{"subnet": SUBNET}]]},
        }],
    }
    loopback = {"cniVersion": "1.0.0", "name": "demo-lo", "plugins": [{"type": "loopback"}]}
    (conf_dir / "10-demo-bridge.conflist").write_text(json.dumps(bridge, indent=2))
    (conf_dir / "05-demo-lo.conflist").write_text(json.dumps(loopback, indent=2))


class Demo:
    def __init__(self, node: str, conf_dir: Path, cache_dir: Path, cni_path: str) -> None:
        self.node = node
        self.env = dict(os.environ, NETCONFPATH=str(conf_dir), CNI_PATH=cni_path,
                        CNI_CACHE_DIR=str(cache_dir))

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


def _check_tools(cni_path: str) -> str | None:
    if os.geteuid() != 0:
        return "podnet demo needs root (it creates network namespaces)"
    if shutil.which("ip") is None:
        return "podnet demo needs iproute2's 'ip' (make demo installs it)"
    for plugin in ("bridge", "host-local", "loopback"):
        if not os.access(os.path.join(cni_path, plugin), os.X_OK):
            return f"plugin {plugin} not found in {cni_path} (make demo installs containernetworking-plugins)"
    return None


def _attach_all(demo: Demo, pods: Sequence[str]) -> dict[str, str]:
    addrs = {}
    for pod in pods:
        demo.cni("add", "demo-lo", pod, ifname="lo")
        result = json.loads(demo.cni("add", "demo-bridge", pod))
        addrs[pod] = result["ips"][0]["address"].split("/")[0]
        print(f"  {pod}: eth0 {result['ips'][0]['address']} via {result['ips'][0].get('gateway', '-')}")
    return addrs


def _detach_all(demo: Demo, pods: Sequence[str]) -> None:
    for pod in pods:
        demo.cni("check", "demo-bridge", pod)
        demo.cni("del", "demo-bridge", pod)
        demo.cni("del", "demo-lo", pod, ifname="lo")


def run(ns: argparse.Namespace) -> int:
    problem = _check_tools(ns.cni_path)
    if problem:
        print(f"podnet demo: {problem}", file=sys.stderr)
        return 1
    tag = str(os.getpid())
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="podnet-demo-")))
        for sub in ("conf", "cache", "ipam"):
            (work / sub).mkdir()
        _write_configs(work / "conf", work / "ipam")
        node = stack.enter_context(_namespace(f"pndemo-node-{tag}"))
        pods = [stack.enter_context(_namespace(f"pndemo-pod{i}-{tag}")) for i in range(1, ns.pods + 1)]
        demo = Demo(node, work / "conf", work / "cache", ns.cni_path)
        print(f"node namespace {node}; pods attached by podnet's runtime with the Go reference plugins:")
        addrs = _attach_all(demo, pods)
        all_ok = _print_matrix(pods, addrs)
        _detach_all(demo, pods)
        ipam_dir = work / "ipam" / "demo-bridge"
        left = sorted(os.listdir(ipam_dir)) if ipam_dir.exists() else []
        leaked = [n for n in left if n[0].isdigit()]
        print(f"\nCHECK and DEL done for every pod; IP reservations left: {leaked or 'none'}")
        print("removing namespaces and temporary files")
    print("every pair reachable" if all_ok else "SOME PAIRS UNREACHABLE")
    return 0 if all_ok and not leaked else 1
