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
  without port): the nftables library reads every interval set of the table before any element command, so
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

Owners: each policy's chains and sets are one contribution, owner ``policy/NS/NAME``; the base
chains, the verdict maps and the isolation chains are owner ``policy``. :class:`PolicyCompiler` keeps
the compiled parts between snapshots and recompiles only the policies a change can touch (a pod's
old or new version selected or picked as a peer; a policy itself; policies with namespace selectors
when namespace labels change), so one pod relabeled costs a few policies, not all of them, and the
table writer sees only the owners whose part changed.

The node's own traffic to its pods (kubelet probes) and theirs to it is local delivery/origin
(``input``/``output``), never ``forward``: it stays allowed without a rule, as upstream requires.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

from podnet.agent.model import Direction, Namespace, NetworkPolicy, Pod
from podnet.agent.policy.chains import (
    DIRECTIONS,
    FAMILIES,
    base_chain,
    isolation,
    policy_part,
    verdict_map_decl,
)
from podnet.agent.policy.depends import Dependents
from podnet.agent.policy.index import PodIndex
from podnet.agent.policy.inputs import PolicyInputs, directions_of, rules_of
from podnet.agent.policy.names import verdict_map
from podnet.dataplane.contribution import EMPTY, Chain, Contribution, Set

K = TypeVar("K")
V = TypeVar("V")
SHARED_OWNER = "policy"
OWNER_PREFIX = "policy/"
PodKey = tuple[str, str]
PolicyKey = tuple[str, str]
# Per local isolated pod: its verdict-map elements (map, address, the isolation chain they go to).
Entries = tuple[tuple[str, str, str, Chain], ...]  # map, address, verdict, the chain it goes to


def policy_owner(key: PolicyKey) -> str:
    return f"{OWNER_PREFIX}{key[0]}/{key[1]}"


def compile(namespaces: Mapping[str, Namespace], pods: Iterable[Pod],
            policies: Iterable[NetworkPolicy], node_name: str) -> Contribution:
    return compile_inputs(PolicyInputs.of(namespaces, pods, policies, node_name))


def compile_inputs(inputs: PolicyInputs) -> Contribution:
    """The whole table as one contribution: every owner's part of a fresh compile, joined."""
    return joined(PolicyCompiler().update(inputs).values())


def joined(parts: Iterable[Contribution]) -> Contribution:
    chains: list[Chain] = []
    sets: dict[str, Set] = {}  # a shared set once, whoever declares it (its elements are the same)
    elements: dict[str, Mapping[str, str | None]] = {}
    for part in parts:
        chains.extend(part.chains)
        sets.update((s.name, s) for s in part.sets)
        elements.update(part.elements)
    return Contribution(tuple(sorted(chains, key=lambda c: c.name)),
                        tuple(sorted(sets.values(), key=lambda s: s.name)), elements)


