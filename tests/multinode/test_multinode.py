"""podnet on three nodes in namespaces (see ``cluster.py``): pods on every node reach each other
over host-gw routes and the VXLAN overlay (IPv4 and IPv6, bridge and routed nodes); a Node deleted
from the cluster takes its routes with it everywhere, and entries deleted by hand come back;
ClusterIPs and NodePorts reach endpoints on other nodes; pods leave the cluster masqueraded and
reach other pods and nodes as themselves; NetworkPolicy holds with client and server on different
nodes. One cluster for the module; each test leaves it as it found it."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.policy.agentproc import current
from agent.policy.world import ING, peer, policy, rule, sel
from agent.routes_cluster import node_ip, wait_until
from podnet.agent.model import Protocol
from podnet.agent.policy import PolicyInputs, allowed
from podnet.agent.routes_plan import vxlan_mac

from .cluster import (
    NETWORK,
    NODES,
    NS_LABEL,
    PERIOD,
    PORT,
    PROTO,
    MultiCluster,
    PodProc,
    fdb,
    neighbours,
    node_object,
    parallel,
    pod_cidrs,
    podproc,
    routes,
    running_cluster,
)

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def mc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MultiCluster]:
    with running_cluster(tmp_path_factory.mktemp("multinode")) as c:
        yield c


def test_every_pod_pings_every_other_pod(mc: MultiCluster) -> None:
    modes = {n: {p["name"]: (p["mode"], p["state"]) for p in mc.routing(n)["peers"]} for n in NODES}
    assert modes == {"n1": {"n2": ("host-gw", "ok"), "n4": ("vxlan", "ok")},
                     "n2": {"n1": ("host-gw", "ok"), "n4": ("vxlan", "ok")},
                     "n4": {"n1": ("vxlan", "ok"), "n2": ("vxlan", "ok")}}
    # Each node's pods got addresses from its own Node's pod CIDRs (the agent's conflist), from the
    # plugin its agent was told to write: podnet-bridge on n1 and n4 (their bridge), routed on n2.
    for name in NODES:
        conf = json.loads(Path(mc.agents[name].status()["cni_config"]["path"]).read_text())
        assert conf["plugins"][0]["type"] == f"podnet-{NETWORK[name]}"
        assert ("podnet0" in mc.nodes[name].links()) == (NETWORK[name] == "bridge")
    for pod in mc.pods.values():
        v4, v6 = pod_cidrs(pod.node)
        assert pod.address(4).startswith(v4.split(".0/")[0] + "."), pod
        assert pod.address(6).startswith(v6.split("::/")[0] + "::"), pod
    assert mc.ping_failures(4) == []
    assert mc.ping_failures(6) == []


def all_routed(c: MultiCluster) -> bool:
    return all(c.routing(n)["routes"] == 2 * (len(NODES) - 1) for n in NODES)


def test_the_agent_is_current_after_a_node_change(mc: MultiCluster) -> None:
    agent = mc.agents["n1"]
    since = agent.generation()
    labelled = node_object("n2")
    labelled["metadata"]["labels"] = {"topology.kubernetes.io/zone": "b"}
    mc.source.write("nodes", [labelled if n == "n2" else node_object(n) for n in NODES])
    try:
        agent.wait(lambda s: s["generation"] > since and current(s), 1.5, "not current after a Node change")
    finally:
        mc.source.write("nodes", [node_object(n) for n in NODES])


def test_a_deleted_node_loses_its_routes_on_every_other_node(mc: MultiCluster) -> None:
    # n2 (n1's host-gw peer, n4's VXLAN peer) and n4 (everyone's VXLAN peer) go from the cluster:
    # n1 and n2 read it from the manifest directory, n4 from the list/watch server's watch.
    mc.source.write("nodes", [node_object("n1")])
    cidr4 = {n: pod_cidrs(n)[0] for n in NODES}
    cidr6 = {n: pod_cidrs(n)[1] for n in NODES}

    def gone() -> bool:
        return (not ({cidr4["n2"], cidr4["n4"]} & routes(mc, "n1").keys())
                and not ({cidr6["n2"], cidr6["n4"]} & routes(mc, "n1", 6).keys())
                and not fdb(mc, "n1") and not neighbours(mc, "n1")
                and cidr4["n4"] not in routes(mc, "n2") and not fdb(mc, "n2")
                and cidr4["n2"] not in routes(mc, "n4") and cidr6["n2"] not in routes(mc, "n4", 6)
                and vxlan_mac("n2") not in fdb(mc, "n4"))

    try:
        took = wait_until(gone, 1.0)
        assert took < 1.0
        assert cidr4["n1"] in routes(mc, "n2")  # the peer that stays keeps its route
    finally:
        mc.source.write("nodes", [node_object(n) for n in NODES])
        wait_until(lambda: all_routed(mc), 5.0)
    assert mc.ping_failures(4) == []


def test_routes_neighbours_and_fdb_entries_deleted_by_hand_come_back(mc: MultiCluster) -> None:
    before = {n: mc.routing(n)["repairs"] for n in ("n1", "n4")}
    n1 = mc.nodes["n1"]
    n1.sh(f"ip route del {pod_cidrs('n2')[0]} {PROTO}; ip route del {pod_cidrs('n4')[0]} {PROTO}; "
          f"ip -6 route del {pod_cidrs('n4')[1]} {PROTO}; ip neigh del 10.244.4.0 dev podnet.vx4; "
          f"bridge fdb del {vxlan_mac('n4')} dev podnet.vx4 dst {node_ip(4)}")
    mc.nodes["n4"].sh(f"ip route del {pod_cidrs('n1')[0]} {PROTO}; "
                      f"bridge fdb del {vxlan_mac('n2')} dev podnet.vx4 dst {node_ip(2)}")

    def back() -> bool:
        return ({pod_cidrs("n2")[0], pod_cidrs("n4")[0]} <= routes(mc, "n1").keys()
                and pod_cidrs("n4")[1] in routes(mc, "n1", 6)
                and neighbours(mc, "n1") == {"10.244.4.0": vxlan_mac("n4")}
                and fdb(mc, "n1") == {vxlan_mac("n4"): node_ip(4)}
                and pod_cidrs("n1")[0] in routes(mc, "n4")
                and fdb(mc, "n4") == {vxlan_mac("n1"): node_ip(1), vxlan_mac("n2"): node_ip(2)})

    wait_until(back, PERIOD + 1.0)
    # Each entry deleted above was there to be repaired (the reads above cannot tell it from none).
    assert mc.routing("n1")["repairs"] >= before["n1"] + 5 and mc.routing("n4")["repairs"] >= before["n4"] + 2
    assert mc.ping_failures(4) == []


# ---- a Service across nodes -----------------------------------------------------------------------

SERVICE = ("10.96.0.10", "fd96::10")


def service_objects(name: str, endpoints: list[PodProc]) -> list[dict[str, Any]]:
    """A dual-stack ClusterIP Service on port 80 and its slices, the endpoints on their nodes."""
    ports = [{"name": "http", "port": PORT, "protocol": "TCP"}]
    out: list[dict[str, Any]] = [{
        "apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "x", "name": name},
        "spec": {"type": "ClusterIP", "clusterIP": SERVICE[0], "clusterIPs": list(SERVICE),
                 "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack",
                 "ports": [{**ports[0], "targetPort": PORT}]}}]
    for family in (4, 6):
        out.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "addressType": f"IPv{family}",
                    "metadata": {"namespace": "x", "name": f"{name}-ipv{family}",
                                 "labels": {"kubernetes.io/service-name": name}},
                    "endpoints": [{"addresses": [p.address(family)], "conditions": {"ready": True},
                                   "nodeName": p.node} for p in endpoints],
                    "ports": ports})
    return out


def test_a_cluster_ip_reaches_endpoints_on_other_nodes(mc: MultiCluster) -> None:
    endpoints = [mc.pods["x/a-n2"], mc.pods["x/a-n4"]]  # on a bridged and the routed-around node
    mc.write("services", service_objects("web", endpoints))
    try:
        for agent in mc.agents.values():  # every node's proxy holds both endpoints of both families
            agent.wait(lambda s: s["services"]["proxied"] == 1 and s["services"]["endpoints"] == 4, 10.0,
                       "did not proxy the Service")
        # From a bridged node, the routed one and the one behind the router (its agent reads the API).
        for client in (mc.pods["y/c-n1"], mc.pods["y/c-n2"], mc.pods["y/c-n4"]):
            for family in (4, 6):
                answers = [a for a in client.probe([(SERVICE[family // 6], PORT)] * 24, 2.0) if a]
                assert len(answers) == 24, f"{client.key} -> {SERVICE[family // 6]}: {answers}"
                seen = Counter(a.split()[0] for a in answers)
                # Each endpoint answered, and saw the client's own address: no SNAT on the way.
                assert set(seen) == {p.key for p in endpoints}, seen
                assert {a.split()[1] for a in answers} == {client.address(family)}, answers
    finally:
        mc.write("services", [])


def node_port_objects(name: str, cluster_ip: str, node_port: int, external: str,
                      endpoints: list[PodProc]) -> list[dict[str, Any]]:
    """An IPv4 NodePort Service (its external traffic policy ``external``) and its slice."""
    ports = [{"name": "http", "port": PORT, "protocol": "TCP"}]
    return [{"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "x", "name": name},
             "spec": {"type": "NodePort", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                      "ipFamilies": ["IPv4"], "externalTrafficPolicy": external,
                      "ports": [{**ports[0], "targetPort": PORT, "nodePort": node_port}]}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
             "metadata": {"namespace": "x", "name": f"{name}-ipv4",
                          "labels": {"kubernetes.io/service-name": name}},
             "endpoints": [{"addresses": [p.address(4)], "conditions": {"ready": True}, "nodeName": p.node}
                           for p in endpoints],
             "ports": ports}]


def test_node_ports_from_outside_the_cluster(mc: MultiCluster) -> None:
    """A client outside the cluster (the router) at a NodePort: with externalTrafficPolicy Cluster any
    node sends it to endpoints on other nodes (masqueraded, so replies come back through that node);
    with Local only a node with an endpoint answers, from that endpoint, which sees the real client."""
    endpoints = [mc.pods["x/a-n2"], mc.pods["x/a-n4"]]
    mc.write("services", [*node_port_objects("np-cluster", "10.96.0.11", 30080, "Cluster", endpoints),
                          *node_port_objects("np-local", "10.96.0.12", 30081, "Local", endpoints)])
    try:
        for agent in mc.agents.values():
            agent.wait(lambda s: s["services"]["proxied"] == 2
                       and all(row["cluster_total"] == 2 for row in s["services"]["table"]), 10.0,
                       "did not proxy the Services")
        n1_addresses = {a["local"] for link in json.loads(mc.nodes["n1"].sh("ip -4 -j addr show"))
                        for a in link.get("addr_info", [])}
        answers = mc.outside([(node_ip(1), 30080)] * 16, 2.0)
        assert all(answers), answers
        assert {a.split()[0] for a in answers if a} == {p.key for p in endpoints}, answers
        assert {a.split()[1] for a in answers if a} <= n1_addresses, answers  # masqueraded by n1
        # Local: each node with an endpoint answers from its own, to the router's own address on
        # that link; n1 (no endpoint) drops.
        local = mc.outside([(node_ip(2), 30081)] * 4 + [(node_ip(4), 30081)] * 4 + [(node_ip(1), 30081)], 1.0)
        assert local[:4] == ["x/a-n2 10.80.0.254"] * 4, local
        assert local[4:8] == ["x/a-n4 10.81.0.254"] * 4, local
        assert local[8] is None, local
    finally:
        mc.write("services", [])


def test_pods_leave_the_cluster_masqueraded_and_reach_nodes_as_themselves(mc: MultiCluster) -> None:
    """A server outside the cluster (the router) sees each pod's node address; a server on another
    node's own address (host network) sees the pod's."""
    servers = {"outside": mc.underlay.router, "host-n2": mc.nodes["n2"]}
    procs = {name: podproc(ns, name) for name, ns in servers.items()}
    try:
        for proc in procs.values():
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        clients = [mc.pods["y/c-n1"], mc.pods["y/c-n4"], mc.pods["x/b-n2"]]
        for client in clients:
            node = int(client.node[1:])
            # The router's address on the client node's link: outside every pod range and Node.
            outside = "10.81.0.254" if node == 4 else "10.80.0.254"
            got = client.probe([(outside, PORT), (node_ip(2), PORT)], 2.0)
            assert got[0] == f"outside {node_ip(node)}", (client.key, got)
            if client.node != "n2":
                assert got[1] == f"host-n2 {client.address(4)}", (client.key, got)
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait(10)


# ---- NetworkPolicy across nodes -------------------------------------------------------------------

def pod_is(name: str) -> dict[str, str]:
    return {"pod": name}


CASES = {
    "deny-all-ingress": [policy("x", "deny-ingress", sel(), types=[ING])],
    "allow-from-pod-selector": [
        policy("x", "a-allows-b", sel(pod_is("a")), ingress=[rule(peer(sel(pod_is("b"))))])],
    "allow-from-namespace-selector": [
        policy("x", "a-allows-ns-y", sel(pod_is("a")), ingress=[rule(peer(nss=sel({NS_LABEL: "y"})))])],
}


def probe_matrix(c: MultiCluster, cells: list[tuple[str, str]], family: int,
                 timeout: float) -> dict[tuple[str, str], str | None]:
    """Each cell's answer (the server's line) or None, every client's probes at once."""
    by_src: dict[str, list[str]] = {}
    for src, dst in cells:
        by_src.setdefault(src, []).append(dst)

    def run(src: str) -> list[str | None]:
        return c.pods[src].probe([(c.pods[d].address(family), PORT) for d in by_src[src]], timeout)
    got = parallel(run, by_src)
    return {(src, dst): answer for src, dsts in by_src.items()
            for dst, answer in zip(dsts, got[src], strict=True)}


