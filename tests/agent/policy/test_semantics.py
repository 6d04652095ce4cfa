"""agent.policy.semantics: the upstream meaning of NetworkPolicy, rule by rule (no root)."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from podnet.agent.model import NetworkPolicy, Pod
from podnet.agent.policy import EndpointError, ExplainError, Match, PolicyInputs, allowed, explain, verdict

from .world import EGR, ING, SCTP, TCP, UDP, block, ns, peer, pod, policy, port, rule, sel

NAMESPACES = {n.name: n for n in (ns("x", team="a"), ns("y", team="b"), ns("z"))}
XA = pod("x", "a", "10.0.0.1", "fd00::1", app="a", role="web",
         ports=[("serve-80-tcp", 80, TCP), ("serve-81-udp", 81, UDP)])
XB = pod("x", "b", "10.0.0.2", "fd00::2", app="b", ports=[("serve-80-tcp", 81, TCP)])
YA = pod("y", "a", "10.0.1.1", "fd00::101", app="a")
YB = pod("y", "b", "10.0.1.2", app="b", role="db")
ZC = pod("z", "c", "10.0.2.3", node="n2", app="c")
PODS = (XA, XB, YA, YB, ZC)
OUTSIDE = ip_address("192.0.2.9")


def world(*policies: NetworkPolicy, pods: tuple[Pod, ...] = PODS) -> PolicyInputs:
    return PolicyInputs.of(NAMESPACES, pods, policies, "n1")


def ok(w: PolicyInputs, src: Pod | str, dst: Pod | str, p: int = 80, proto: object = TCP) -> bool:
    s = ip_address(src) if isinstance(src, str) else src
    d = ip_address(dst) if isinstance(dst, str) else dst
    return allowed(w, s, d, p, proto)  # type: ignore[arg-type]


def test_no_policy_allows_everything() -> None:
    w = world()
    assert all(ok(w, s, d) for s in PODS for d in PODS)
    v = verdict(w, XA, YA, 80, TCP)
    assert not v.ingress.isolated and not v.egress.isolated and v.allowed


def test_isolation_only_for_selected_pods_and_declared_direction() -> None:
    w = world(policy("x", "deny-a", sel({"app": "a"}), types=[ING]))
    assert not ok(w, YA, XA) and not ok(w, XB, XA)
    assert ok(w, YA, XB)                       # x/b not selected
    assert ok(w, XA, YA)                       # x/a not isolated for egress
    assert ok(w, XA, XA)                       # a pod to itself never leaves it
    assert verdict(w, YA, XA, 80, TCP).ingress.selected_by == (("x", "deny-a"),)


def test_egress_isolation_checks_the_destination_side_rules() -> None:
    w = world(policy("x", "eg", sel({"app": "a"}), egress=[rule(peer(sel({"app": "b"})))], types=[EGR]))
    assert ok(w, XA, XB)                       # x/b is app=b in x
    assert not ok(w, XA, YB)                   # y/b: podSelector alone means the policy's namespace
    assert not ok(w, XA, str(OUTSIDE))
    assert ok(w, YA, XA)                       # ingress to x/a is not isolated
    assert verdict(w, XA, YB, 80, TCP).egress.isolated


def test_both_directions_must_allow() -> None:
    deny_in_y = policy("y", "deny", sel({"app": "b"}), types=[ING])
    allow_out_x = policy("x", "out", sel(), egress=[rule()], types=[EGR])
    w = world(deny_in_y, allow_out_x)
    v = verdict(w, XA, YB, 80, TCP)
    assert v.egress.allowed and not v.ingress.allowed and not v.allowed
    assert ok(w, XA, YA)


def test_policies_are_a_union() -> None:
    p1 = policy("x", "p1", sel({"app": "a"}), ingress=[rule(peer(sel({"app": "b"})))])
    p2 = policy("x", "p2", sel({"role": "web"}), ingress=[rule(peer(nss=sel({"team": "b"})))])
    w = world(p1, p2)
    assert ok(w, XB, XA) and ok(w, YA, XA) and ok(w, YB, XA)
    assert not ok(w, ZC, XA)
    assert set(verdict(w, ZC, XA, 80, TCP).ingress.selected_by) == {("x", "p1"), ("x", "p2")}
    assert verdict(w, YA, XA, 80, TCP).ingress.allowed_by == Match(("x", "p2"), 0, 0, None)


def test_namespace_and_pod_selector_in_one_peer_is_and_in_two_peers_is_or() -> None:
    both = policy("x", "and", sel({"app": "a"}), ingress=[rule(peer(sel({"app": "b"}), sel({"team": "b"})))])
    w = world(both)
    assert ok(w, YB, XA) and not ok(w, YA, XA) and not ok(w, XB, XA)
    either = policy("x", "or", sel({"app": "a"}),
                    ingress=[rule(peer(sel({"app": "b"})), peer(nss=sel({"team": "b"})))])
    w = world(either)
    assert ok(w, YB, XA) and ok(w, YA, XA) and ok(w, XB, XA) and not ok(w, ZC, XA)
    assert verdict(w, YA, XA, 80, TCP).ingress.allowed_by == Match(("x", "or"), 0, 1, None)


def test_empty_namespace_selector_is_every_namespace() -> None:
    w = world(policy("x", "all-ns", sel({"app": "a"}), ingress=[rule(peer(sel({"app": "b"}), sel()))]))
    assert ok(w, XB, XA) and ok(w, YB, XA) and not ok(w, YA, XA) and not ok(w, str(OUTSIDE), XA)


def test_match_expressions() -> None:
    exprs = sel(None, ("app", "In", ["b", "c"]), ("role", "DoesNotExist", []))
    w = world(policy("x", "e", sel({"app": "a"}), ingress=[rule(peer(exprs, sel()))]))
    assert ok(w, XB, XA) and ok(w, ZC, XA)
    assert not ok(w, YB, XA)                   # has role
    assert not ok(w, YA, XA)                   # app=a not in [b, c]
    w = world(policy("x", "e", sel(None, ("app", "NotIn", ["a"])),
                     ingress=[rule(peer(sel(None, ("role", "Exists", [])), sel()))]))
    assert ok(w, YB, XB) and not ok(w, YA, XB) and ok(w, YA, XA)


def test_ip_block_with_except_applies_to_pods_and_outside_addresses() -> None:
    w = world(policy("x", "cidr", sel({"app": "a"}), ingress=[rule(block("10.0.0.0/16", "10.0.1.0/24"))]))
    assert ok(w, XB, XA) and ok(w, ZC, XA)
    assert not ok(w, YA, XA) and not ok(w, YB, XA)   # in the except
    assert not ok(w, str(OUTSIDE), XA)
    assert ok(w, "10.0.9.9", XA)
    w = world(policy("x", "out", sel({"app": "a"}), egress=[rule(block("192.0.2.0/24"))], types=[EGR]))
    assert ok(w, XA, str(OUTSIDE)) and not ok(w, XA, XB)


def test_ip_block_of_one_family_never_matches_the_other() -> None:
    w = world(policy("x", "v4", sel({"app": "a"}), ingress=[rule(block("0.0.0.0/0"))]))
    assert allowed(w, XB, XA, 80, TCP, family=4)
    assert not allowed(w, XB, XA, 80, TCP, family=6)
    w = world(policy("x", "v6", sel({"app": "a"}), ingress=[rule(block("::/0"))]))
    assert allowed(w, XB, XA, 80, TCP, family=6) and not allowed(w, XB, XA, 80, TCP, family=4)


def test_named_ports_resolve_on_the_destination_pod_for_ingress_and_egress() -> None:
    ing = policy("x", "named", sel(), ingress=[rule(ports=[port("serve-80-tcp")])])
    w = world(ing)
    assert ok(w, YA, XA, 80) and not ok(w, YA, XA, 81)     # x/a: serve-80-tcp is 80
    assert ok(w, YA, XB, 81) and not ok(w, YA, XB, 80)     # x/b: serve-80-tcp is 81
    assert not ok(w, XB, XA, 80, UDP)                      # the name is for TCP only
    egr = policy("y", "named-out", sel({"app": "a"}), egress=[rule(ports=[port("serve-80-tcp")])],
                 types=[EGR])
    w = world(egr)
    assert ok(w, YA, XA, 80) and ok(w, YA, XB, 81)         # each destination's own number
    assert not ok(w, YA, XB, 80)
    assert not ok(w, YA, str(OUTSIDE), 80)                 # no pod there: no named port
    assert not ok(w, YA, YB, 80)                           # y/b has no such port


def test_end_port_ranges_are_inclusive() -> None:
    w = world(policy("x", "range", sel({"app": "a"}), ingress=[rule(ports=[port(80, TCP, 82)])]))
    assert [ok(w, YA, XA, p) for p in (79, 80, 81, 82, 83)] == [False, True, True, True, False]
    assert not ok(w, YA, XA, 81, UDP)


def test_protocol_without_port_and_protocols_never_mix() -> None:
    w = world(policy("x", "udp", sel({"app": "a"}), ingress=[rule(ports=[port(None, UDP)])]))
    assert ok(w, YA, XA, 5353, UDP) and ok(w, YA, XA, 81, UDP)
    assert not ok(w, YA, XA, 80, TCP)
    w = world(policy("x", "sctp", sel({"app": "a"}), ingress=[rule(ports=[port(80, SCTP)])]))
    assert ok(w, YA, XA, 80, SCTP)
    assert not ok(w, YA, XA, 80, TCP) and not ok(w, YA, XA, 80, UDP)


def test_rule_without_peers_or_ports_takes_everything() -> None:
    w = world(policy("x", "any", sel({"app": "a"}), ingress=[rule()]))
    assert ok(w, str(OUTSIDE), XA) and ok(w, ZC, XA, 1, UDP)
    assert verdict(w, ZC, XA, 1, UDP).ingress.allowed_by == Match(("x", "any"), 0, None, None)


def test_port_match_reports_its_index() -> None:
    w = world(policy("x", "ports", sel({"app": "a"}), ingress=[rule(ports=[port(81), port(80)])]))
    assert verdict(w, YA, XA, 80, TCP).ingress.allowed_by == Match(("x", "ports"), 0, None, 1)
    assert str(Match(("x", "ports"), 0, None, 1)) == "x/ports rule 0 (any peer, port 1)"


def test_invalid_policy_selects_both_directions_and_allows_nothing() -> None:
    bad = policy("x", "bad", sel({"app": "a"}), ingress=[rule()], types=[ING], error="spec.ingress: nonsense")
    good = policy("x", "good", sel({"app": "b"}), ingress=[rule()])
    w = world(bad, good)
    assert not ok(w, YA, XA) and not ok(w, XA, YA)        # fail closed, both ways
    assert ok(w, YA, XB)                                   # the other policy keeps working
    # Another policy may still allow what the invalid one selects (the union is unchanged).
    w = world(bad, policy("x", "also", sel({"app": "a"}), ingress=[rule()]))
    assert ok(w, YA, XA) and not ok(w, XA, YA)


def test_addresses_resolve_to_their_pods() -> None:
    w = world(policy("x", "deny", sel({"app": "a"})))
    assert not ok(w, "10.0.1.1", "10.0.0.1")             # 10.0.0.1 is x/a: isolated
    assert ok(w, "10.0.0.1", "10.0.1.1")
    assert ok(w, str(OUTSIDE), "10.0.0.2")


def test_terminal_and_host_network_pods_are_not_selected_or_peers() -> None:
    done = Pod("x", "done", labels={"app": "a"}, ips=(ip_address("10.0.0.9"),), node_name="n1", terminal=True)
    host = Pod("x", "host", labels={"app": "a"}, ips=(ip_address("10.9.9.9"),), node_name="n1",
               host_network=True)
    w = world(policy("x", "deny", sel({"app": "a"}), ingress=[rule(peer(sel({"app": "a"})))]),
              pods=(*PODS, done, host))
    assert ok(w, YA, done) and ok(w, YA, host)
    assert not ok(w, host, XA) and not ok(w, "10.0.0.9", XA)


def test_families() -> None:
    w = world()
    assert verdict(w, XA, XB, 80, TCP, family=6).dst_ip == ip_address("fd00::2")
    with pytest.raises(EndpointError, match="y/b has no IPv6 address"):
        verdict(w, XA, YB, 80, TCP, family=6)
    with pytest.raises(EndpointError, match="different address families"):
        verdict(w, ip_address("fd00::1"), XB, 80, TCP)


def test_namespace_unknown_to_the_model_has_no_labels() -> None:
    stray = pod("w", "s", "10.0.3.1", app="b")
    w = world(policy("x", "p", sel({"app": "a"}), ingress=[rule(peer(sel(), sel({"team": "b"})))]),
              pods=(*PODS, stray))
    assert not ok(w, stray, XA) and ok(w, YA, XA)
    w = world(policy("x", "p", sel({"app": "a"}), ingress=[rule(peer(sel(), sel()))]), pods=(*PODS, stray))
    assert ok(w, stray, XA)


def test_explain_says_who_isolates_and_which_rule_allows() -> None:
    w = world(policy("x", "p1", sel({"app": "a"}), ingress=[rule(peer(sel({"app": "b"})), ports=[port(80)])]),
              policy("x", "out", sel({"app": "b"}), types=[EGR]))
    text = explain(w, "y/a", "x/a", "80/tcp")
    assert text.splitlines() == [
        "y/a (10.0.1.1) -> x/a (10.0.0.1) TCP/80: DENIED",
        "  egress of y/a (10.0.1.1): not isolated (no policy selects it for egress)",
        "  ingress of x/a (10.0.0.1): isolated by x/p1; no rule allows it",
    ]
    assert "ALLOWED" in explain(w, "10.0.0.1", "y/a", "80")
    text = explain(w, "x/b", "x/a", "80", family=6)
    assert "x/b (fd00::2) -> x/a (fd00::1) TCP/80: DENIED" in text
    assert "egress of x/b (fd00::2): isolated by x/out; no rule allows it" in text
    assert "allowed by x/p1 rule 0 (peer 0, port 0)" in text
    assert "never leaves" in explain(w, "x/a", "x/a", "81/UDP")


@pytest.mark.parametrize(("src", "dst", "port", "message"), [
    ("x/nope", "x/a", "80", "no pod x/nope in the model"),
    ("x", "x/a", "80", "'x' is neither an IP address nor namespace/name"),
    ("x/a", "x/b/c", "80", "neither an IP address"),
    ("x/a", "x/b", "80/icmp", "protocol 'icmp' is not TCP, UDP or SCTP"),
    ("x/a", "x/b", "http", "port 'http' is not a number"),
    ("x/a", "x/b", "0/tcp", "port '0' is not a number"),
    ("x/a", "y/b", "80", None),
    ("fd00::1", "y/b", "80", "different address families"),
])
def test_explain_bad_input_is_a_clear_error(src: str, dst: str, port: str, message: str | None) -> None:
    w = world()
    if message is None:
        assert "ALLOWED" in explain(w, src, dst, port)
        return
    with pytest.raises(ExplainError, match=message):
        explain(w, src, dst, port)
