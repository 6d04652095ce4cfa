"""Who selectors pick, computed once per snapshot for the compiler.

Pods with the same namespace and labels are one group, so a selector is evaluated once per group,
not once per pod; the pods a peer picks are remembered per peer (many policies repeat peers). The
semantics module answers the same questions pod by pod, plainly: the tests hold the two to the same
answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from podnet.agent.model import EVERYTHING, LabelSelector, Peer, Pod
from podnet.agent.policy.inputs import PolicyInputs

_Group = tuple[Mapping[str, str], list[Pod]]


class PodIndex:
    def __init__(self, inputs: PolicyInputs) -> None:
        self.inputs = inputs
        self.groups: dict[str, dict[frozenset[tuple[str, str]], _Group]] = {}
        self._peers: dict[tuple[LabelSelector | None, LabelSelector | None, str], list[Pod]] = {}
        self.memo: dict[str, dict[str, None]] = {}  # shared set -> its elements in this snapshot
        self._selected: dict[tuple[str, LabelSelector], list[Pod]] = {}  # per snapshot, like memo
        for pod in inputs.live_pods():
            self._add(pod)

    def moved(self, inputs: PolicyInputs, gone: Iterable[Pod], came: Iterable[Pod]) -> None:
        """Take the next snapshot, whose live pods differ from the last one's by ``gone`` (old
        versions leaving their groups) and ``came`` (new versions joining theirs)."""
        self.inputs = inputs
        self._peers, self.memo, self._selected = {}, {}, {}
        for pod in gone:
            by_labels = self.groups[pod.namespace]
            group = frozenset(pod.labels.items())
            members = by_labels[group][1]
            members.remove(pod)
            if not members:
                del by_labels[group]
        for pod in came:
            self._add(pod)

    def _add(self, pod: Pod) -> None:
        by_labels = self.groups.setdefault(pod.namespace, {})
        by_labels.setdefault(frozenset(pod.labels.items()), (pod.labels, []))[1].append(pod)

    def in_namespace(self, namespace: str, selector: LabelSelector) -> list[Pod]:
        found = self._selected.get((namespace, selector))
        if found is None:
            found = self._selected[namespace, selector] = [
                pod for labels, pods in self.groups.get(namespace, {}).values() if selector.matches(labels)
                for pod in pods]
        return found

    def peer_pods(self, policy_namespace: str, peer: Peer) -> list[Pod]:
        """The pods a peer's selectors pick (none for an ipBlock peer)."""
        if peer.pod_selector is None and peer.namespace_selector is None:
            return []
        # Without a namespace selector the peer means the policy's own namespace.
        key = (peer.pod_selector, peer.namespace_selector,
               policy_namespace if peer.namespace_selector is None else "")
        found = self._peers.get(key)
        if found is None:
            if peer.namespace_selector is None:
                spaces = [policy_namespace]
            else:
                chosen = peer.namespace_selector
                spaces = [n for n in self.groups if chosen.matches(self.inputs.namespace_labels(n))]
            selector = peer.pod_selector or EVERYTHING
            found = self._peers[key] = [p for n in spaces for p in self.in_namespace(n, selector)]
        return found
