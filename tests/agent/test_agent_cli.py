"""``podnet agent`` / ``podnet status`` / ``podnet policy explain`` as a user runs them, in a node
namespace of the test's: bad options refused by name, status and metrics from a running agent, an
invalid policy reported, and the table left in force when the agent stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nsutil import Netns
from podnet.plugins.agent_notify import ask

pytestmark = pytest.mark.root
PODNET = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "podnet")
PORT = 9631
Running = tuple[str, "subprocess.Popen[str]"]

MANIFESTS = """\
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: a}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {nodeName: n1, containers: [{name: c, image: busybox}]}
status: {podIP: 10.77.0.5, podIPs: [{ip: 10.77.0.5}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {matchLabels: {app: a}}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: broken, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [192.168.0.0/16]}}]}]
"""


@pytest.fixture
def agent(node: Netns, tmp_path: Path) -> Iterator[Running]:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "objects.yaml").write_text(MANIFESTS)
    sock = str(tmp_path / "agent.sock")
    log = open(tmp_path / "agent.log", "w")  # noqa: SIM115 - the agent holds it
    argv = [PODNET, "agent", "--manifests", str(manifests), "--node-name", "n1", "--pod-cidr", "10.77.0.0/24",
            "--socket", sock, "--verify-period", "1", "--metrics-addr", f"127.0.0.1:{PORT}"]
    proc = subprocess.Popen(node.exec_argv(argv), stdout=log, stderr=log, text=True)
    log.close()
    try:
        deadline = time.monotonic() + 30
        while not _applied(sock):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "agent.log").read_text()
            time.sleep(0.05)
        yield sock, proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _applied(sock: str) -> bool:
    try:
        status = ask(sock, {"op": "status"}, 2)["status"]
    except (OSError, ValueError, KeyError):
        return False
    return (bool(status["synced"]) and status["generation"] == status["generation_applied"]
            and status["services"]["syncs"] >= 1)  # both controllers have committed


def test_status_explain_and_metrics_from_a_running_agent(node: Netns, agent: Running) -> None:
    sock, _ = agent
    text = node.run([PODNET, "status", "--socket", sock, "--daemon-socket", "/nonexistent"], check=False)
    assert text.returncode == 0, text.stderr
    assert "agent: node n1, synced" in text.stdout and "2 NetworkPolicy" in text.stdout
    assert "invalid policy x/broken" in text.stdout and "except" in text.stdout
    assert "bridged pods filtered (br_netfilter): on" in text.stdout
    assert node.run(["sysctl", "-n", "net.bridge.bridge-nf-call-ip6tables"]).stdout.strip() == "1"
    data = json.loads(node.run([PODNET, "status", "--socket", sock, "--json"], check=False).stdout)
    assert data["agent"]["pod_ranges"] == ["10.77.0.0/24"] and "no daemon at" in data["daemon"]["error"]
    explain = node.run([PODNET, "policy", "explain", "10.77.0.9", "x/a", "80/TCP", "--socket", sock],
                       check=False)
    assert explain.returncode == 0 and "DENIED" in explain.stdout and "x/deny" in explain.stdout
    bad = node.run([PODNET, "policy", "explain", "x/nobody", "x/a", "80/TCP", "--socket", sock], check=False)
    assert bad.returncode == 2 and "x/nobody" in bad.stderr and "Traceback" not in bad.stderr
    script = f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{PORT}/metrics').read().decode())"
    metrics = node.run([os.path.join(os.path.dirname(PODNET), "python"), "-c", script]).stdout
    # Whichever controller committed first adopted the table (one full sync in all); both synced.
    counts = {line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.splitlines()
              if line.startswith("podnet_agent_sync_seconds_count")}
    assert sum(n for k, n in counts.items() if 'kind="full"' in k) == 1
    assert all(any(f'controller="{c}"' in k for k in counts) for c in ("policy", "services")), counts
    assert 'podnet_agent_objects{kind="Pod"} 1.0' in metrics
    assert "podnet_dataplane_drift_repairs_total" in metrics


def test_stopping_the_agent_leaves_the_table_in_force(node: Netns, agent: Running) -> None:
    sock, proc = agent
    before = node.run(["nft", "-j", "list", "map", "inet", "podnet", "ingress-ip4"]).stdout
    assert "10.77.0.5" in before
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(15) == 0
    assert os.path.exists(sock)  # stays with the table: a later ADD says its pod is held back
    assert node.run(["nft", "-j", "list", "map", "inet", "podnet", "ingress-ip4"]).stdout == before


@pytest.mark.parametrize(("argv", "named"), [
    (["--manifests", "/nonexistent/dir"], "/nonexistent/dir"),
    (["--kubeconfig", "/nonexistent/kubeconfig"], "/nonexistent/kubeconfig"),
    ([], "--manifests"),
    (["--manifests", "/tmp", "--pod-cidr", "10.0.0.1/24"], "10.0.0.1/24"),
    (["--manifests", "/tmp", "--verify-period", "0"], "--verify-period"),
    (["--manifests", "/tmp", "--metrics-addr", "nowhere"], "--metrics-addr"),
])
def test_bad_options_are_refused_by_name(node: Netns, argv: list[str], named: str) -> None:
    proc = node.run([PODNET, "agent", "--socket", "/nonexistent/agent.sock", *argv], check=False, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert named in proc.stderr and "Traceback" not in proc.stderr


def test_status_without_an_agent_says_so(node: Netns, tmp_path: Path) -> None:
    proc = node.run([PODNET, "status", "--socket", str(tmp_path / "none.sock")], check=False)
    assert proc.returncode == 1 and "no agent at" in proc.stdout and "Traceback" not in proc.stderr
