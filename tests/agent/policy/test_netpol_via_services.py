"""NetworkPolicy conformance through Services: the e2e world of ``test_netpol_e2e`` (namespaces x, y,
z with pods a, b, c; x/y bridged, z routed; the real ``podnet agent``), plus one ClusterIP Service
per pod (ports 80 and 81, TCP and UDP, its pod the only endpoint). A representative set of the
upstream scenarios is probed at ``ClusterIP:port`` instead of the pod's address, and must give the
same truth table as the pod-address semantics (and upstream's hand-written expectation): policy
judges the connection after DNAT, on the real destination pod.

A pod reaching itself through its own Service is hairpin traffic (masqueraded to the node), which
upstream leaves out as well; those diagonal cells are not compared.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from nsutil import namespaces
from podnet.agent.model import Protocol

from .cluster import BLOCKED_TIMEOUT, RETRY_TIMEOUT, Cell, Cluster, Reach, build, comparison, table
from .world import EGR, ING, TCP, UDP, block, peer, policy, port, rule, sel

pytestmark = pytest.mark.root

NAME = "kubernetes.io/metadata.name"


def vip(index: int) -> str:
    return f"10.96.1.{10 + index}"


def service_objects(cluster: Cluster) -> list[dict[str, Any]]:
    """One Service and one EndpointSlice per pod, as the API server would serve them."""
    out: list[dict[str, Any]] = []
    ports = [(p, proto) for p in (80, 81) for proto in ("TCP", "UDP")]
    for i, (key, pod) in enumerate(cluster.pods.items()):
        space, name = key.split("/")
        svc = f"svc-{name}"
        out.append({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": space, "name": svc},
                    "spec": {"type": "ClusterIP", "clusterIP": vip(i), "clusterIPs": [vip(i)],
                             "ports": [{"name": f"p{p}-{pr.lower()}", "port": p, "targetPort": p,
                                        "protocol": pr} for p, pr in ports]}})
        out.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                    "metadata": {"namespace": space, "name": f"{svc}-1",
                                 "labels": {"kubernetes.io/service-name": svc}},
                    "endpoints": [{"addresses": [str(pod.ip4)], "conditions": {"ready": True},
                                   "nodeName": "node-1"}],
                    "ports": [{"name": f"p{p}-{pr.lower()}", "port": p, "protocol": pr} for p, pr in ports]})
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with namespaces() as factory:
        cluster = build(factory, tmp_path_factory.mktemp("netpol-svc"))
        try:
            cluster.manifests.write("services", service_objects(cluster))
            deadline = time.monotonic() + 10
            while cluster.agent.status()["services"]["proxied"] != len(cluster.pods):
                assert time.monotonic() < deadline, cluster.agent.status()
                time.sleep(0.02)
            yield cluster
        finally:
            cluster.agent.stop()


@pytest.fixture
def cluster(world: Cluster) -> Cluster:
    world.reset()
    world.apply([])
    return world


def probe(cluster: Cluster, cells: Iterable[Cell], p: int, proto: Protocol,
          timeout: float) -> dict[Cell, bool]:
    """As ``Cluster.probe``, each destination addressed by its Service's ClusterIP."""
    index = {key: i for i, key in enumerate(cluster.pods)}
    by_src: dict[str, list[str]] = {}
    for src, dst in cells:
        by_src.setdefault(src, []).append(dst)

    def run(src: str) -> dict[Cell, bool]:
        proc = cluster.pods[src].proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        dsts = by_src[src]
        proc.stdin.write("".join(f"{i} {vip(index[d])} {p} {proto.value.lower()} {timeout}\n"
                                 for i, d in enumerate(dsts)))
        proc.stdin.flush()
        got = dict(proc.stdout.readline().split() for _ in dsts)
        return {(src, d): got[str(i)] == "1" for i, d in enumerate(dsts)}

    out: dict[Cell, bool] = {}
    with ThreadPoolExecutor(len(by_src) or 1) as pool:
        for part in pool.map(run, by_src):
            out.update(part)
    return out


def check(cluster: Cluster, p: int, proto: Protocol, hand: Reach) -> None:
    keys = list(cluster.pods)
    want = {c: v for c, v in cluster.oracle(p, proto).items() if c[0] != c[1]}
    off = {c for c in want if want[c] != hand.cells[c]}
    assert not off, comparison("semantics vs upstream's expectation", want, hand.cells, keys)
    cells = list(want)
    got = probe(cluster, cells, p, proto, BLOCKED_TIMEOUT)
    again = [c for c in cells if not got[c] and want[c]]
    if again:
        got.update(probe(cluster, again, p, proto, RETRY_TIMEOUT))
    shown = {c: got.get(c, True) for c in hand.cells}
    print(f"\nvia ClusterIP {proto.value}/{p}\n{table(shown, keys)}")
    full_got, full_want = shown, {c: want.get(c, True) for c in hand.cells}
    assert got == want, comparison(f"kernel via ClusterIP vs semantics, {proto.value}/{p}", full_got,
                                   full_want, keys)


