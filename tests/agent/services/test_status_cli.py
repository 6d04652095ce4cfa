"""``podnet status`` shows the service table of a running agent: a line per service port (which
endpoints each address goes to, or reject / drop), the same rows in ``--json``, and a cut with
``--services N`` that says how many more there are."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nsutil import Netns
from podnet.cli.agent_cmd import _service_lines

from ..policy.agentproc import PODNET, AgentProcess
from ..policy.manifests import ManifestDir

NODE = "node-1"


def service(name: str, cluster_ip: str, node_port: int | None = None, **spec: Any) -> dict[str, Any]:
    port: dict[str, Any] = {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}
    if node_port is not None:
        port["nodePort"] = node_port
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default", "name": name},
            "spec": {"type": "NodePort" if node_port else "ClusterIP", "clusterIP": cluster_ip,
                     "clusterIPs": [cluster_ip], "ports": [port], **spec}}


def endpoints(name: str, *where: tuple[str, str]) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"namespace": "default", "name": f"{name}-1",
                         "labels": {"kubernetes.io/service-name": name}},
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}, "nodeName": n} for a, n in where],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}


OBJECTS = [
    # A pod of this node: with none, the policy controller has no part, and the table's first
    # rebuild waits for it (a pod-less node: reported to the lead, not this test's matter).
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}},
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": "default", "name": "p"},
     "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "busybox"}]},
     "status": {"phase": "Running", "podIP": "10.244.0.2", "podIPs": [{"ip": "10.244.0.2"}]}},
    service("web", "10.96.0.10", 30080, externalIPs=["192.0.2.10"]),
    endpoints("web", ("10.244.0.2", NODE), ("10.244.1.3", "node-2")),
    service("lb", "10.96.0.15", 30081, externalTrafficPolicy="Local"),
    endpoints("lb", ("10.244.1.9", "node-2")),
    service("empty", "10.96.0.12"),
]


@pytest.fixture
def agent(node: Netns, tmp_path: Path) -> Iterator[AgentProcess]:
    manifests = ManifestDir(tmp_path / "manifests")
    manifests.write("services", OBJECTS)
    proc = AgentProcess(node, tmp_path, manifests.path, NODE, ["10.244.0.0/24"])
    proc.start()
    try:
        deadline = time.monotonic() + 10
        while proc.status()["services"]["syncs"] < 1:  # the proxy has compiled them
            assert time.monotonic() < deadline, proc.log_text()
            time.sleep(0.02)
        yield proc
    finally:
        proc.stop()


@pytest.mark.root
def test_status_prints_each_service_address_and_where_it_goes(node: Netns, agent: AgentProcess) -> None:
    base = [str(PODNET), "status", "--socket", agent.socket, "--daemon-socket", "/nonexistent"]
    out = node.run(base).stdout
    assert "  services: 3 proxied, 3 endpoints" in out
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("  services: "))
    assert lines[at + 1:at + 4] == [
        "    default/empty http tcp  10.96.0.12:80 -> reject (no endpoints)",
        "    default/lb http tcp  10.96.0.15:80 -> 10.244.1.9:8080; node:30081 -> drop (endpoints elsewhere, "
        "none here for the Local policy)",
        "    default/web http tcp  10.96.0.10:80, 192.0.2.10:80, node:30080 -> 10.244.0.2:8080, "
        "10.244.1.3:8080",
    ]
    cut = node.run([*base, "--services", "1"]).stdout.splitlines()
    assert cut[at + 1].startswith("    default/empty ")
    assert cut[at + 2] == "    ... 2 more service port(s) (--services 3 shows 2 of them)"
    data = json.loads(node.run([*base, "--json"]).stdout)["agent"]["services"]
    assert [(r["service"], r["verdict"]) for r in data["table"]] == [
        ("default/empty", "reject"), ("default/lb", "partial"), ("default/web", "dnat")]
    assert data["table_truncated"] == 0
    assert data["table"][2]["cluster"] == ["10.244.0.2:8080", "10.244.1.3:8080"]
    bad = node.run([*base, "--services", "-1"], check=False)
    assert bad.returncode == 2 and "--services" in bad.stderr and "Traceback" not in bad.stderr


def test_a_cut_table_says_how_many_more_and_why() -> None:
    row = {"service": "default/a", "port": "http", "protocol": "TCP", "family": 4, "verdict": "reject",
           "addresses": [{"address": "10.96.0.1:80", "kind": "ClusterIP", "policy": "Cluster",
                          "verdict": "reject"}],
           "cluster": [], "cluster_total": 0, "local": [], "local_total": 0, "affinity_seconds": None}
    services = {"table": [row] * 3, "table_truncated": 997}
    assert _service_lines(services, 50)[3:] == [
        "    ... 997 more service port(s) (997 beyond the agent's answer)"]
    assert _service_lines(services, 1)[1:] == [
        "    ... 999 more service port(s) (--services 3 shows 2 of them; 997 beyond the agent's answer)"]
    assert _service_lines(services, 0) == [
        "    ... 1000 more service port(s) (--services 3 shows 3 of them; 997 beyond the agent's answer)"]
    assert _service_lines({}, 50) == []  # an agent that answers without a table
