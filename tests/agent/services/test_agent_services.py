"""Services through the real ``podnet agent``: Services and EndpointSlices in its manifest directory,
the agent (one process for the module, in a node namespace, ``--pod-cidr`` set) programs them, and
pods on the node's bridge and the node itself reach them.

Wiring: bridge br0 (10.244.0.1/24) and a default route out of an unused veth in the node
namespace, endpoint pods p0..p2 running ``netprobe.py serve`` (TCP 8080, UDP 5353), a client pod
c0; every pod is in the manifests, so the agent's admission lets its address through.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nsutil import Netns, namespaces

from ..policy.agentproc import AgentProcess
from ..policy.manifests import ManifestDir
from . import bridged
from .bridged import CLIENT, ENDPOINTS, PROBE

pytestmark = pytest.mark.root

HERE = Path(__file__).parent
LOOP = str(HERE / "trafficloop.py")
NODE = "node-1"
NS = "default"
WEB, EMPTY = "10.96.0.10", "10.96.0.12"


def pod(name: str, address: str) -> dict[str, Any]:
    meta = {"namespace": NS, "name": name, "labels": {"app": name}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": "Running", "podIP": address, "podIPs": [{"ip": address}]}}


def service(name: str, cluster_ip: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": NS, "name": name},
            "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                               {"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"}]}}


def endpoint_slice(name: str, pods: list[str]) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"namespace": NS, "name": f"{name}-1",
                         "labels": {"kubernetes.io/service-name": name}},
            "endpoints": [{"addresses": [ENDPOINTS[p]], "conditions": {"ready": True}, "nodeName": NODE}
                          for p in pods],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                      {"name": "dns", "port": 5353, "protocol": "UDP"}]}


@dataclass
class World:
    node: Netns
    client: Netns
    agent: AgentProcess
    manifests: ManifestDir

    def services(self, web_pods: list[str]) -> None:
        """Write the services file and wait until the proxy has synced it."""
        before = self.agent.status()["services"]["syncs"]
        self.manifests.write("services", [service("web", WEB), endpoint_slice("web", web_pods),
                                          service("empty", EMPTY), endpoint_slice("empty", [])])
        deadline = time.monotonic() + 10
        while self.agent.status()["services"]["syncs"] <= before:
            assert time.monotonic() < deadline, self.agent.status()
            time.sleep(0.01)

    def probe(self, ns: Netns, mode: str, host: str, port: int, count: int) -> list[str]:
        out: list[str] = json.loads(ns.run([sys.executable, PROBE, mode, host, str(port), str(count)]).stdout)
        return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("agent-services")
    with namespaces() as make:
        made = bridged.wire(make, node_default_route=True)
        node, pods, addresses = made.node, made.pods, bridged.ADDRESSES
        manifests = ManifestDir(workdir / "manifests")
        manifests.write("pods", [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
                                 *(pod(n, a) for n, a in addresses.items())])
        agent = AgentProcess(node, workdir, manifests.path, NODE, ["10.244.0.0/24"])
        w = World(node, pods[CLIENT[0]], agent, manifests)
        manifests.write("services", [])
        agent.start()
        try:
            w.services(list(ENDPOINTS))
            yield w
        finally:
            agent.stop()


def test_cluster_ip_from_a_pod_and_from_the_node(world: World) -> None:
    for ns in (world.client, world.node):
        got = world.probe(ns, "tcp", WEB, 80, 9)
        assert len(got) == 9 and set(got) <= set(ENDPOINTS), got
        got = world.probe(ns, "udp", WEB, 53, 3)
        assert len(got) == 3 and set(got) <= set(ENDPOINTS), got
    status = world.agent.status()["services"]
    assert status["proxied"] == 2 and status["endpoints"] == 6 and status["failed"] == 0, status


def test_service_without_endpoints_is_rejected_fast(world: World) -> None:
    for ns in (world.client, world.node):
        got = world.probe(ns, "tcp", EMPTY, 80, 5)
        assert all(g.startswith("!ECONNREFUSED ") for g in got), got
        assert max(float(g.split()[1]) for g in got) < 10, got


def _hold(world: World) -> tuple[subprocess.Popen[str], str]:
    proc: subprocess.Popen[str] = world.client.popen(  # type: ignore[assignment]
        [sys.executable, PROBE, "hold", WEB, "80"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def test_udp_client_moves_off_a_removed_endpoint_and_tcp_to_survivors_lives(world: World) -> None:
    udp: subprocess.Popen[str] = world.client.popen(  # type: ignore[assignment]
        [sys.executable, LOOP, "--udp", WEB, "53"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    holders: list[subprocess.Popen[str]] = []
    try:
        assert udp.stdout is not None and udp.stdin is not None
        first = udp.stdout.readline().split()[1]  # "seconds name": the endpoint the flow is pinned to
        assert first in ENDPOINTS
        survivor = ""
        while not survivor:  # an established TCP connection to another endpoint
            proc, name = _hold(world)
            holders.append(proc)
            survivor = name if name != first and name in ENDPOINTS else ""
        keep = holders[-1]
        cleared = world.agent.status()["services"]["udp_flows_cleared"]
        removed_at = time.monotonic()
        world.services([p for p in ENDPOINTS if p != first])
        moved = None
        while moved is None:
            name = udp.stdout.readline().split()[1]
            if name != first and name in ENDPOINTS:
                moved = time.monotonic() - removed_at
            assert time.monotonic() - removed_at < 5, f"UDP client still on {first}"
        assert moved < 1.0, moved
        assert world.agent.status()["services"]["udp_flows_cleared"] > cleared
        assert keep.stdin is not None and keep.stdout is not None
        keep.stdin.write("after\n")
        keep.stdin.flush()
        assert keep.stdout.readline().strip() == f"{survivor} after"
    finally:
        for proc in [udp, *holders]:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.kill()
            proc.wait(10)
        world.services(list(ENDPOINTS))


def test_policy_explain_follows_a_cluster_ip_to_its_endpoints(world: World) -> None:
    """``podnet policy explain`` (the agent's socket) with a ClusterIP as the destination names the
    Service and explains each endpoint; ``podnet status`` counts what the proxy programs."""
    answer = world.agent.ask({"op": "explain", "src": f"{NS}/{CLIENT[0]}", "dst": WEB, "port": "80/TCP"})
    assert answer.get("ok"), answer
    text = answer["text"]
    assert text.startswith(f"{WEB} is the ClusterIP of Service {NS}/web, port http (80/TCP)"), text
    for name, address in ENDPOINTS.items():
        assert f"{address}:8080" in text, text
        assert f"{NS}/c0 ({CLIENT[1]}) -> {NS}/{name} ({address}) TCP/8080: ALLOWED" in text, text
    answer = world.agent.ask({"op": "explain", "src": f"{NS}/{CLIENT[0]}", "dst": EMPTY, "port": "80"})
    assert "new connections are rejected at once" in answer["text"], answer
    plain = world.agent.ask({"op": "explain", "src": f"{NS}/{CLIENT[0]}", "dst": f"{NS}/p0", "port": "8080"})
    assert plain["text"].startswith(f"{NS}/c0 ({CLIENT[1]}) -> {NS}/p0"), plain
    status = world.agent.status()["services"]
    assert status["proxied"] == 2 and status["endpoints"] == 6, status
