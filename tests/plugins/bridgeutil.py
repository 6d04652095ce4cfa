"""Helpers for the podnet-bridge namespace tests: configs, direct plugin runs, node state, pings."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cnienv import REPO, CniEnv
from nsutil import Netns

PODNET_BIN = str(REPO / ".venv" / "bin")
PLUGIN = str(REPO / ".venv" / "bin" / "podnet-bridge")
MASQ_TABLE = "podnet-bridge"


def ipam(env: CniEnv, *subnets: str, **extra: Any) -> dict[str, Any]:
    """podnet-host-local with one range set per subnet (v4 + v6 = dual stack)."""
    return {"type": "podnet-host-local", "dataDir": str(env.ipam_dir),
            "ranges": [[{"subnet": s}] for s in subnets], **extra}


def bridge_plugin(env: CniEnv, *subnets: str, bridge: str = "br-test", **keys: Any) -> dict[str, Any]:
    return {"type": "podnet-bridge", "bridge": bridge, "ipam": ipam(env, *subnets), **keys}


def net_conf(env: CniEnv, name: str, *subnets: str, version: str = "1.0.0", **keys: Any) -> dict[str, Any]:
    """A single-plugin network config, as a runtime would pass it to the plugin."""
    return {"cniVersion": version, "name": name, **bridge_plugin(env, *subnets, **keys)}


def plugin_env(command: str, container_id: str = "", netns: str = "", ifname: str = "eth0",
               args: str = "") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update(CNI_COMMAND=command, CNI_CONTAINERID=container_id, CNI_NETNS=netns, CNI_IFNAME=ifname,
               CNI_PATH=PODNET_BIN, CNI_ARGS=args)
    return {k: v for k, v in env.items() if v or k == "CNI_PATH"}


def run_plugin(node: Netns, command: str, conf: dict[str, Any], container_id: str = "",
               pod: Netns | str | None = None, ifname: str = "eth0", args: str = "") -> tuple[int, Any]:
    """Run podnet-bridge directly (as a runtime would) inside the node namespace.
    Returns (exit code, parsed stdout or None)."""
    netns = pod.path if isinstance(pod, Netns) else (pod or "")
    proc = node.run([PLUGIN], check=False, input=json.dumps(conf),
                    env=plugin_env(command, container_id, netns, ifname, args))
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    out = json.loads(proc.stdout) if proc.stdout.strip() else None
    return proc.returncode, out


def plugin_ok(node: Netns, command: str, conf: dict[str, Any], *a: Any, **kw: Any) -> Any:
    code, out = run_plugin(node, command, conf, *a, **kw)
    assert code == 0, out
    return out


def veths(ns: Netns) -> list[str]:
    out = ns.run(["ip", "-j", "link", "show", "type", "veth"]).stdout
    return sorted(link["ifname"] for link in json.loads(out or "[]"))


def links(ns: Netns) -> list[dict[str, Any]]:
    return list(json.loads(ns.run(["ip", "-j", "-d", "link", "show"]).stdout))


def link(ns: Netns, name: str) -> dict[str, Any]:
    found = [x for x in links(ns) if x["ifname"] == name]
    assert found, f"{name} not in {[x['ifname'] for x in links(ns)]}"
    return found[0]


def addresses(ns: Netns, ifname: str) -> set[str]:
    out = ns.run(["ip", "-j", "addr", "show", "dev", ifname]).stdout
    return {f"{a['local']}/{a['prefixlen']}" for x in json.loads(out) for a in x.get("addr_info", [])
            if a.get("scope") == "global"}


def routes(ns: Netns, family: int = 4) -> list[dict[str, Any]]:
    return list(json.loads(ns.run(["ip", "-j", f"-{family}", "route", "show"]).stdout or "[]"))


def nft_elements(node: Netns, table: str = MASQ_TABLE) -> list[tuple[str, str]]:
    """(set, comment) of every element in the masquerade table ([] when there is no table)."""
    proc = node.run(["nft", "-j", "list", "table", "inet", table], check=False)
    if proc.returncode != 0:
        return []
    out = []
    for item in json.loads(proc.stdout)["nftables"]:
        for elem in item.get("set", {}).get("elem", []):
            comment = elem["elem"].get("comment", "") if isinstance(elem, dict) and "elem" in elem else ""
            out.append((item["set"]["name"], comment))
    return out


def ip_files(env: CniEnv, network: str) -> list[str]:
    return env.ip_files(network)


def assert_clean(env: CniEnv, node: Netns, network: str, pods: Iterable[Netns] = ()) -> None:
    """Nothing of the network's attachments is left: host veths, IP reservations, masquerade
    elements, pod interfaces, pod routes."""
    assert veths(node) == []
    assert ip_files(env, network) == []
    assert [e for e in nft_elements(node) if e[1].startswith(f"{network}/")] == []
    for pod in pods:
        if os.path.exists(pod.path):
            assert [x["ifname"] for x in links(pod)] == ["lo"]
            assert routes(pod, 4) == [] and [r for r in routes(pod, 6) if r.get("dst") != "::1"] == []


def ping_matrix(pods: Sequence[tuple[Netns, str]], extra: Sequence[str] = (), workers: int = 8) -> list[str]:
    """Every pod pings every other pod's address (and the ``extra`` targets), each pod's pings run
    in parallel by one shell, the pods spread over a thread pool. Returns failures 'pod -> target'."""
    def one(job: tuple[Netns, list[str]]) -> list[str]:
        pod, targets = job
        # -c1 -w5 -i0.2: resend every 0.2 s until one reply, for up to 5 s (a loaded machine).
        pings = (f"(ping -n -q -c1 -w5 -i0.2 {a} >/dev/null 2>&1 || echo {a}) &" for a in targets)
        script = " ".join(pings) + " wait"
        out = pod.run(["sh", "-c", script], check=False, timeout=120).stdout
        return [f"{pod.name} -> {a}" for a in out.split()]

    everyone = [addr for _, addr in pods]
    jobs = [(pod, [a for a in everyone if a != own] + list(extra)) for pod, own in pods]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [f for failures in pool.map(one, jobs) for f in failures]


def static_neighbours(pods: Sequence[tuple[Netns, str, str]]) -> None:
    """Give every pod a permanent neighbour entry (IP -> MAC) for every other pod.

    Why: the kernel's ARP/ND tables are shared by all namespaces and capped machine-wide by
    ``gc_thresh3`` (1024 by default), a root-namespace setting tests must not change. A full mesh
    of 50 pods needs ~2500 learned entries and overflows it ("neighbor table overflow"); permanent
    entries are exempt from that cap. Address resolution itself is covered by the smaller tests.
    """
    def one(pod: Netns, own: str) -> None:
        lines = [f"neigh replace {ip} lladdr {mac} dev eth0 nud permanent"
                 for _, ip, mac in pods if ip != own]
        pod.run(["ip", "-batch", "-"], input="\n".join(lines) + "\n")

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda p: one(p[0], p[1]), pods))


def wait_all(procs: Sequence[subprocess.Popen[str]], timeout: float = 120) -> list[tuple[int, str, str]]:
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=timeout)
        out.append((proc.returncode, stdout, stderr))
    return out


def write_conf(path: Path, conf: dict[str, Any]) -> Path:
    path.write_text(json.dumps(conf))
    return path
