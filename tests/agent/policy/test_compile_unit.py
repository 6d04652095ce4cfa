"""agent.policy.compile: the table's structure — rules independent of pods, stable names, fail
closed — and that what it emits loads into a real kernel (one root test)."""

from __future__ import annotations

import json

import pytest

from nsutil import NetnsFactory
from podnet.agent.model import Direction, NetworkPolicy, Pod
from podnet.agent.policy import compile
from podnet.agent.policy.names import isolation_chain, peer_set, policy_prefix, port_set
from podnet.dataplane.contribution import Contribution
from podnet.dataplane.union import check_structure

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


ALLOW_B = ("x", "allow-b")


def set_of(key: tuple[str, str], direction: Direction, number: int, kind: str) -> str:
    """The name of a set rule ``number`` of a policy in POLICIES looks up: peers and ports are
    shared by every rule naming the same ones, named ports are the policy's own."""
    p = next(q for q in POLICIES if q.key == key)
    r = (p.ingress if direction is ING else p.egress)[number]
    if kind.startswith("peers"):
        return peer_set(p.namespace, r.peers, int(kind[-1]))
    return port_set(r.ports) if kind == "ports" else f"{policy_prefix(key, direction)}-{number}-{kind}"


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
    allow_b = policy_prefix(ALLOW_B, ING)
    assert flags[set_of(ALLOW_B, ING, 0, "peers4")]  # an ipBlock
    assert flags[set_of(ALLOW_B, ING, 0, "ports")]  # an endPort
    assert not flags[set_of(ALLOW_B, ING, 1, "ports")]  # port 7
    assert not flags[set_of(("y", "egress"), EGR, 0, "peers4")]  # selectors
    assert not flags[f"{allow_b}-0-named4"]
    two_ports = rule(peer(sel()), ports=[port(80), port(81)])
    plain = build(10, policy("x", "two-ports", sel(), ingress=[two_ports]))
    two = policy_prefix(("x", "two-ports"), ING)
    ports = port_set(two_ports.ports)
    shared = (ports, peer_set("x", two_ports.peers, 4))
    assert not any("interval" in s.flags for s in plain.sets if s.name in shared)
    assert set(plain.elements[ports]) == {"tcp . 80", "tcp . 81"}  # adjacent, not merged
    assert two in [c.name for c in plain.chains]


def test_names_are_stable_short_and_say_what_they_are() -> None:
    a, b = build(20), build(20)
    assert a == b
    names = [c.name for c in a.chains] + [s.name for s in a.sets]
    assert all(len(n) <= 63 for n in names)
    fixed = {"policy-ingress", "policy-egress", "ingress-ip4", "ingress-ip6", "egress-ip4", "egress-ip6"}
    assert fixed <= set(names)
    prefix = policy_prefix(("x", "allow-b"), ING)
    assert prefix.startswith("pol-") and prefix.endswith("-in") and prefix in names
    assert set_of(ALLOW_B, ING, 0, "peers4") in names and set_of(ALLOW_B, ING, 0, "ports") in names
    assert f"{prefix}-0-named6" in names
    # A hash of the object, not of its position: another policy list keeps this one's names.
    c = compile(NAMESPACES, pods(20), (POLICIES[1],), "n1")
    assert prefix in [ch.name for ch in c.chains]


def test_only_local_pods_are_isolated_and_remote_pods_are_peers() -> None:
    remote = pod("y", "far", "10.9.0.1", node="n2", app="b")
    local = pod("x", "near", "10.8.0.1", node="n1", app="a")
    c = compile(NAMESPACES, [remote, local], POLICIES[:2], "n1")
    assert set(c.elements["ingress-ip4"]) == {"10.8.0.1"}
    assert "10.9.0.1" in c.elements[set_of(ALLOW_B, ING, 0, "peers4")]


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
    peers = c.elements[set_of(ALLOW_B, ING, 0, "peers4")]
    assert "192.0.2.0/25" in peers and not any(k.startswith("192.0.2.128") for k in peers)
    y_b = [str(p.ips[0]) for p in pods(8) if p.namespace == "y" and p.labels["app"] == "b"]
    assert set(y_b) < set(peers)
    want = {"tcp . 80", "udp . 81", "tcp . 1000-2000", "sctp . 0-65535"}
    assert set(c.elements[set_of(ALLOW_B, ING, 0, "ports")]) == want
    sctp, sctp_ports = policy_prefix(("y", "sctp-only"), ING), set_of(("y", "sctp-only"), ING, 0, "ports")
    assert set(c.elements[sctp_ports]) == {"sctp . 80"}
    assert chain(c, sctp) == (f"meta l4proto . th dport @{sctp_ports} accept",)


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
    assert set(c.elements[set_of(("y", "overlaps"), ING, 0, "ports")]) == {"tcp . 0-65535"}
    peers = set(c.elements[set_of(("y", "overlaps"), ING, 0, "peers4")])
    assert "10.0.0.0/24" in peers and "0.0.0.0/5" in peers
    assert not any(p.startswith("10.0.0.1") for p in peers)  # pods inside a block are the block
    assert set(c.elements[set_of(("y", "overlaps"), ING, 0, "peers6")]) == {"::/0"}
    assert set(c.elements[set_of(ALLOW_B, ING, 1, "ports")]) == {"tcp . 7"}


def test_rules_naming_the_same_peers_or_ports_share_one_set() -> None:
    """Peers are one set per distinct peer list (and namespace, when its selectors mean the
    policy's own), ports one per distinct port list, whichever policies name them."""
    same = [rule(peer(sel({"app": "b"})), peer(nss=sel({"team": "b"})), ports=[port(80)])]
    wide = [rule(peer(nss=sel({"team": "b"})), ports=[port(80)])]
    pols = (policy("x", "one", sel({"app": "a"}), ingress=same),
            policy("x", "two", sel({"app": "b"}), ingress=same),
            policy("y", "three", sel({"app": "a"}), ingress=same),
            policy("x", "four", sel(), ingress=wide), policy("y", "five", sel(), ingress=wide))
    names = {s.name for s in build(20, *pols).sets}
    assert sum(n.startswith("ports-") for n in names) == 1
    assert {n for n in names if n.startswith("peers4-")} == {
        peer_set("x", same[0].peers, 4), peer_set("y", same[0].peers, 4), peer_set("x", wide[0].peers, 4)}
    assert peer_set("x", wide[0].peers, 4) == peer_set("y", wide[0].peers, 4)


def test_two_rules_of_one_policy_with_the_same_peers_declare_their_set_once() -> None:
    twice = policy("x", "twice", sel(), ingress=[rule(peer(sel({"app": "b"})), ports=[port(80)]),
                                                 rule(peer(sel({"app": "b"})), ports=[port(81)])])
    c = build(8, twice)
    names = [s.name for s in c.sets]
    assert len(names) == len(set(names)) and peer_set("x", twice.ingress[0].peers, 4) in names
    check_structure("policy/x/twice", c)  # what the writer refuses a contribution for
