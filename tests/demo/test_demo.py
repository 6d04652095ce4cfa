"""``podnet demo`` for real: the node agent, pods wired by podnet's plugins, the TCP matrix before,
with and after a NetworkPolicy, and nothing left behind, also when the demo is interrupted."""

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
    agent = re.search(r"node agent running \(pid (\d+)\)", out)
    if agent and os.path.exists(f"/proc/{agent.group(1)}"):
        left.append(f"agent pid {agent.group(1)}")
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


@pytest.mark.root
@pytest.mark.slow
def test_demo_shows_the_policy_in_the_matrix_and_leaves_nothing(demo: list[subprocess.Popen[str]]) -> None:
    before = root_state()
    t0 = time.monotonic()
    proc = start(demo)
    out, _ = proc.communicate(timeout=120)
    took = time.monotonic() - t0
    assert proc.returncode == 0, out
    assert took < 60, f"the demo took {took:.0f} s"
    found = tables(out)
    assert len(found) == 3, out
    open_all = {(s, d): "." for s in PODS for d in PODS}
    with_policy = {cell: "X" if cell in BLOCKED else "." for cell in open_all}
    assert found[0] == open_all, out
    assert found[1] == with_policy, out
    assert found[2] == open_all, out
    assert "demo/backend-br (10.250.0.3) -> demo/db-br (10.250.0.4) TCP/80: DENIED" in out
    assert "isolated by demo/db-from-frontend; no rule allows it" in out
    assert "demo/frontend-br (10.250.0.2) -> demo/db-br (10.250.0.4) TCP/80: ALLOWED" in out
    assert "every pair pings" in out and "left behind: nothing" in out
    assert leftovers(proc.pid, out) == []
    assert root_state() == before


@pytest.mark.root
@pytest.mark.parametrize(("sig", "after"), [
    (signal.SIGINT, "with NetworkPolicy db-from-frontend"),  # agent, pods and their servers running
    (signal.SIGTERM, "pods attached by"),  # the agent running, ADDs under way
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
    assert any(x.startswith("netns pndemo-node-") for x in running), running
    assert any(x.startswith("agent pid") for x in running), running
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
    assert leftovers(proc.pid, out) == []
