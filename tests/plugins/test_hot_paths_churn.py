"""ADD, CHECK and DEL keep working while the node's tables churn.

The node namespace holds big tables (1,000 addresses, IPv4 and IPv6 routes and neighbours, 150
veth pairs: what a busy node has) and a churn process adds and deletes addresses, routes,
neighbours and links there without pause; another one does the same inside the pod's namespace.
A dump of a whole table then never comes back consistent (the kernel flags it, or two attempts
never agree), so every dump on these paths has to be small: asked by key, or filtered by the
kernel to the one link or table it is about. Every command of every round must succeed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bridgeutil import PODNET_BIN, plugin_env

from kernel.churn import NEIGH_LINK, STABLE_SETUP
from nsutil import Netns, NetnsFactory

pytestmark = pytest.mark.root

ROUNDS = 15
CHURN = Path(__file__).resolve().parent.parent / "kernel" / "churn.py"
CHURN_MODES = "addr+addr6+route+route6+neigh+veth"
PLUGINS = ("podnet-bridge", "podnet-routed", "podnet-loopback")


def batch(ns: Netns, commands: list[str]) -> None:
    ns.run(["ip", "-batch", "-"], input="".join(c + "\n" for c in commands))


def host_local(data_dir: Path, *subnets: str) -> dict[str, Any]:
    return {"type": "podnet-host-local", "dataDir": str(data_dir),
            "ranges": [[{"subnet": s}] for s in subnets]}


def confs(tmp_path: Path) -> dict[str, dict[str, Any]]:
    """Dual stack, the bridge as gateway: every dump these plugins make is exercised."""
    return {
        "podnet-bridge": {"cniVersion": "1.0.0", "name": "hot-bridge", "type": "podnet-bridge",
                          "bridge": "br-hot", "isGateway": True,
                          "ipam": host_local(tmp_path / "b", "10.77.0.0/24", "fd00:77::/64")},
        "podnet-routed": {"cniVersion": "1.0.0", "name": "hot-routed", "type": "podnet-routed",
                          "ipam": host_local(tmp_path / "r", "10.78.0.0/24", "fd00:78::/64")},
        "podnet-loopback": {"cniVersion": "1.0.0", "name": "hot-lo", "type": "podnet-loopback"},
    }


@pytest.fixture
def churning(node: Netns, netns: NetnsFactory) -> Iterator[Netns]:
    """Busy node tables, and churn in the node and in the pod namespace it returns."""
    batch(node, [c for table in ("links", "addresses", "routes", "routes6", "neighbours")
                 for c in STABLE_SETUP[table]])
    pod = netns("pod")
    batch(pod, [f"link add {NEIGH_LINK} type veth peer name {NEIGH_LINK}p", f"link set {NEIGH_LINK} up"])
    writers = []
    for ns in (node, pod):
        proc = ns.popen([sys.executable, str(CHURN), CHURN_MODES, "600"], stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"churning"
        writers.append(proc)
    yield pod
    for proc in writers:  # still churning at the end: the rounds ran under churn throughout
        assert proc.poll() is None, "a churn writer stopped early"


def run(node: Netns, plugin: str, command: str, conf: dict[str, Any], cid: str, pod: Netns,
        ifname: str) -> tuple[int, Any]:
    proc = node.run([str(Path(PODNET_BIN) / plugin)], check=False, input=json.dumps(conf),
                    env=plugin_env(command, cid, pod.path, ifname), timeout=120)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None


@pytest.mark.timeout(900)
def test_add_check_del_succeed_under_churn(node: Netns, churning: Netns, tmp_path: Path) -> None:
    pod = churning
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    for i in range(ROUNDS):
        for plugin, conf in confs(tmp_path).items():
            cid, ifname = f"hot{i}", "lo" if plugin == "podnet-loopback" else "eth0"
            code, result = run(node, plugin, "ADD", conf, cid, pod, ifname)
            steps = [("ADD", code, result)]
            if code == 0:
                code, out = run(node, plugin, "CHECK", {**conf, "prevResult": result}, cid, pod, ifname)
                steps.append(("CHECK", code, out))
            code, out = run(node, plugin, "DEL", conf, cid, pod, ifname)
            steps.append(("DEL", code, out))
            for command, rc, out in steps:
                outcomes[f"{plugin} {command} {'ok' if rc == 0 else 'FAILED'}"] += 1
                if rc != 0:
                    failures.append(f"round {i} {plugin} {command}: {out}")
    print("under churn:", dict(sorted(outcomes.items())))
    assert not failures, "\n".join(failures[:10])
    assert sum(n for k, n in outcomes.items() if k.endswith(" ok")) == ROUNDS * 3 * len(PLUGINS)
