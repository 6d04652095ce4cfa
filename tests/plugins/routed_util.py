"""Helpers for the podnet-routed tests: run the plugin in a node namespace, look into pods, assert
the wiring and that nothing is left."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from nsutil import Netns

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
VENV_BIN = REPO / ".venv" / "bin"
PLUGIN = str(VENV_BIN / "podnet-routed")
ICMP_SWEEP = str(HERE / "icmp_sweep.py")
UDEV_STANDIN = str(HERE / "udev_standin.py")

GW4, GW6 = "169.254.1.1", "fe80::1"
# The node's own addresses (on its lo): what a real node has on its uplink.
NODE_IP4, NODE_IP6 = "192.168.254.1", "fd00:ffff::1"


def give_node_addresses(node: Netns) -> None:
    node.run(["ip", "addr", "add", f"{NODE_IP4}/32", "dev", "lo"])
    node.run(["ip", "addr", "add", f"{NODE_IP6}/128", "dev", "lo"])


def host_local(data_dir: Path | str, *subnets: str, **extra: Any) -> dict[str, Any]:
    return {"type": "podnet-host-local", "dataDir": str(data_dir),
            "ranges": [[{"subnet": s}] for s in subnets], **extra}


def routed_conf(name: str, ipam: dict[str, Any], version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": name, "type": "podnet-routed", "ipam": ipam, **extra}


def plugin_env(command: str, container_id: str = "", netns: str = "", ifname: str = "eth0",
               cni_args: str = "") -> dict[str, str]:
    # This process's environment (minus CNI_*) carries PODNET_SOCKET: daemon or in-process mode.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update(CNI_COMMAND=command, CNI_PATH=str(VENV_BIN), CNI_IFNAME=ifname)
    if container_id:
        env["CNI_CONTAINERID"] = container_id
    if netns:
        env["CNI_NETNS"] = netns
    if cni_args:
        env["CNI_ARGS"] = cni_args
    return env


def run_plugin(node: Netns, command: str, conf: dict[str, Any], container_id: str = "",
               pod: Netns | None = None, *, ifname: str = "eth0", netns: str | None = None,
               cni_args: str = "") -> tuple[int, Any]:
    """Exec podnet-routed inside the node namespace; returns (exit code, parsed stdout or None)."""
    path = netns if netns is not None else (pod.path if pod is not None else "")
    env = plugin_env(command, container_id, path, ifname, cni_args)
    proc = node.run([PLUGIN], input=json.dumps(conf), env=env, check=False)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    out = json.loads(proc.stdout) if proc.stdout.strip() else None
    return proc.returncode, out


def add_ok(node: Netns, conf: dict[str, Any], container_id: str, pod: Netns, **kw: Any) -> dict[str, Any]:
    rc, out = run_plugin(node, "ADD", conf, container_id, pod, **kw)
    assert rc == 0, out
    assert isinstance(out, dict)
    return out


def with_prev(conf: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    return {**conf, "prevResult": result}


# ---- looking into namespaces -------------------------------------------------------------------


def jrun(ns: Netns, *argv: str) -> Any:
    out = ns.run(["ip", "-j", *argv]).stdout
    return json.loads(out) if out.strip() else []


def link(ns: Netns, name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = jrun(ns, "link", "show", "dev", name)
    return found[0]


def addr_assign_type(ns: Netns, name: str) -> int:
    """/sys of the namespace (``ip netns exec`` mounts the namespace's own sysfs)."""
    return int(ns.run(["cat", f"/sys/class/net/{name}/addr_assign_type"]).stdout)


def global_addresses(ns: Netns, ifname: str = "eth0") -> set[str]:
    return {f"{a['local']}/{a['prefixlen']}" for entry in jrun(ns, "addr", "show", "dev", ifname)
            for a in entry.get("addr_info", []) if a.get("scope") == "global"}


def neighbours(ns: Netns, ifname: str = "eth0") -> dict[str, dict[str, Any]]:
    entries = jrun(ns, "neigh", "show", "dev", ifname) + jrun(ns, "-6", "neigh", "show", "dev", ifname)
    return {n["dst"]: n for n in entries}


def routes(ns: Netns, family: int = 4) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = jrun(ns, f"-{family}", "route", "show")
    return out


def host_veths(node: Netns) -> list[str]:
    return sorted(entry["ifname"] for entry in jrun(node, "link", "show", "type", "veth"))


def host_pod_routes(node: Netns) -> list[str]:
    """Node routes that point at a veth (podnet's host veths start with 'pn')."""
    return sorted(f"{r['dst']} dev {r.get('dev')}" for fam in (4, 6) for r in routes(node, fam)
                  if str(r.get("dev", "")).startswith("pn") and not r["dst"].startswith("fe80::"))


def ip_files(data_dir: Path | str, network: str) -> dict[str, str]:
    """host-local reservations: IP -> owner container ID."""
    d = Path(data_dir) / network
    if not d.exists():
        return {}
    out = {}
    for entry in d.iterdir():
        if entry.name[0].isdigit() or ":" in entry.name:
            out[entry.name] = entry.read_bytes().decode().splitlines()[0].strip()
    return out


def ipam_debris(data_dir: Path | str, network: str) -> list[str]:
    d = Path(data_dir) / network
    return sorted(e.name for e in d.iterdir() if e.name.startswith(".")) if d.exists() else []


# ---- assertions --------------------------------------------------------------------------------


def result_ips(result: dict[str, Any]) -> list[str]:
    return [ip["address"] for ip in result["ips"]]


def plain(cidr: str) -> str:
    return cidr.split("/")[0]


def assert_pod_wired(node: Netns, pod: Netns, result: dict[str, Any], ifname: str = "eth0") -> None:
    """Link, /32 (/128) addresses, gateway routes and the pinned gateway neighbour, host route."""
    host_if, pod_if = result["interfaces"]
    assert pod_if["name"] == ifname and pod_if["sandbox"] == pod.path
    host_link, pod_link = link(node, host_if["name"]), link(pod, ifname)
    assert host_link["address"] == host_if["mac"] and pod_link["address"] == pod_if["mac"]
    assert "UP" in host_link["flags"] and "UP" in pod_link["flags"]
    # Both MACs were set explicitly: the kernel says NET_ADDR_SET (3), which udev never rewrites.
    assert addr_assign_type(node, host_if["name"]) == 3
    assert addr_assign_type(pod, ifname) == 3
    ips = result_ips(result)
    assert all(c.endswith(("/32", "/128")) for c in ips), ips
    assert global_addresses(pod, ifname) == set(ips)
    neigh = neighbours(pod, ifname)
    fams = {4 if "." in c else 6 for c in ips}
    for fam, gw in ((4, GW4), (6, GW6)):
        if fam not in fams:
            continue
        assert "PERMANENT" in neigh[gw]["state"], neigh[gw]
        assert neigh[gw]["lladdr"] == host_if["mac"], (neigh[gw], host_if)
        default = [r for r in routes(pod, fam) if r["dst"] == "default"]
        assert len(default) == 1 and default[0]["gateway"] == gw and default[0]["dev"] == ifname
        assert "onlink" in default[0].get("flags", [])
    if 4 in fams:
        assert any(r["dst"] == GW4 and r.get("scope") == "link" and r["dev"] == ifname
                   for r in routes(pod, 4))
    host_routes = host_pod_routes(node)
    host_neigh = neighbours(node, host_if["name"])
    for c in ips:
        assert f"{plain(c)} dev {host_if['name']}" in host_routes, (c, host_routes)
        # The host never has to resolve the pod either: its address is pinned to the pod's MAC.
        entry = host_neigh[plain(c)]
        assert "PERMANENT" in entry["state"] and entry["lladdr"] == pod_if["mac"], entry


def ping(src: Netns, dst: str) -> bool:
    return src.ping(dst, timeout=2)


def sweep(pod: Netns, targets: Sequence[str], timeout: float = 3.0) -> list[str]:
    """ICMP echo from ``pod`` to every target at once; returns the targets that did not answer."""
    proc = pod.run([sys.executable, ICMP_SWEEP, str(timeout), *targets], check=False,
                   timeout=timeout + 30)
    assert proc.returncode in (0, 1), proc.stderr
    missing: list[str] = json.loads(proc.stdout)
    return missing


def sweep_all(pods: Sequence[Netns], targets_of: dict[str, list[str]],
              workers: int = 6) -> dict[str, list[str]]:
    """Run ``sweep`` for every pod in parallel; {pod name: unreachable targets} for failures only."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pod.name: pool.submit(sweep, pod, targets_of[pod.name]) for pod in pods}
        results = {name: f.result() for name, f in futures.items()}
    return {name: missing for name, missing in results.items() if missing}


def assert_nothing_left(node: Netns, data_dir: Path | str, network: str,
                        pods: Iterable[Netns] = (), ifname: str = "eth0") -> None:
    assert host_veths(node) == []
    assert host_pod_routes(node) == []
    assert ip_files(data_dir, network) == {}
    for pod in pods:
        if os.path.exists(pod.path):
            assert ifname not in pod.links()


def arp_table_fulls() -> int:
    """How often the kernel found its (machine-wide) ARP table full: /proc/net/stat/arp_cache."""
    with open("/proc/net/stat/arp_cache") as f:
        lines = f.read().split("\n")[1:]
    return sum(int(line.split()[-1], 16) for line in lines if line.strip())


def kill_pid(proc: subprocess.Popen[bytes], sig: int) -> None:
    """End a process this test started, by its PID."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