@pytest.mark.parametrize("case", CASES)
def test_network_policy_with_client_and_server_on_different_nodes(mc: MultiCluster, case: str) -> None:
    keys = list(mc.pods)
    cells = [(s, d) for s in keys for d in keys if mc.pods[s].node != mc.pods[d].node]
    mc.apply_policies(CASES[case])
    try:
        inputs = PolicyInputs.of(mc.namespaces, [p.model() for p in mc.pods.values()], mc.policies)
        for family in (4, 6):
            want = {(s, d): allowed(inputs, mc.pods[s].model(), mc.pods[d].model(), PORT, Protocol.TCP,
                                    family=family) for s, d in cells}
            assert not all(want.values()) and any(want.values())  # the case has both outcomes
            got = probe_matrix(mc, cells, family, 0.5)
            again = [cell for cell in cells if got[cell] is None and want[cell]]  # a first packet may wait
            got.update(probe_matrix(mc, again, family, 2.0))
            wrong = {cell: (want[cell], got[cell]) for cell in cells if want[cell] != (got[cell] is not None)}
            assert not wrong, f"{case} IPv{family}: (semantics, kernel's answer) differ:\n{wrong}"
            # The far pod saw the client's own address (traffic inside the cluster is not masqueraded).
            seen = {cell: answer.split()[1] for cell, answer in got.items() if answer is not None}
            assert all(seen[(s, d)] == mc.pods[s].address(family) for s, d in seen), seen
    finally:
        mc.apply_policies([])


def test_no_agent_reports_an_error(mc: MultiCluster) -> None:
    """Last: nothing above made any agent fail a sync, a route pass or a masquerade update."""
    for name, agent in mc.agents.items():
        s = agent.status()
        errors = {"policy": s["policy_sync"]["failed"], "table": s["table"]["failed_commits"],
                  "services": s["services"]["failed"], "routing": s["routing"]["failed"],
                  "cni_config": s["cni_config"]["refusals"], "egress": s["egress_masquerade"]["last_error"],
                  "invalid_policies": s["invalid_policies"]}
        assert not any(errors.values()), f"{name}: {errors}"
