"""NetworkPolicy compiled to the agent's table ``inet podnet``, handed to the table writer as one
contribution.

Design (kube-proxy's nftables mode in spirit: rules are static, the changing data is in elements):

* Two base chains on the ``forward`` hook, ``policy-egress`` (priority filter) then
  ``policy-ingress`` (filter + 1). An ``accept`` ends only its own base chain, so a packet must pass
  both: the source's egress and the destination's ingress, each decided on the node of that pod.
  Each starts with ``ct state established,related accept`` (replies of allowed connections) and
  IPv6 neighbour discovery (conntrack does not track it; dropping it would break every IPv6 path of
  an isolated pod), then looks the pod address up in a verdict map:
  ``ip saddr vmap @egress-ip4`` / ``ip6 saddr vmap @egress-ip6`` / ``ip daddr vmap @ingress-ip4`` /
  ``ip6 daddr vmap @ingress-ip6``. Only local pods isolated in that direction are in the maps; any
  other address passes untouched (not isolated).
* A map value is ``goto ingress-HASH`` / ``goto egress-HASH``: one chain per distinct *set* of
  policies isolating a pod in that direction (pods with the same labels share it). It drops
  ``ct state invalid``, jumps to each policy's chain, and ends in ``drop``: isolated, nothing allowed
  unless some policy accepts (the union).
* ``pol-HASH-in`` / ``pol-HASH-eg``: one chain per policy and direction, a few rules per policy rule
  (per address family and port kind), each ending in ``accept``. Peers are sets
  ``pol-HASH-in-N-peers4/6`` (pod addresses from selectors, ipBlocks minus excepts); ports by number
  or range (or protocol alone, as 0-65535) are ``pol-HASH-in-N-ports`` of ``inet_proto .
  inet_service`` matched with ``meta l4proto . th dport``, which loads without any
  protocol module (SCTP included) and only ever matches the protocol named. A set is an interval set
  only when the rule can put a CIDR or a range in it (an ipBlock peer; an endPort or a protocol
  without port): libnftables reads every interval set of the table before any element command, so
  each one costs every later update. The flag follows from the rule alone, never from the pods, so a
  declaration does not change as pods come and go. Named ports are
  ``address . proto . port`` elements resolved on each destination pod (``-named4/6``): for ingress
  the selected pods, for egress the peer pods (so the peers are in the same elements).
  Policies with errors, or with no rules in a direction, get no chain: they isolate and allow nothing.

So the rules grow with policies x rules, never with pods; pods move only map and set elements.

Why ``inet`` on the forward hook and no bridge-family table: two pods on the same bridge are
switched, never routed, but with br_netfilter (built into this kernel, ``bridge-nf-call-iptables``
and ``-ip6tables`` set to 1 in the node's namespace) bridged IPv4/IPv6 traverses the inet forward
hook with conntrack, like routed traffic, so one set of chains serves both plugins. A bridge-family
table would see the packets but has no conntrack here (CONFIG_NF_CONNTRACK_BRIDGE is not set), so
it could not allow replies.

The node's own traffic to its pods (kubelet probes) and theirs to it is local delivery/origin
(``input``/``output``), never ``forward``: it stays allowed without a rule, as upstream requires.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from podnet.agent.model import Direction, Namespace, NetworkPolicy, Pod, Rule
from podnet.agent.policy.addresses import (
    has_port_ranges,
    named_elements,
    needs_intervals,
    peer_elements,
    port_elements,
)
from podnet.agent.policy.index import PodIndex
from podnet.agent.policy.inputs import PolicyInputs, directions_of, rules_of
from podnet.agent.policy.names import (
    EGRESS_CHAIN,
    INGRESS_CHAIN,
    isolation_chain,
    policy_prefix,
    verdict_map,
)
from podnet.dataplane.contribution import Chain, Contribution, Set

FAMILIES = (4, 6)
ADDR = {4: ("ip", "ipv4_addr"), 6: ("ip6", "ipv6_addr")}
ND_TYPES = "nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert"
# Egress runs first; both are filter-type chains so they see the same packets as other filters.
BASE = {Direction.EGRESS: (EGRESS_CHAIN, 0, "saddr"), Direction.INGRESS: (INGRESS_CHAIN, 1, "daddr")}


class _Builder:
    def __init__(self) -> None:
        self.chains: list[Chain] = []
        self.sets: list[Set] = []
        self.elements: dict[str, dict[str, str | None]] = {}

    def add_set(self, decl: Set, elements: Mapping[str, str | None]) -> None:
        self.sets.append(decl)
        self.elements[decl.name] = dict(elements)

    def build(self) -> Contribution:
        return Contribution(tuple(sorted(self.chains, key=lambda c: c.name)),
                            tuple(sorted(self.sets, key=lambda s: s.name)), self.elements)


def compile(namespaces: Mapping[str, Namespace], pods: Iterable[Pod],
            policies: Iterable[NetworkPolicy], node_name: str) -> Contribution:
    return compile_inputs(PolicyInputs.of(namespaces, pods, policies, node_name))


def compile_inputs(inputs: PolicyInputs) -> Contribution:
    out = _Builder()
    index = PodIndex(inputs)
    for direction in (Direction.EGRESS, Direction.INGRESS):
        _compile_direction(out, index, direction)
    return out.build()


def _isolating(index: PodIndex, direction: Direction) -> dict[tuple[str, str], list[NetworkPolicy]]:
    """Local pods isolated in this direction, each with the policies isolating it."""
    found: dict[tuple[str, str], list[NetworkPolicy]] = {}
    for policy in index.inputs.policies:
        if direction in directions_of(policy):
            for pod in index.in_namespace(policy.namespace, policy.pod_selector):
                if pod.node_name == index.inputs.node_name:
                    found.setdefault(pod.key, []).append(policy)
    return found


def _compile_direction(out: _Builder, index: PodIndex, direction: Direction) -> None:
    name, priority, field = BASE[direction]
    out.chains.append(Chain(name, type="filter", hook="forward", priority=priority, policy="accept", rules=(
        "ct state established,related accept",
        f"icmpv6 type {{ {ND_TYPES} }} accept",
        *(f"{ADDR[f][0]} {field} vmap @{verdict_map(direction, f)}" for f in FAMILIES),
    )))
    pods = {p.key: p for p in index.inputs.live_pods()}
    by_key: dict[tuple[str, str], NetworkPolicy] = {}
    groups: dict[tuple[tuple[str, str], ...], list[Pod]] = {}
    for pod_key, isolating in _isolating(index, direction).items():
        by_key.update((p.key, p) for p in isolating)
        groups.setdefault(tuple(sorted({p.key for p in isolating})), []).append(pods[pod_key])
    maps: dict[int, dict[str, str | None]] = {f: {} for f in FAMILIES}
    selected: dict[tuple[str, str], list[Pod]] = {}
    for keys, members in groups.items():
        chain = isolation_chain(keys, direction)
        jumps = [f"jump {policy_prefix(k, direction)}" for k in keys if rules_of(by_key[k], direction)]
        out.chains.append(Chain(chain, rules=("ct state invalid drop", *jumps, "drop")))
        for key in keys:
            selected.setdefault(key, []).extend(members)
        for pod in members:
            for ip in pod.ips:
                maps[ip.version][str(ip)] = f"goto {chain}"
    for f in FAMILIES:
        out.add_set(Set(verdict_map(direction, f), (ADDR[f][1],), value_type="verdict"), maps[f])
    for key in sorted(by_key):
        _compile_policy(out, index, by_key[key], direction, selected[key])


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
            peers = Set(f"{name}-peers{f}", (ADDR[f][1],), flags=intervals, comment=comment)
            out.add_set(peers, peer_elements(index, policy, rule, f))
            peer_match[f] = f"{ADDR[f][0]} {peer_field} @{peers.name} "
    if not rule.ports:
        return [f"{peer_match[f]}accept" for f in FAMILIES] if rule.peers else ["accept"]
    statements: list[str] = []
    if any(not isinstance(pp.port, str) for pp in rule.ports):
        ranges = has_port_ranges(rule.ports)
        ports = Set(f"{name}-ports", ("inet_proto", "inet_service"), flags=("interval",) if ranges else (),
                    comment=comment)
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
