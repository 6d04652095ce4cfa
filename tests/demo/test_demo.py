"""``podnet demo`` for real: the three-node cluster (pods pinging across host-gw routes and VXLAN, a
Service answered from two nodes, the TCP matrix before and with a NetworkPolicy), nothing left
behind, also when the demo is interrupted; the single-node flow runs with Debian's Go plugins."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

PODNET = str(Path(sys.executable).parent / "podnet")
PODS = ["frontend-br", "backend-br", "db-br", "frontend-rt", "backend-rt", "db-rt"]
# "only app=frontend pods may reach app=db pods": what a backend or the other db sends to a db pod
# is dropped; a pod reaching itself never leaves it.
BLOCKED = {("backend-br", "db-br"), ("backend-br", "db-rt"), ("db-br", "db-rt"),
           ("backend-rt", "db-br"), ("backend-rt", "db-rt"), ("db-rt", "db-br")}
CLUSTER_PODS = ["frontend-n1", "db-n1", "backend-n2", "db-n2", "frontend-n3", "backend-n3"]
CLUSTER_BLOCKED = {("db-n1", "db-n2"), ("db-n2", "db-n1"), ("backend-n2", "db-n1"), ("backend-n2", "db-n2"),
                   ("backend-n3", "db-n1"), ("backend-n3", "db-n2")}


def tables(out: str) -> list[dict[tuple[str, str], str]]:
    """Every truth table printed: (client, server) -> '.' or 'X'."""
    found = []
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("TCP port 80, client (row) -> server (column)"):
            continue
        header = lines[i + 1].split()
        assert header[0] == "-"
        servers = header[1:]
        cells = {}
        for row in lines[i + 2:i + 2 + len(servers)]:
            client, *marks = row.split()
            assert len(marks) == len(servers), row
            cells.update({(client, s): m for s, m in zip(servers, marks, strict=True)})
        found.append(cells)
    return found


def root_state() -> dict[str, object]:
    """What the demo must never change in the machine's own namespace."""
    links = json.loads(subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True,
                                      check=True).stdout)
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False).stdout
    return {"demo links": sorted(link["ifname"] for link in links
                                 if link["ifname"].startswith(("pndemo", "pndd", "pna56d"))),
            "policy table": "podnet" in tables,
            "br_netfilter": Path("/proc/sys/net/bridge/bridge-nf-call-iptables").read_text()}


def leftovers(pid: int, out: str) -> list[str]:
    """Namespaces, processes and temporary files of the demo run ``pid`` that still exist."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    left = [f"netns {line.split()[0]}" for line in netns.splitlines() if line.split()[0].endswith(f"-{pid}")]
    work = re.search(r"reading (/\S+)/manifests", out)
    marks = [re.compile(rf"-{pid}\b")] + ([re.compile(re.escape(work.group(1)))] if work else [])
    if work and os.path.exists(work.group(1)):
        left.append(f"directory {work.group(1)}")
    # The single-node demo says "node agent running (pid N)", the cluster "agent pid N" per node.
    for agent in re.findall(r"agent (?:running \()?pid (\d+)", out):
        if os.path.exists(f"/proc/{agent}"):
            left.append(f"agent pid {agent}")
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "podnet" in cmdline and any(m.search(cmdline) for m in marks):
                left.append(f"process {proc.name}: {cmdline}")
    return left


@pytest.fixture
def demo() -> Iterator[list[subprocess.Popen[str]]]:
    """Started demo runs; one still running at the end of a test is ended by its PID."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(60)


