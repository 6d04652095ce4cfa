"""NetworkPolicy in real namespaces: the upstream e2e model (kubernetes
test/e2e/network/netpol/network_policy.go), one scenario per upstream case, enforced by the real
``podnet agent`` (one process for the module, in the node namespace): each scenario's Namespaces,
Pods and NetworkPolicies are written to its manifest directory, the agent commits them through the
table writer (policy updates and deletes, pod and namespace relabels are incremental commits), and
the matrix is probed once the agent says the kernel is current. The result is compared cell by cell
with agent.policy.semantics (and, for the upstream cases, with upstream's own hand-written
expectation). Every truth table is printed (``pytest -s`` shows them).

Every pod also has a dual-stack ClusterIP Service of its own, proxied by the same agent, and every
matrix is probed twice: at the pod addresses and at ``ClusterIP:port`` (all of one policy state's
matrices, both ways, at once: ``checks``). Policy judges a connection after DNAT, on the real
destination pod, so both must give the semantics' table; a pod reaching itself through its own
Service (hairpin) is left out, as upstream leaves it out.

x and y pods share one bridge (podnet-bridge), z pods are routed (podnet-routed): the matrix covers
bridged, routed and mixed paths. Upstream's SCTP cases cannot send SCTP here (the kernel has no SCTP
module); they are run with TCP and UDP probes, which is what matters for them: an SCTP rule must
load and open nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import ip_network

import pytest

from nsutil import namespaces
from podnet.agent.model import NetworkPolicy

from .cluster import Cluster, Expect, Reach, build, check, checks
from .world import EGR, ING, SCTP, TCP, UDP, block, peer, policy, port, rule, sel

pytestmark = pytest.mark.root

NAME = "kubernetes.io/metadata.name"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with namespaces() as factory:
        cluster = build(factory, tmp_path_factory.mktemp("netpol"), services=True)
        try:
            yield cluster
        finally:
            cluster.agent.stop()


@pytest.fixture
def cluster(world: Cluster) -> Cluster:
    world.reset()
    world.apply([])
    return world


def reach(cluster: Cluster) -> Reach:
    return Reach(cluster.pods)


def pod_is(name: str) -> dict[str, str]:
    return {"pod": name}


def ns_is(name: str) -> dict[str, str]:
    return {NAME: name}


# -- upstream: NetworkPolicy between server and client (TCP) -----------------------------------------

def test_no_policy_everything_reachable(cluster: Cluster) -> None:
    checks(cluster, Expect(80, TCP, reach(cluster)), Expect(81, UDP, reach(cluster)),
           Expect(80, TCP, reach(cluster), family=6))


def test_default_deny_ingress(cluster: Cluster) -> None:
    cluster.apply([policy("x", "deny-ingress", sel(), types=[ING])])
    checks(cluster, Expect(80, TCP, reach(cluster).peer(to="x/*")),
           Expect(80, TCP, reach(cluster).peer(to="x/*"), family=6))


def test_default_deny_all(cluster: Cluster) -> None:
    cluster.apply([policy("x", "deny-all", sel(), types=[ING, EGR])])
    check(cluster, 80, TCP, reach(cluster).peer(to="x/*").peer(frm="x/*"))


def test_allow_from_pods_in_server_namespace_by_pod_selector(cluster: Cluster) -> None:
    cluster.apply([policy("x", "x-a-allows-x-b", sel(pod_is("a")), ingress=[rule(peer(sel(pod_is("b"))))])])
    check(cluster, 80, TCP, reach(cluster).ingress("x/a", False).peer("x/b", "x/a", True))


def test_allow_ingress_for_a_target(cluster: Cluster) -> None:
    cluster.apply([policy("x", "deny-all", sel(), types=[ING]),
                   policy("x", "allow-all-to-a", sel(pod_is("a")), ingress=[rule(peer(sel(), sel()))])])
    check(cluster, 80, TCP, reach(cluster).ingress("x/*", False).ingress("x/a", True))


def test_allow_ingress_from_pods_in_all_namespaces(cluster: Cluster) -> None:
    cluster.apply([policy("x", "allow-from-another-ns", sel(pod_is("a")), ingress=[rule(peer(nss=sel()))])])
    check(cluster, 80, TCP, reach(cluster))


def test_allow_only_from_a_different_namespace_by_namespace_selector(cluster: Cluster) -> None:
    cluster.apply([policy("x", "allow-client-a-via-ns-selector", sel(pod_is("a")),
                          ingress=[rule(peer(nss=sel(ns_is("y"))))])])
    check(cluster, 80, TCP, reach(cluster).peer("x/*", "x/a").peer("z/*", "x/a"))


def test_pod_selector_with_match_expressions(cluster: Cluster) -> None:
    cluster.apply([policy("x", "x-a-allows-x-b", sel(pod_is("a")),
                          ingress=[rule(peer(sel(None, ("pod", "In", ["b"]))))])])
    check(cluster, 80, TCP, reach(cluster).ingress("x/a", False).peer("x/b", "x/a", True))


def test_namespace_selector_with_match_expressions(cluster: Cluster) -> None:
    cluster.apply([policy("x", "allow-ns-y-match-selector", sel(pod_is("a")),
                          ingress=[rule(peer(nss=sel(None, (NAME, "In", ["y"]))))])])
    check(cluster, 80, TCP, reach(cluster).peer("x/*", "x/a").peer("z/*", "x/a"))


def test_pod_selector_or_namespace_selector(cluster: Cluster) -> None:
    not_x = sel(None, (NAME, "NotIn", ["x"]))
    cluster.apply([policy("x", "allow-ns-y-match-selector", sel(pod_is("a")),
                          ingress=[rule(peer(nss=not_x), peer(sel(pod_is("b"))))])])
    check(cluster, 80, TCP, reach(cluster).peer("x/a", "x/a").peer("x/c", "x/a"))


def test_pod_selector_and_namespace_selector(cluster: Cluster) -> None:
    not_x = sel(None, (NAME, "NotIn", ["x"]))
    cluster.apply([policy("x", "allow-ns-y-podselector-and-nsselector", sel(pod_is("a")),
                          ingress=[rule(peer(sel(pod_is("b")), not_x))])])
    want = reach(cluster).ingress("x/a", False).peer("y/b", "x/a", True).peer("z/b", "x/a", True)
    check(cluster, 80, TCP, want)


def test_multiple_pod_selectors_and_namespace_selectors(cluster: Cluster) -> None:
    not_x = sel(None, (NAME, "NotIn", ["x"]))
    cluster.apply([policy("x", "allow-ns-y-z-pod-b-c", sel(pod_is("a")),
                          ingress=[rule(peer(sel(None, ("pod", "In", ["b", "c"])), not_x))])])
    check(cluster, 80, TCP, reach(cluster).peer("x/*", "x/a").peer("y/a", "x/a").peer("z/a", "x/a"))


def test_any_pod_selectors(cluster: Cluster) -> None:
    cluster.apply([policy("x", "allow-ns-x-pod-b-c", sel(pod_is("a")),
                          ingress=[rule(peer(sel(pod_is("b"))), peer(sel(pod_is("c"))))])])
    want = reach(cluster).ingress("x/a", False).peer("x/b", "x/a", True).peer("x/c", "x/a", True)
    check(cluster, 80, TCP, want)


def test_only_from_a_pod_in_a_different_namespace(cluster: Cluster) -> None:
    cluster.apply([policy("x", "allow-ns-y-pod-a-via-namespace-pod-selector", sel(pod_is("a")),
                          ingress=[rule(peer(sel(pod_is("a")), sel(ns_is("y"))))])])
    check(cluster, 80, TCP, reach(cluster).ingress("x/a", False).peer("y/a", "x/a", True))


def test_ports(cluster: Cluster) -> None:
    cluster.apply([policy("x", "allow-client-a-via-ns-selector", sel(pod_is("a")),
                          ingress=[rule(peer(nss=sel(ns_is("y"))), ports=[port(81, TCP)])])])
    from_y = reach(cluster).peer("x/*", "x/a").peer("y/*", "x/a", True).peer("z/*", "x/a")
    checks(cluster, Expect(81, TCP, from_y), Expect(80, TCP, reach(cluster).ingress("x/a", False)))


def test_multiple_stacked_policies_with_overlapping_pod_selectors(cluster: Cluster) -> None:
    def allow(name: str, number: int) -> NetworkPolicy:
        return policy("x", name, sel(pod_is("a")),
                      ingress=[rule(peer(nss=sel(ns_is("y"))), ports=[port(number, TCP)])])
    allowed_from_y = reach(cluster).peer("x/*", "x/a").peer("y/*", "x/a", True).peer("z/*", "x/a")
    cluster.apply([allow("allow-client-a-via-ns-selector", 81)])
    checks(cluster, Expect(81, TCP, allowed_from_y), Expect(80, TCP, reach(cluster).ingress("x/a", False)))
    cluster.apply([*cluster.policies, allow("allow-client-a-via-ns-selector-80", 80)])
    check(cluster, 80, TCP, allowed_from_y)


def test_allow_all_policy(cluster: Cluster) -> None:
    cluster.apply([policy("x", "allow-all", sel(), ingress=[rule()])])
    checks(cluster, Expect(80, TCP, reach(cluster)), Expect(81, TCP, reach(cluster)))


def test_allow_ingress_on_one_named_port(cluster: Cluster) -> None:
    cluster.apply([policy("x", "allow-all", sel(), ingress=[rule(ports=[port("serve-81-tcp")])])])
    checks(cluster, Expect(81, TCP, reach(cluster)), Expect(80, TCP, reach(cluster).peer(to="x/*")),
           Expect(81, UDP, reach(cluster).peer(to="x/*")))


def test_allow_ingress_from_namespace_on_one_named_port(cluster: Cluster) -> None:
    cluster.apply([policy("x", "allow-client-a-via-ns-selector-80", sel(pod_is("a")),
                          ingress=[rule(peer(nss=sel(ns_is("y"))), ports=[port("serve-80-tcp", TCP)])])])
    checks(cluster, Expect(80, TCP, reach(cluster).peer("x/*", "x/a").peer("z/*", "x/a")),
           Expect(81, TCP, reach(cluster).ingress("x/a", False)))


def test_allow_egress_on_one_named_port(cluster: Cluster) -> None:
    cluster.apply([policy("x", "allow-egress", sel(), egress=[rule(ports=[port("serve-80-tcp")])],
                          types=[EGR])])
    checks(cluster, Expect(80, TCP, reach(cluster)), Expect(81, TCP, reach(cluster).peer(frm="x/*")),
           Expect(80, UDP, reach(cluster).peer(frm="x/*")))


def test_updated_policy(cluster: Cluster) -> None:
    cluster.apply([policy("x", "allow-all-mutate-to-deny-all", sel(), ingress=[rule()])])
    check(cluster, 81, TCP, reach(cluster))
    cluster.apply([policy("x", "allow-all-mutate-to-deny-all", sel(), types=[ING])])
    check(cluster, 81, TCP, reach(cluster).peer(to="x/*"))


def test_allow_ingress_from_updated_namespace(cluster: Cluster) -> None:
    cluster.apply([policy("x", "allow-client-a-via-ns-selector", sel(pod_is("a")),
                          ingress=[rule(peer(nss=sel({"ns2": "updated"})))])])
    check(cluster, 80, TCP, reach(cluster).ingress("x/a", False))
    cluster.label_namespace("y", {"ns2": "updated"})
    cluster.apply()
    check(cluster, 80, TCP, reach(cluster).ingress("x/a", False).peer("y/*", "x/a", True))


def test_allow_ingress_from_updated_pod(cluster: Cluster) -> None:
    labels = {"pod": "b", "pod2": "updated"}
    cluster.apply([policy("x", "allow-client-a-via-pod-selector", sel(pod_is("a")),
                          ingress=[rule(peer(sel(labels)))])])
    check(cluster, 80, TCP, reach(cluster).ingress("x/a", False))
    cluster.label_pod("x/b", labels)
    cluster.apply()
    check(cluster, 80, TCP, reach(cluster).ingress("x/a", False).peer("x/b", "x/a", True))


def test_deny_ingress_from_pods_in_other_namespaces(cluster: Cluster) -> None:
    cluster.apply([policy("x", "deny-empty-policy", sel(), ingress=[rule(peer(sel()))])])
    check(cluster, 80, TCP, reach(cluster).peer("y/*", "x/*").peer("z/*", "x/*"))


def test_deny_ingress_to_updated_pod(cluster: Cluster) -> None:
    cluster.apply([policy("x", "deny-ingress-via-label-selector", sel({"target": "isolated"}), types=[ING])])
    check(cluster, 80, TCP, reach(cluster))
    cluster.label_pod("x/a", {"pod": "a", "target": "isolated"})
    cluster.apply()
    check(cluster, 80, TCP, reach(cluster).ingress("x/a", False))


def test_deny_egress_by_pod_selector(cluster: Cluster) -> None:
    cluster.apply([policy("x", "deny-egress-pod-a", sel(pod_is("a")), types=[EGR])])
    check(cluster, 80, TCP, reach(cluster).egress("x/a", False))


def test_deny_egress_from_all_pods_in_a_namespace(cluster: Cluster) -> None:
    cluster.apply([policy("x", "deny-egress-ns-x", sel(), types=[EGR])])
    checks(cluster, Expect(80, TCP, reach(cluster).peer(frm="x/*")),
           Expect(80, UDP, reach(cluster).peer(frm="x/*"), family=6))


def test_ingress_and_egress_together(cluster: Cluster) -> None:
    cluster.apply([policy("x", "allow-client-a-via-pod-selector", sel(pod_is("a")),
                          ingress=[rule(peer(sel(pod_is("b"))))], egress=[rule(ports=[port(80)])],
                          types=[EGR, ING])])
    from_xb = reach(cluster).ingress("x/a", False).peer("x/b", "x/a", True)
    and_no_egress = reach(cluster).ingress("x/a", False).egress("x/a", False).peer("x/b", "x/a", True)
    checks(cluster, Expect(80, TCP, from_xb), Expect(81, TCP, and_no_egress))


def test_egress_denied_on_the_client_even_if_the_server_allows_it(cluster: Cluster) -> None:
    from_xa = rule(peer(sel(pod_is("a")), sel(ns_is("x"))))
    cluster.apply([
        policy("x", "allow-to-ns-y-pod-a", sel(pod_is("a")),
               egress=[rule(peer(sel(pod_is("a")), sel(ns_is("y"))))], types=[EGR]),
        policy("y", "allow-from-xa-on-ya-match-selector", sel(pod_is("a")), ingress=[from_xa]),
        policy("y", "allow-from-xa-on-yb-match-selector", sel(pod_is("b")), ingress=[from_xa]),
    ])
    check(cluster, 80, TCP, reach(cluster).egress("x/a", False).ingress("y/a", False)
          .peer("x/a", "y/a", True).ingress("y/b", False))


def test_egress_to_a_server_in_another_namespace_by_pod_and_namespace_selector(cluster: Cluster) -> None:
    cluster.apply([policy("x", "allow-to-ns-y-pod-a", sel(pod_is("a")),
                          egress=[rule(peer(sel(pod_is("a")), sel(ns_is("y"))))], types=[EGR])])
    check(cluster, 80, TCP, reach(cluster).egress("x/a", False).peer("x/a", "y/a", True))


def test_ingress_any_port_on_a_specific_protocol(cluster: Cluster) -> None:
    cluster.apply([policy("x", "allow-ingress-by-proto", sel(pod_is("a")),
                          ingress=[rule(ports=[port(None, TCP)])])])
    checks(cluster, Expect(80, TCP, reach(cluster)), Expect(80, UDP, reach(cluster).ingress("x/a", False)))


def test_multiple_ingress_policies_allow_all_takes_precedence(cluster: Cluster) -> None:
    cluster.apply([policy("x", "allow-ingress-port-80", sel(), ingress=[rule(ports=[port(80)])])])
    check(cluster, 81, TCP, reach(cluster).peer(to="x/*"))
    cluster.apply([*cluster.policies, policy("x", "allow-ingress", sel(), ingress=[rule()])])
    check(cluster, 81, TCP, reach(cluster))


def test_multiple_egress_policies_allow_all_takes_precedence(cluster: Cluster) -> None:
    cluster.apply([policy("x", "allow-egress-port-80", sel(), egress=[rule(ports=[port(80)])], types=[EGR])])
    check(cluster, 81, TCP, reach(cluster).peer(frm="x/*"))
    cluster.apply([*cluster.policies, policy("x", "allow-egress", sel(), egress=[rule()], types=[EGR])])
    check(cluster, 81, TCP, reach(cluster))


def test_policies_stop_being_enforced_once_deleted(cluster: Cluster) -> None:
    cluster.apply([policy("x", "deny-all", sel(), types=[ING, EGR])])
    check(cluster, 80, TCP, reach(cluster).peer(frm="x/*").peer(to="x/*"))
    cluster.apply([])
    check(cluster, 80, TCP, reach(cluster))


def test_egress_to_a_server_in_a_cidr_block(cluster: Cluster) -> None:
    yb = cluster.pods["y/b"].ip4
    cluster.apply([policy("x", "allow-client-a-via-cidr-egress-rule", sel(pod_is("a")),
                          egress=[rule(block(f"{yb}/32"))], types=[EGR])])
    check(cluster, 80, TCP, reach(cluster).egress("x/a", False).peer("x/a", "y/b", True))


def _large_cidr(cluster: Cluster, key: str) -> str:
    return str(ip_network(f"{cluster.pods[key].ip4}/4", strict=False))


def test_except_clause_in_egress_cidr_block(cluster: Cluster) -> None:
    xb = cluster.pods["x/b"].ip4
    cluster.apply([policy("x", "allow-client-a-via-cidr-egress-rule", sel(pod_is("a")),
                          egress=[rule(block(_large_cidr(cluster, "x/b"), f"{xb}/32"))], types=[EGR])])
    check(cluster, 80, TCP, reach(cluster).peer("x/a", "x/b"))


def test_ip_in_both_cidr_and_except_is_allowed_by_another_rule(cluster: Cluster) -> None:
    xb = cluster.pods["x/b"].ip4
    name = "allow-client-a-via-cidr-egress-rule"
    cluster.apply([policy("x", name, sel(pod_is("a")),
                          egress=[rule(block(_large_cidr(cluster, "x/b"), f"{xb}/32"))], types=[EGR])])
    check(cluster, 80, TCP, reach(cluster).peer("x/a", "x/b"))
    cluster.apply([policy("x", name, sel(pod_is("a")), egress=[rule(block(f"{xb}/32"))], types=[EGR])])
    check(cluster, 80, TCP, reach(cluster).egress("x/a", False).peer("x/a", "x/b", True))


def test_ingress_and_egress_controlled_independently(cluster: Cluster) -> None:
    cluster.apply([policy("x", "allow-egress-for-target", sel(pod_is("a")), egress=[rule()], types=[EGR])])
    check(cluster, 80, TCP, reach(cluster))
    deny = policy("x", "deny-ingress-via-label-selector", sel(pod_is("a")), types=[ING])
    cluster.apply([*cluster.policies, deny])
    check(cluster, 80, TCP, reach(cluster).ingress("x/a", False))


def test_sctp_is_not_mistaken_for_tcp(cluster: Cluster) -> None:
    cluster.apply([policy("x", "deny-ingress", sel(), types=[ING]),
                   policy("x", "allow-only-sctp-ingress-on-port-81", sel(pod_is("a")),
                          ingress=[rule(ports=[port(81, SCTP)])])])
    checks(cluster, Expect(81, TCP, reach(cluster).peer(to="x/*")),
           Expect(81, UDP, reach(cluster).peer(to="x/*")))


def test_pods_selected_by_an_sctp_policy_are_isolated(cluster: Cluster) -> None:
    cluster.apply([policy("x", "allow-only-sctp-ingress-on-port-80", sel(pod_is("a")),
                          ingress=[rule(ports=[port(80, SCTP)])])])
    checks(cluster, Expect(81, TCP, reach(cluster).ingress("x/a", False)),
           Expect(80, TCP, reach(cluster).ingress("x/a", False)))


def test_udp_only_policy_does_not_allow_tcp(cluster: Cluster) -> None:
    cluster.apply([policy("x", "allow-only-udp-ingress-on-port-81", sel(pod_is("a")),
                          ingress=[rule(ports=[port(81, UDP)])])])
    checks(cluster, Expect(81, TCP, reach(cluster).ingress("x/a", False)), Expect(81, UDP, reach(cluster)))


def test_namespace_selector_match_labels_default_namespace_label(cluster: Cluster) -> None:
    cluster.apply([policy("x", "allow-client-a-via-ns-selector-for-immutable-ns-label", sel(pod_is("a")),
                          ingress=[rule(peer(nss=sel(ns_is("y"))))])])
    check(cluster, 80, TCP, reach(cluster).peer("x/*", "x/a").peer("z/*", "x/a"))


def test_namespace_selector_match_expressions_default_namespace_label(cluster: Cluster) -> None:
    cluster.apply([policy("x", "allow-ns-y-match-selector-for-immutable-ns-label", sel(pod_is("a")),
                          egress=[rule(peer(nss=sel(None, (NAME, "NotIn", ["y"]))))], types=[EGR])])
    check(cluster, 80, TCP, reach(cluster).peer("x/a", "y/*"))


# -- upstream: the same over UDP -------------------------------------------------------------------

def test_udp_default_deny_ingress(cluster: Cluster) -> None:
    cluster.apply([policy("x", "deny-all", sel(), types=[ING])])
    check(cluster, 80, UDP, reach(cluster).peer(to="x/*"))


def test_udp_ports(cluster: Cluster) -> None:
    cluster.apply([policy("x", "allow-ingress-on-port-81-ns-x", sel(pod_is("a")),
                          ingress=[rule(peer(nss=sel(ns_is("y"))), ports=[port(81, UDP)])])])
    checks(cluster, Expect(81, UDP, reach(cluster).peer("x/*", "x/a").peer("z/*", "x/a")),
           Expect(81, TCP, reach(cluster).ingress("x/a", False)))


def test_udp_only_from_a_pod_in_a_different_namespace(cluster: Cluster) -> None:
    cluster.apply([policy("x", "allow-ns-y-pod-a-via-namespace-pod-selector", sel(pod_is("a")),
                          ingress=[rule(peer(sel(pod_is("a")), sel(ns_is("y"))))])])
    check(cluster, 80, UDP, reach(cluster).ingress("x/a", False).peer("y/a", "x/a", True))


# -- upstream: the SCTP cases (probed with TCP and UDP: no SCTP here) -------------------------------

def test_sctp_default_deny_ingress(cluster: Cluster) -> None:
    cluster.apply([policy("x", "deny-all", sel(), types=[ING])])
    check(cluster, 80, TCP, reach(cluster).peer(to="x/*"))


def test_sctp_ports_open_no_other_protocol(cluster: Cluster) -> None:
    cluster.apply([policy("x", "allow-ingress-on-port-81-ns-x", sel(pod_is("a")),
                          ingress=[rule(peer(nss=sel(ns_is("y"))), ports=[port(81, SCTP)])])])
    checks(cluster, Expect(81, TCP, reach(cluster).ingress("x/a", False)),
           Expect(81, UDP, reach(cluster).ingress("x/a", False)))


def test_sctp_only_from_a_pod_in_a_different_namespace(cluster: Cluster) -> None:
    cluster.apply([policy("x", "allow-ns-y-pod-a-via-namespace-pod-selector", sel(pod_is("a")),
                          ingress=[rule(peer(sel(pod_is("a")), sel(ns_is("y"))))])])
    check(cluster, 80, TCP, reach(cluster).ingress("x/a", False).peer("y/a", "x/a", True))


# -- podnet's own cases ----------------------------------------------------------------------------

def test_invalid_policy_fails_closed_and_others_keep_working(cluster: Cluster) -> None:
    cluster.apply([policy("x", "broken", sel(pod_is("a")), ingress=[rule()], error="spec.ingress[0]: bad"),
                   policy("y", "deny-ingress", sel(), types=[ING])])
    check(cluster, 80, TCP, reach(cluster).ingress("x/a", False).egress("x/a", False).peer(to="y/*"))


def test_node_reaches_its_isolated_pods(cluster: Cluster) -> None:
    """Kubelet probes: the node's own traffic to its pods is never policy's to drop."""
    cluster.apply([policy(space, "deny-all", sel(), types=[ING, EGR]) for space in ("x", "y", "z")])
    check(cluster, 80, TCP, reach(cluster).peer())
    for key in ("x/a", "z/b"):
        for family in (4, 6):
            address = cluster.pods[key].address(family)
            script = ("import socket,sys; s=socket.create_connection((sys.argv[1], 80), timeout=2); "
                      "print('reached')")
            assert cluster.node.run(["python3", "-c", script, address]).stdout.strip() == "reached"


def test_ipv6_ip_block_with_except(cluster: Cluster) -> None:
    yb = cluster.pods["y/b"].ip6
    cluster.apply([policy("x", "v6-only", sel(pod_is("a")),
                          egress=[rule(block("fd00:100::/64", f"{yb}/128"))], types=[EGR])])
    v6 = reach(cluster).egress("x/a", False).peer("x/a", "x/*", True).peer("x/a", "y/*", True)
    checks(cluster, Expect(80, TCP, v6.peer("x/a", "y/b", False), family=6),
           Expect(80, TCP, reach(cluster).egress("x/a", False), family=4))


def test_end_port_range_and_named_udp_egress(cluster: Cluster) -> None:
    from_y = peer(nss=sel(ns_is("y")))
    cluster.apply([policy("x", "range", sel(), ingress=[rule(from_y, ports=[port(80, TCP, 81)])]),
                   policy("y", "udp-out", sel(), egress=[rule(ports=[port("serve-81-udp", UDP)])],
                          types=[EGR])])
    checks(cluster, Expect(81, TCP, reach(cluster).peer(to="x/*").peer(frm="y/*")),
           Expect(81, UDP, reach(cluster).peer(to="x/*")),
           Expect(80, UDP, reach(cluster).peer(to="x/*").peer(frm="y/*"), family=6))


def test_changes_were_incremental_commits(world: Cluster) -> None:
    """Runs last: after the module's scenarios, the agent made one full commit (its first) and
    every later change was a diff; nothing failed and no verify found drift."""
    status = world.agent.status()
    sync, table = status["policy_sync"], status["table"]
    print(f"\nagent after the scenarios: {sync}, {table}")
    assert sync["failed"] == 0 and table["failed_commits"] == 0, status
    assert status["services"]["failed"] == 0 and status["services"]["proxied"] == len(world.vips), status
    # One full commit in all: the first, made by whichever sync sharing the table commits first
    # (the service proxy's may be first).
    assert sync["full"] <= 1 and table["full_resyncs"] == 1, status
    assert table["drift_repairs"] == 0, status
    assert sync["syncs"] >= 2, status