class PolicyCompiler:
    """Compiled policy kept between snapshots. :meth:`update` takes the next snapshot and returns
    the owners whose part changed (EMPTY: withdraw it); :attr:`parts` holds every current part."""

    def __init__(self) -> None:
        self.parts: dict[str, Contribution] = {}  # owner -> its current, non-empty part
        self._node = ""
        self._primed = False
        self._pods: dict[PodKey, Pod] = {}  # live pods
        self._labels: dict[str, Mapping[str, str]] = {}  # namespace -> labels
        self._policies: dict[PolicyKey, NetworkPolicy] = {}
        self._dependents = Dependents({})
        self._index = PodIndex(PolicyInputs())  # the live pods of the last snapshot, by label group
        self._isolating: dict[PodKey, Entries] = {}  # local live pods isolated in some direction
        # (direction, isolating policies) -> isolation chain, while the policies stay the same
        self._chains: dict[tuple[Direction, tuple[PolicyKey, ...]], Chain] = {}

    def update(self, inputs: PolicyInputs) -> dict[str, Contribution]:
        pods = {p.key: p for p in inputs.live_pods()}
        labels = {name: ns.labels for name, ns in inputs.namespaces.items()}
        policies = {p.key: p for p in inputs.policies}
        fresh = not self._primed or inputs.node_name != self._node
        if fresh:
            self._node, self._primed = inputs.node_name, True
            self._pods, self._labels, self._policies, self._isolating = {}, {}, {}, {}
        changed_pods = _changed(self._pods, pods)
        changed_policies = _changed(self._policies, policies)
        changed_labels = _changed(self._labels, labels)
        old_pods = self._pods
        self._pods, self._labels, self._policies = pods, labels, policies
        if changed_policies or changed_labels:
            self._dependents = Dependents(policies)
        if changed_policies:
            self._chains = {}  # which policies have rules may have changed
        if fresh:
            affected = set(policies)
            self._index = PodIndex(inputs)
        else:
            affected = self._affected(inputs, old_pods, changed_pods, changed_policies, bool(changed_labels))
            self._index.moved(inputs, [old_pods[k] for k in changed_pods if k in old_pods],
                              [pods[k] for k in changed_pods if k in pods])
        self._refresh_isolating(changed_pods, {key[0] for key in changed_policies})
        out: dict[str, Contribution] = {}
        for key in sorted(affected):
            self._set(out, policy_owner(key), self._policy_part(self._index, policies.get(key)))
        if changed_pods or changed_policies:
            self._set(out, SHARED_OWNER, self._shared())
        return out

    def _affected(self, inputs: PolicyInputs, old_pods: Mapping[PodKey, Pod], changed_pods: list[PodKey],
                  changed_policies: list[PolicyKey], changed_labels: bool) -> set[PolicyKey]:
        """The policies whose part the changes can alter."""
        affected = set(changed_policies)
        if changed_labels:
            affected |= self._dependents.by_namespace_labels
        for key in changed_pods:
            for version in (old_pods.get(key), self._pods.get(key)):
                if version is not None:
                    affected |= self._dependents.touched_by(inputs, version)
        return affected

    def _set(self, out: dict[str, Contribution], owner: str, part: Contribution) -> None:
        if part == self.parts.get(owner, EMPTY):
            return
        out[owner] = part
        if part == EMPTY:
            del self.parts[owner]
        else:
            self.parts[owner] = part

    def _refresh_isolating(self, pods: Iterable[PodKey], namespaces: set[str]) -> None:
        keys = set(pods)
        if namespaces:
            keys.update(k for k in self._pods if k[0] in namespaces)
        for key in keys:
            pod = self._pods.get(key)
            found = self._isolating_of(pod) if pod is not None and pod.node_name == self._node else None
            if pod is None or found is None:
                self._isolating.pop(key, None)
            else:
                self._isolating[key] = self._entries(pod, found)

    def _isolating_of(self, pod: Pod) -> tuple[tuple[PolicyKey, ...], ...] | None:
        """The policies isolating a local pod, (egress, ingress), each sorted; None: not isolated."""
        eg: list[PolicyKey] = []
        ing: list[PolicyKey] = []
        for policy in self._dependents.in_namespace.get(pod.namespace, ()):
            if not policy.pod_selector.matches(pod.labels):
                continue
            directions = directions_of(policy)
            if Direction.EGRESS in directions:
                eg.append(policy.key)
            if Direction.INGRESS in directions:
                ing.append(policy.key)
        return (tuple(sorted(eg)), tuple(sorted(ing))) if eg or ing else None

    def _entries(self, pod: Pod, isolating: tuple[tuple[PolicyKey, ...], ...]) -> Entries:
        """The pod's verdict-map elements, with the isolation chain each one goes to."""
        out: list[tuple[str, str, str, Chain]] = []
        for direction, keys in zip(DIRECTIONS, isolating, strict=True):
            if not keys:
                continue
            chain = self._chains.get((direction, keys))
            if chain is None:
                with_rules = [k for k in keys if rules_of(self._policies[k], direction)]
                chain = self._chains[direction, keys] = isolation(direction, keys, with_rules)
            verdict = f"goto {chain.name}"
            out.extend((verdict_map(direction, ip.version), str(ip), verdict, chain) for ip in pod.ips)
        return tuple(out)

    def _policy_part(self, index: PodIndex, policy: NetworkPolicy | None) -> Contribution:
        if policy is None:
            return EMPTY
        selected: dict[Direction, list[Pod]] = {}
        for direction in directions_of(policy):
            selected[direction] = [p for p in index.in_namespace(policy.namespace, policy.pod_selector)
                                   if p.node_name == self._node]
        return policy_part(index, policy, selected)

    def _shared(self) -> Contribution:
        """Base chains, verdict maps and isolation chains, from each isolated pod's entries."""
        chains = {c.name: c for c in map(base_chain, DIRECTIONS)}
        maps: dict[str, dict[str, str | None]] = {verdict_map(d, f): {} for d in DIRECTIONS for f in FAMILIES}
        for entries in self._isolating.values():
            for map_name, ip, verdict, chain in entries:
                maps[map_name][ip] = verdict
                chains[chain.name] = chain
        sets = sorted((verdict_map_decl(d, f) for d in DIRECTIONS for f in FAMILIES), key=lambda s: s.name)
        return Contribution(tuple(sorted(chains.values(), key=lambda c: c.name)), tuple(sets), maps)


def _changed(old: Mapping[K, V], new: Mapping[K, V]) -> list[K]:
    """Keys added, removed, or given a different value (identity first: the store shares values)."""
    out = [k for k, v in new.items() if old.get(k) is not v and old.get(k) != v]
    out.extend(k for k in old if k not in new)
    return out
