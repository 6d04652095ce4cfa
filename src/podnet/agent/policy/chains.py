"""The statements and sets of compiled policy (the design is in :mod:`podnet.agent.policy.compile`):
the base chains, one isolation chain per distinct set of isolating policies, and one policy's own
chains and sets. Each function builds one owner's part from what it is given, nothing more."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from podnet.agent.model import Direction, NetworkPolicy, Pod, Rule
from podnet.agent.policy.addresses import (
    has_port_ranges,
    named_elements,
    needs_intervals,
    peer_elements,
    port_elements,
)
from podnet.agent.policy.index import PodIndex
from podnet.agent.policy.inputs import rules_of
from podnet.agent.policy.names import (
    EGRESS_CHAIN,
    INGRESS_CHAIN,
    isolation_chain,
    peer_set,
    policy_prefix,
    port_set,
    verdict_map,
)
from podnet.dataplane.contribution import Chain, Contribution, Set

FAMILIES = (4, 6)
ADDR = {4: ("ip", "ipv4_addr"), 6: ("ip6", "ipv6_addr")}
ND_TYPES = "nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert"
# Egress runs first; both are filter-type chains so they see the same packets as other filters.
BASE = {Direction.EGRESS: (EGRESS_CHAIN, 0, "saddr"), Direction.INGRESS: (INGRESS_CHAIN, 1, "daddr")}
DIRECTIONS = (Direction.EGRESS, Direction.INGRESS)
PolicyKey = tuple[str, str]


class _Builder:
    def __init__(self) -> None:
        self.chains: list[Chain] = []
        self.sets: list[Set] = []
        self.elements: dict[str, dict[str, str | None]] = {}

    def add_set(self, decl: Set, elements: Mapping[str, str | None]) -> None:
        if decl.name in self.elements:  # a shared set two rules of this policy both look up
            return
        self.sets.append(decl)
        self.elements[decl.name] = dict(elements)

    def build(self) -> Contribution:
        return Contribution(tuple(sorted(self.chains, key=lambda c: c.name)),
                            tuple(sorted(self.sets, key=lambda s: s.name)), self.elements)


def base_chain(direction: Direction) -> Chain:
    name, priority, field = BASE[direction]
    return Chain(name, type="filter", hook="forward", priority=priority, policy="accept", rules=(
        "ct state established,related accept",
        f"icmpv6 type {{ {ND_TYPES} }} accept",
        *(f"{ADDR[f][0]} {field} vmap @{verdict_map(direction, f)}" for f in FAMILIES),
    ))


def isolation(direction: Direction, keys: tuple[PolicyKey, ...], with_rules: Sequence[PolicyKey]) -> Chain:
    """The chain of pods isolated in ``direction`` by exactly the policies ``keys``: a jump to the
    chain of each of them that has rules in this direction, then drop."""
    jumps = [f"jump {policy_prefix(k, direction)}" for k in keys if k in with_rules]
    return Chain(isolation_chain(keys, direction), rules=("ct state invalid drop", *jumps, "drop"))


def verdict_map_decl(direction: Direction, family: int) -> Set:
    return Set(verdict_map(direction, family), (ADDR[family][1],), value_type="verdict")


def policy_part(index: PodIndex, policy: NetworkPolicy,
                selected: Mapping[Direction, list[Pod]]) -> Contribution:
    """One policy's chains and sets, for the directions in which it isolates some local pod
    (``selected``: those pods). Empty when it has no rules there (it isolates, allows nothing)."""
    out = _Builder()
    for direction in DIRECTIONS:
        if selected.get(direction):
            _compile_policy(out, index, policy, direction, selected[direction])
    return out.build()


def _compile_policy(out: _Builder, index: PodIndex, policy: NetworkPolicy, direction: Direction,
                    selected: list[Pod]) -> None:
    rules = rules_of(policy, direction)
    if not rules:
        return
    prefix = policy_prefix(policy.key, direction)
    statements: list[str] = []
    for number, rule in enumerate(rules):
        statements.extend(_compile_rule(out, index, policy, direction, f"{prefix}-{number}", rule, selected))
    out.chains.append(Chain(prefix, rules=tuple(statements)))


def _compile_rule(out: _Builder, index: PodIndex, policy: NetworkPolicy, direction: Direction,
                  name: str, rule: Rule, selected: list[Pod]) -> list[str]:
    """The statements of one policy rule, declaring the sets they look up."""
    peer_field = "saddr" if direction is Direction.INGRESS else "daddr"
    comment = f"{policy.namespace}/{policy.name} {direction.value.lower()}"[:120]
    peer_match = {f: "" for f in FAMILIES}
    if rule.peers:
        intervals = ("interval",) if needs_intervals(rule) else ()
        for f in FAMILIES:
            # Shared by every rule with these peers (seen from this namespace): one set, whoever
            # declares it, filled once per snapshot.
            peers = Set(peer_set(policy.namespace, rule.peers, f), (ADDR[f][1],), flags=intervals)
            elements = index.memo.get(peers.name)
            if elements is None:
                elements = index.memo[peers.name] = peer_elements(index, policy, rule, f)
            out.add_set(peers, elements)
            peer_match[f] = f"{ADDR[f][0]} {peer_field} @{peers.name} "
    if not rule.ports:
        return [f"{peer_match[f]}accept" for f in FAMILIES] if rule.peers else ["accept"]
    statements: list[str] = []
    if any(not isinstance(pp.port, str) for pp in rule.ports):
        ranges = has_port_ranges(rule.ports)
        flags = ("interval",) if ranges else ()
        ports = Set(port_set(rule.ports), ("inet_proto", "inet_service"), flags=flags)
        out.add_set(ports, port_elements(rule.ports, ranges=ranges))
        match = f"meta l4proto . th dport @{ports.name} accept"
        statements.extend([f"{peer_match[f]}{match}" for f in FAMILIES] if rule.peers else [match])
    if any(isinstance(pp.port, str) for pp in rule.ports):
        for f in FAMILIES:
            named = Set(f"{name}-named{f}", (ADDR[f][1], "inet_proto", "inet_service"), comment=comment)
            destinations = _destinations(index, policy, rule, direction, selected, f)
            out.add_set(named, named_elements(destinations, rule.ports, f))
            lookup = f"{ADDR[f][0]} daddr . meta l4proto . th dport @{named.name} accept"
            # Egress elements are peer pods already; ingress ones are the selected pods.
            statements.append(lookup if direction is Direction.EGRESS else f"{peer_match[f]}{lookup}")
    return statements


def _destinations(index: PodIndex, policy: NetworkPolicy, rule: Rule, direction: Direction,
                  selected: list[Pod], family: int) -> list[Pod]:
    """The pods a named port is resolved on: the selected (local) pods for ingress; for egress every
    pod the rule's peers take in (all pods when it has none; ipBlocks by the pod's address)."""
    if direction is Direction.INGRESS:
        return selected
    if not rule.peers:
        return list(index.inputs.live_pods())
    found = {p.key: p for peer in rule.peers for p in index.peer_pods(policy.namespace, peer)}
    blocks = [peer.ip_block for peer in rule.peers if peer.ip_block is not None]
    if blocks:
        found.update((p.key, p) for p in index.inputs.live_pods()
                     if any(b.contains(ip) for b in blocks for ip in p.ips if ip.version == family))
    return list(found.values())