def reach(cluster: Cluster) -> Reach:
    return Reach(cluster.pods)


def pod_is(name: str) -> dict[str, str]:
    return {"pod": name}


def ns_is(name: str) -> dict[str, str]:
    return {NAME: name}


def test_no_policy_everything_reachable(cluster: Cluster) -> None:
    check(cluster, 80, TCP, reach(cluster))
    check(cluster, 81, UDP, reach(cluster))


def test_default_deny_ingress(cluster: Cluster) -> None:
    cluster.apply([policy("x", "deny-ingress", sel(), types=[ING])])
    check(cluster, 80, TCP, reach(cluster).peer(to="x/*"))


def test_default_deny_all(cluster: Cluster) -> None:
    cluster.apply([policy("x", "deny-all", sel(), types=[ING, EGR])])
    check(cluster, 80, TCP, reach(cluster).peer(to="x/*").peer(frm="x/*"))


def test_allow_from_pods_in_server_namespace_by_pod_selector(cluster: Cluster) -> None:
    cluster.apply([policy("x", "x-a-allows-x-b", sel(pod_is("a")), ingress=[rule(peer(sel(pod_is("b"))))])])
    check(cluster, 80, TCP, reach(cluster).ingress("x/a", False).peer("x/b", "x/a", True))


def test_allow_only_from_a_different_namespace_by_namespace_selector(cluster: Cluster) -> None:
    cluster.apply([policy("x", "allow-client-a-via-ns-selector", sel(pod_is("a")),
                          ingress=[rule(peer(nss=sel(ns_is("y"))))])])
    check(cluster, 80, TCP, reach(cluster).peer("x/*", "x/a").peer("z/*", "x/a"))


def test_pod_selector_and_namespace_selector(cluster: Cluster) -> None:
    not_x = sel(None, (NAME, "NotIn", ["x"]))
    cluster.apply([policy("x", "allow-ns-y-podselector-and-nsselector", sel(pod_is("a")),
                          ingress=[rule(peer(sel(pod_is("b")), not_x))])])
    want = reach(cluster).ingress("x/a", False).peer("y/b", "x/a", True).peer("z/b", "x/a", True)
    check(cluster, 80, TCP, want)


def test_ports(cluster: Cluster) -> None:
    cluster.apply([policy("x", "allow-client-a-via-ns-selector", sel(pod_is("a")),
                          ingress=[rule(peer(nss=sel(ns_is("y"))), ports=[port(81, TCP)])])])
    check(cluster, 81, TCP, reach(cluster).peer("x/*", "x/a").peer("y/*", "x/a", True).peer("z/*", "x/a"))
    check(cluster, 80, TCP, reach(cluster).ingress("x/a", False))


def test_allow_ingress_on_one_named_port(cluster: Cluster) -> None:
    cluster.apply([policy("x", "allow-all", sel(), ingress=[rule(ports=[port("serve-81-tcp")])])])
    check(cluster, 81, TCP, reach(cluster))
    check(cluster, 80, TCP, reach(cluster).peer(to="x/*"))


def test_allow_egress_on_one_named_port(cluster: Cluster) -> None:
    cluster.apply([policy("x", "allow-egress", sel(), egress=[rule(ports=[port("serve-80-tcp")])],
                          types=[EGR])])
    check(cluster, 80, TCP, reach(cluster))
    check(cluster, 81, TCP, reach(cluster).peer(frm="x/*"))


def test_deny_egress_from_all_pods_in_a_namespace(cluster: Cluster) -> None:
    cluster.apply([policy("x", "deny-egress-ns-x", sel(), types=[EGR])])
    check(cluster, 80, TCP, reach(cluster).peer(frm="x/*"))


def test_egress_to_a_server_in_another_namespace_by_pod_and_namespace_selector(cluster: Cluster) -> None:
    cluster.apply([policy("x", "allow-to-ns-y-pod-a", sel(pod_is("a")),
                          egress=[rule(peer(sel(pod_is("a")), sel(ns_is("y"))))], types=[EGR])])
    check(cluster, 80, TCP, reach(cluster).egress("x/a", False).peer("x/a", "y/a", True))


def test_egress_to_a_server_in_a_cidr_block(cluster: Cluster) -> None:
    yb = cluster.pods["y/b"].ip4
    cluster.apply([policy("x", "allow-client-a-via-cidr-egress-rule", sel(pod_is("a")),
                          egress=[rule(block(f"{yb}/32"))], types=[EGR])])
    check(cluster, 80, TCP, reach(cluster).egress("x/a", False).peer("x/a", "y/b", True))


def test_udp_ports(cluster: Cluster) -> None:
    cluster.apply([policy("x", "allow-ingress-on-port-81-ns-x", sel(pod_is("a")),
                          ingress=[rule(peer(nss=sel(ns_is("y"))), ports=[port(81, UDP)])])])
    check(cluster, 81, UDP, reach(cluster).peer("x/*", "x/a").peer("z/*", "x/a"))
