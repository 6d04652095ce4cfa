"""The cluster with every agent reading the local list/watch server (no manifest directory at all):
the Nodes' pod CIDRs, InternalIPs and deletion reach every node by the API's list and watch. Two
nodes, n1 on the underlay bridge and n4 behind the router (so VXLAN both ways)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent.routes_cluster import wait_until

from .cluster import MultiCluster, fdb, node_object, routes, running_cluster

pytestmark = pytest.mark.root
NAMES = ("n1", "n4")


@pytest.fixture(scope="module")
def kc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MultiCluster]:
    with running_cluster(tmp_path_factory.mktemp("kubesourced"), NAMES, kube_sourced=NAMES) as c:
        yield c


def test_pods_ping_across_nodes_and_a_deleted_node_loses_its_routes(kc: MultiCluster) -> None:
    assert all("KubeSource" in agent.status()["sources"] and "ManifestSource" not in agent.status()["sources"]
               for agent in kc.agents.values())
    assert {p["name"]: p["mode"] for p in kc.routing("n1")["peers"]} == {"n4": "vxlan"}
    assert kc.ping_failures(4) == []
    assert kc.ping_failures(6) == []
    kc.source.write("nodes", [node_object("n1")])
    assert wait_until(lambda: "10.244.4.0/24" not in routes(kc, "n1") and not fdb(kc, "n1"), 1.0) < 1.0