def start(procs: list[subprocess.Popen[str]], *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([PODNET, "demo", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    procs.append(proc)
    return proc


def ping_matrix(out: str) -> dict[tuple[str, str], str]:
    """The cluster demo's ping matrix: (source, destination) -> "✓ PATH" or "✗ PATH"."""
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("ping matrix (row pings column)"))
    header = lines[at + 1].split()
    cells = {}
    for row in lines[at + 2:at + 2 + len(header)]:
        src, *rest = row.split()
        marks = [" ".join(rest[i:i + 2]) for i in range(0, len(rest), 2)]
        assert len(marks) == len(header), row
        cells.update({(src, dst): mark for dst, mark in zip(header, marks, strict=True)})
    return cells


def path(src: str, dst: str) -> str:
    """n1 and n2 share the underlay (host-gw); n3 is behind the router (VXLAN)."""
    a, b = src.rsplit("-", 1)[1], dst.rsplit("-", 1)[1]
    return "local" if a == b else "vxlan" if "n3" in (a, b) else "host-gw"


@pytest.mark.root
@pytest.mark.slow
def test_cluster_demo_pings_across_nodes_balances_the_service_and_enforces_the_policy(
        demo: list[subprocess.Popen[str]]) -> None:
    before = root_state()
    t0 = time.monotonic()
    proc = start(demo)
    out, _ = proc.communicate(timeout=120)
    took = time.monotonic() - t0
    assert proc.returncode == 0, out
    assert took < 60, f"the demo took {took:.0f} s"
    for node, peers in (("n1", "n2 host-gw, n3 vxlan"), ("n2", "n1 host-gw, n3 vxlan"),
                        ("n3", "n1 vxlan, n2 vxlan")):
        assert re.search(rf"^  {node} .* routes to {peers}$", out, re.M), out
    assert ping_matrix(out) == {(s, d): f"✓ {path(s, d)}" for s in CLUSTER_PODS for d in CLUSTER_PODS}, out
    served = re.search(r"frontend-n3 \(on n3\) connects 20 times to 10.96.0.10:80; answered by (.*)", out)
    assert served is not None, out
    counts = dict(re.findall(r"(\S+) (\d+)x", served.group(1)))
    assert set(counts) == {"db-n1", "db-n2"} and sum(map(int, counts.values())) == 20, served.group(0)
    found = tables(out)
    assert len(found) == 2, out
    assert found[0] == {(s, d): "." for s in CLUSTER_PODS for d in CLUSTER_PODS}, out
    assert found[1] == {(s, d): "X" if (s, d) in CLUSTER_BLOCKED else "."
                        for s in CLUSTER_PODS for d in CLUSTER_PODS}, out
    assert "demo/backend-n3 (10.244.3.3) -> demo/db-n1 (10.244.1.3) TCP/80: DENIED" in out
    assert "isolated by demo/db-from-frontend; no rule allows it" in out
    assert "left behind: nothing" in out and "every pair pings, and every pod reaches the router" in out
    assert "the Service answered from both nodes" in out
    assert leftovers(proc.pid, out) == []
    assert root_state() == before


@pytest.mark.root
@pytest.mark.parametrize(("sig", "after"), [
    (signal.SIGINT, "Service demo/db: ClusterIP"),  # agents, daemons, pods and their servers running
    (signal.SIGTERM, "pod CIDR 10.244.3.0/24"),  # the last node's line: agents and daemons up, ADDs next
])
def test_an_interrupted_demo_removes_everything(demo: list[subprocess.Popen[str]], sig: int,
                                                after: str) -> None:
    before = root_state()
    proc = start(demo)
    assert proc.stdout is not None
    seen = ""
    while after not in seen:
        line = proc.stdout.readline()
        assert line, f"the demo ended before {after!r}:\n{seen}"
        seen += line
    running = leftovers(proc.pid, seen)  # the check's negative control: it sees a live demo
    assert any(x.startswith("netns pndemo-n3-") for x in running), running
    assert any(x.startswith("agent pid") for x in running), running
    assert any("podnet.cli.main daemon" in x for x in running), running
    os.kill(proc.pid, sig)
    rest, _ = proc.communicate(timeout=60)
    out = seen + rest
    assert proc.returncode == 130, out
    assert "interrupted; everything it made is removed" in out
    assert leftovers(proc.pid, out) == []
    assert root_state() == before


def test_bad_pod_count_is_a_clear_error() -> None:
    done = subprocess.run([PODNET, "demo", "--pods", "0"], capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "--pods: '0': expected a number from 1 to 9" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.root
@pytest.mark.interop
def test_go_plugins_pods_are_known_from_their_manifests(demo: list[subprocess.Popen[str]]) -> None:
    """The Go plugins do not tell the agent about a pod: the demo's manifests (the pods' status)
    do, and the same policy holds on the bridge pods."""
    proc = start(demo, "--go")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    pods = [p for p in PODS if p.endswith("-br")]
    found = tables(out)
    assert [len(t) for t in found] == [9, 9, 9], out
    assert found[1] == {(s, d): "X" if (s, d) in BLOCKED else "." for s in pods for d in pods}, out
    assert set(found[0].values()) == set(found[2].values()) == {"."}, out
    assert "demo/backend-br (10.250.0.3) -> demo/db-br (10.250.0.4) TCP/80: DENIED" in out
    assert "isolated by demo/db-from-frontend; no rule allows it" in out
    assert "demo/frontend-br (10.250.0.2) -> demo/db-br (10.250.0.4) TCP/80: ALLOWED" in out
    assert "every pair pings" in out and "left behind: nothing" in out
    assert leftovers(proc.pid, out) == []
