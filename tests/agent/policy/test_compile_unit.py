"""agent.policy.compile: the table's structure — rules independent of pods, stable names, fail
closed — and that what it emits loads into a real kernel (one root test)."""

from __future__ import annotations

import json

import pytest

from nsutil import NetnsFactory
from podnet.agent.model import NetworkPolicy, Pod
from podnet.agent.policy import compile
from podnet.agent.policy.names import isolation_chain, policy_prefix
from podnet.dataplane.contribution import Contribution

from .nftload import element_count, render, rule_count
from .world import EGR, ING, SCTP, TCP, UDP, block, ns, peer, pod, policy, port, rule, sel

NAMESPACES = {n.name: n for n in (ns("x", team="a"), ns("y", team="b"))}


def pods(count: int, node: str = "n1") -> list[Pod]:
    """``count`` pods spread over x and y, half app=a, half app=b, dual stack, with a named port."""
    out = []
    for i in range(count):
        space = "xy"[i % 2]
        out.append(pod(space, f"p{i}", f"10.{i // 250}.{i % 250}.{1 + i % 2}", f"fd00::{i + 1:x}",
                       node=node, app="ab"[(i // 2) % 2], ports=[("web", 8000 + i % 3, TCP)]))
    return out


POLICIES = (
    policy("x", "deny-all", sel(), types=[ING, EGR]),
    policy("x", "allow-b", sel({"app": "a"}), ingress=[
        rule(peer(sel({"app": "b"}), sel({"team": "b"})), block("192.0.2.0/24", "192.0.2.128/25"),
             ports=[port(80), port(81, UDP), port(1000, TCP, 2000), port("web"), port(None, SCTP)]),
        rule(ports=[port(7)])]),
    policy("y", "egress", sel({"app": "b"}), egress=[rule(peer(nss=sel()), ports=[port("web")]), rule()],
           types=[EGR]),
    policy("y", "sctp-only", sel({"app": "a"}), ingress=[rule(ports=[port(80, SCTP)])]),
    # Overlapping ports and blocks: interval sets refuse overlapping elements.
    policy("y", "overlaps", sel({"app": "b"}), ingress=[rule(
        block("0.0.0.0/0", "10.0.0.0/8"), block("10.0.0.0/24"), block("::/0"), peer(nss=sel()),
        ports=[port(None, TCP), port(80), port(1000, TCP, 2000), port(1500, TCP, 3000), port(3001, TCP)])]),
)


def build(count: int, *policies: NetworkPolicy) -> Contribution:
    return compile(NAMESPACES, pods(count), policies or POLICIES, "n1")


def chain(c: Contribution, name: str) -> tuple[str, ...]:
    return next(ch.rules for ch in c.chains if ch.name == name)


def test_rule_count_does_not_grow_with_pods() -> None:
    small, big = build(10), build(1000)
    assert rule_count(small) == rule_count(big)
    assert [c.name for c in small.chains] == [c.name for c in big.chains]
    assert [s.name for s in small.sets] == [s.name for s in big.sets]
    assert element_count(big) > 50 * element_count(small) // 10


def test_interval_sets_only_where_a_rule_can_hold_networks_or_ranges() -> None:
    """libnftables reads every interval set before each element command: only ipBlock peers and
    port ranges get one, decided by the policy, so the declarations never move with pods."""
    small, big = build(10), build(1000)
    assert small.sets == big.sets
    flags = {s.name: "interval" in s.flags for s in big.sets}
    allow_b, egress = policy_prefix(("x", "allow-b"), ING), policy_prefix(("y", "egress"), EGR)
    assert flags[f"{allow_b}-0-peers4"] and flags[f"{allow_b}-0-ports"]  # an ipBlock; an endPort
    assert not flags[f"{allow_b}-1-ports"] and not flags[f"{egress}-0-peers4"]  # port 7; selectors
    assert not flags[f"{allow_b}-0-named4"]
    two_ports = rule(peer(sel()), ports=[port(80), port(81)])
    plain = build(10, policy("x", "two-ports", sel(), ingress=[two_ports]))
    two = policy_prefix(("x", "two-ports"), ING)
    assert not any("interval" in s.flags for s in plain.sets if s.name.startswith(two))
    assert set(plain.elements[f"{two}-0-ports"]) == {"tcp . 80", "tcp . 81"}  # adjacent, not merged


def test_names_are_stable_short_and_say_what_they_are() -> None:
    a, b = build(20), build(20)
    assert a == b
    names = [c.name for c in a.chains] + [s.name for s in a.sets]
    assert all(len(n) <= 63 for n in names)
    fixed = {"policy-ingress", "policy-egress", "ingress-ip4", "ingress-ip6", "egress-ip4", "egress-ip6"}
    assert fixed <= set(names)
    prefix = policy_prefix(("x", "allow-b"), ING)
    assert prefix.startswith("pol-") and prefix.endswith("-in") and prefix in names
    assert f"{prefix}-0-peers4" in names and f"{prefix}-0-ports" in names and f"{prefix}-0-named6" in names
    # A hash of the object, not of its position: another policy list keeps this one's names.
    c = compile(NAMESPACES, pods(20), (POLICIES[1],), "n1")
    assert prefix in [ch.name for ch in c.chains]


def test_only_local_pods_are_isolated_and_remote_pods_are_peers() -> None:
    remote = pod("y", "far", "10.9.0.1", node="n2", app="b")
    local = pod("x", "near", "10.8.0.1", node="n1", app="a")
    c = compile(NAMESPACES, [remote, local], POLICIES[:2], "n1")
    assert set(c.elements["ingress-ip4"]) == {"10.8.0.1"}
    assert "10.9.0.1" in c.elements[f"{policy_prefix(('x', 'allow-b'), ING)}-0-peers4"]


def test_verdict_map_points_at_the_chain_of_the_pods_policy_set() -> None:
    c = build(8)
    xa = next(p for p in pods(8) if p.namespace == "x" and p.labels["app"] == "a")
    target = isolation_chain((("x", "allow-b"), ("x", "deny-all")), ING)
    assert c.elements["ingress-ip4"][str(xa.ips[0])] == f"goto {target}"
    assert c.elements["ingress-ip6"][str(xa.ips[1])] == f"goto {target}"
    # deny-all has no rules: no jump for it, and the chain ends in drop.
    jump = f"jump {policy_prefix(('x', 'allow-b'), ING)}"
    assert chain(c, target) == ("ct state invalid drop", jump, "drop")
    xb = next(p for p in pods(8) if p.namespace == "x" and p.labels["app"] == "b")
    verdict = c.elements["egress-ip4"][str(xb.ips[0])]
    assert verdict is not None and chain(c, verdict.split()[1]) == ("ct state invalid drop", "drop")


def test_elements_ip_block_except_ports_and_sctp() -> None:
    c = build(8)
    prefix = policy_prefix(("x", "allow-b"), ING)
    peers = c.elements[f"{prefix}-0-peers4"]
    assert "192.0.2.0/25" in peers and not any(k.startswith("192.0.2.128") for k in peers)
    y_b = [str(p.ips[0]) for p in pods(8) if p.namespace == "y" and p.labels["app"] == "b"]
    assert set(y_b) < set(peers)
    want = {"tcp . 80", "udp . 81", "tcp . 1000-2000", "sctp . 0-65535"}
    assert set(c.elements[f"{prefix}-0-ports"]) == want
    sctp = policy_prefix(("y", "sctp-only"), ING)
    assert set(c.elements[f"{sctp}-0-ports"]) == {"sctp . 80"}
    assert chain(c, sctp) == (f"meta l4proto . th dport @{sctp}-0-ports accept",)


def test_named_ports_are_resolved_on_each_destination() -> None:
    c = build(12)
    prefix = policy_prefix(("x", "allow-b"), ING)
    selected = [p for p in pods(12) if p.namespace == "x" and p.labels["app"] == "a"]
    want = {f"{p.ips[0]} . tcp . {p.ports[0].port}" for p in selected}
    assert set(c.elements[f"{prefix}-0-named4"]) == want
    egress = policy_prefix(("y", "egress"), EGR)
    # Egress: every pod the peers take in (all namespaces), each with its own number.
    want = {f"{p.ips[1]} . tcp . {p.ports[0].port}" for p in pods(12)}
    assert set(c.elements[f"{egress}-0-named6"]) == want
    assert f"ip6 daddr . meta l4proto . th dport @{egress}-0-named6 accept" in chain(c, egress)
    assert chain(c, egress)[-1] == "accept"   # rule 1: no peers, no ports


def test_invalid_policy_fails_closed_both_ways() -> None:
    bad = policy("x", "bad", sel({"app": "a"}), ingress=[rule()], error="unreadable")
    c = compile(NAMESPACES, pods(8), [bad], "n1")
    xa = [p for p in pods(8) if p.namespace == "x" and p.labels["app"] == "a"]
    target_in, target_eg = isolation_chain((bad.key,), ING), isolation_chain((bad.key,), EGR)
    for p in xa:
        assert c.elements["ingress-ip4"][str(p.ips[0])] == f"goto {target_in}"
        assert c.elements["egress-ip6"][str(p.ips[1])] == f"goto {target_eg}"
    assert chain(c, target_in) == chain(c, target_eg) == ("ct state invalid drop", "drop")
    assert not any(ch.name.startswith("pol-") for ch in c.chains)


def test_no_policies_no_isolation() -> None:
    c = compile(NAMESPACES, pods(8), [], "n1")
    assert not any(c.elements.values())
    assert {ch.name for ch in c.chains} == {"policy-ingress", "policy-egress"}


@pytest.mark.root
def test_compiled_table_loads_into_the_kernel(netns: NetnsFactory) -> None:
    """Every construct (SCTP ports included, with no SCTP module here) loads, at 1000 pods."""
    node = netns("node")
    contribution = build(1000)
    node.run(["nft", "-f", "-"], input=render(contribution))
    listed = json.loads(node.run(["nft", "-j", "list", "table", "inet", "podnet"]).stdout)["nftables"]
    rules = [x for x in listed if "rule" in x]
    assert len(rules) == rule_count(contribution)
    sets = {x.get("set", x.get("map", {})).get("name") for x in listed if "set" in x or "map" in x}
    assert {s.name for s in contribution.sets} == sets
    got = json.loads(node.run(["nft", "-j", "list", "map", "inet", "podnet", "ingress-ip4"]).stdout)
    elems = next(x["map"] for x in got["nftables"] if "map" in x)["elem"]
    assert len(elems) == len(contribution.elements["ingress-ip4"]) > 400


def test_overlapping_ports_and_blocks_become_disjoint_elements() -> None:
    c = build(8)
    prefix = policy_prefix(("y", "overlaps"), ING)
    assert set(c.elements[f"{prefix}-0-ports"]) == {"tcp . 0-65535"}
    peers = set(c.elements[f"{prefix}-0-peers4"])
    assert "10.0.0.0/24" in peers and "0.0.0.0/5" in peers
    assert not any(p.startswith("10.0.0.1") for p in peers)  # pods inside a block are the block
    assert set(c.elements[f"{prefix}-0-peers6"]) == {"::/0"}
    allow_b = policy_prefix(("x", "allow-b"), ING)
    assert set(c.elements[f"{allow_b}-1-ports"]) == {"tcp . 7"}
