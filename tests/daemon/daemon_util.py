"""Helpers for the daemon namespace tests: installed shims, bridge configs, bursts of plugin calls,
and what is left in the node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnienv import REPO, NodeDaemon
from nsutil import Netns

PODNET = [sys.executable, "-m", "podnet.cli.main"]
VENV_BIN = REPO / ".venv" / "bin"
TEMP_PREFIX = ".podnet-tmp-"


def install_shims(bin_dir: Path, conf_dir: Path, *extra: str) -> list[str]:
    """``podnet install`` into temp dirs; its output lines."""
    argv = [*PODNET, "install", "--bin-dir", str(bin_dir), "--conf-dir", str(conf_dir), *extra]
    proc = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60)
    return proc.stdout.splitlines()


def bridge_conf(name: str, bridge: str, subnet: str, ipam_dir: Path, version: str = "1.1.0",
                **keys: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": name, "type": "podnet-bridge", "bridge": bridge, "isGateway": True,
            "ipam": {"type": "podnet-host-local", "dataDir": str(ipam_dir), "ranges": [[{"subnet": subnet}]]},
            **keys}


def plugin_env(socket: Path, bin_dir: Path, command: str, cid: str = "", netns: str = "",
               ifname: str = "eth0", **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "PODNET_"))}
    env.update(PODNET_SOCKET=str(socket), CNI_COMMAND=command, CNI_CONTAINERID=cid, CNI_NETNS=netns,
               CNI_IFNAME=ifname, CNI_PATH=str(bin_dir), **extra)
    return env


@dataclass
class Call:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def run_plugin(node: Netns, plugin: Path, env: dict[str, str], conf: dict[str, Any]) -> Call:
    proc = node.run([str(plugin)], check=False, input=json.dumps(conf), env=env)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return Call(proc.returncode, proc.stdout, proc.stderr)


def start_plugin(node: Netns, plugin: Path, env: dict[str, str],
                 conf: dict[str, Any]) -> subprocess.Popen[bytes]:
    proc = node.popen([str(plugin)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      env=env)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(conf).encode())
    proc.stdin.close()
    proc.stdin = None  # written and closed: communicate() must not touch it again
    return proc


def finish(proc: subprocess.Popen[bytes], timeout: float = 120) -> Call:
    out, err = proc.communicate(timeout=timeout)
    call = Call(proc.returncode, out.decode(), err.decode())
    assert "Traceback" not in call.stdout + call.stderr, call.stderr
    return call


def wait_for_requests(daemon: NodeDaemon, command: str, count: int, timeout: float = 30) -> None:
    if len(daemon.requests(command, count, timeout)) >= count:
        return
    raise AssertionError(f"the daemon did not serve {count} {command} calls in {timeout} s")


def host_veths(node: Netns) -> list[str]:
    out = node.run(["ip", "-j", "link", "show", "type", "veth"]).stdout
    return sorted(link["ifname"] for link in json.loads(out or "[]"))


def node_routes(node: Netns) -> list[str]:
    out = node.run(["ip", "-j", "route", "show", "table", "all"]).stdout
    return sorted(f"{r['dst']} dev {r.get('dev')} table {r.get('table', 'main')}"
                  for r in json.loads(out or "[]")
                  if r.get("table") != "local" and r.get("type", "unicast") == "unicast"
                  and not r["dst"].startswith("fe80:"))  # the kernel's link-local route per link


def pod_links(pod: Netns) -> list[str]:
    return sorted(link["ifname"] for link in json.loads(pod.run(["ip", "-j", "link", "show"]).stdout))


def ipam_files(ipam_dir: Path, network: str) -> tuple[list[str], list[str]]:
    """(reserved IPs, crash debris) in host-local's directory for the network."""
    d = ipam_dir / network
    names = os.listdir(d) if d.exists() else []
    reserved = sorted(n for n in names if n[0].isdigit() or ":" in n)
    return reserved, sorted(n for n in names if n.startswith(TEMP_PREFIX))


def ping_all(pods: list[tuple[Netns, list[str]]], attempts: int = 5) -> list[str]:
    """Each pod pings its targets (in parallel inside the pod); returns the failures. A failure is
    tried again: the ARP table is one for all namespaces on the machine, and when other test runs
    fill it the kernel refuses new entries (ENOBUFS) until its garbage collector catches up."""
    failures: list[str] = []
    for attempt in range(attempts):
        if attempt:
            time.sleep(attempt)
        failures = []
        procs = []
        for pod, targets in pods:
            pings = (f"(ping -n -q -c1 -W3 {t} >/dev/null 2>&1 || echo {t}) &" for t in targets)
            argv = pod.exec_argv(["sh", "-c", " ".join(pings) + " wait"])
            procs.append((pod, subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)))
        retry = []
        for pod, proc in procs:
            out, _ = proc.communicate(timeout=60)
            failures += [f"{pod.name} -> {t}" for t in out.split()]
            if out.split():
                retry.append((pod, out.split()))
        if not retry:
            return []
        pods = retry
    return failures


def native_bin_dir(where: Path) -> Path:
    """``where``, a CNI bin dir written by ``podnet install`` (the native shim and its links)."""
    argv = [sys.executable, "-m", "podnet.cli.main", "install", "--bin-dir", str(where), "--no-conflist"]
    subprocess.run(argv, check=True, capture_output=True, timeout=120)
    return where
