"""Which policies a change can touch, so :class:`~podnet.agent.policy.compile.PolicyCompiler`
recompiles those and no others.

A policy's compiled part depends on the pods it selects (isolation, named ports on ingress), the
pods its peers pick (by selectors, and by namespace labels for namespace selectors), and, for an
egress named port reaching any pod or pods by address, on every pod. A pod version touches the
policies that select it or whose peers pick it; the answer is the same for every pod with the same
namespace and labels, so it is remembered per label group until policies or namespaces change.
"""

from __future__ import annotations

from collections.abc import Mapping

from podnet.agent.model import LabelSelector, NetworkPolicy, Pod
from podnet.agent.policy.inputs import PolicyInputs

PolicyKey = tuple[str, str]


def _reaches_every_pod(policy: NetworkPolicy) -> bool:
    """An egress named port resolved on every pod (no peers) or on pods found by address (ipBlock)."""
    return any(isinstance(pp.port, str) for rule in policy.egress for pp in rule.ports
               if not rule.peers or any(peer.ip_block is not None for peer in rule.peers))


class Dependents:
    """The policies of one snapshot, indexed by what they depend on. Peers are indexed by their
    selectors (many policies repeat a peer), so a pod is matched once per distinct peer."""

    def __init__(self, policies: Mapping[PolicyKey, NetworkPolicy]) -> None:
        self.in_namespace: dict[str, list[NetworkPolicy]] = {}
        self.by_namespace_labels: set[PolicyKey] = set()  # some peer has a namespace selector
        self.every_pod = frozenset(k for k, p in policies.items() if _reaches_every_pod(p))
        # namespace -> pod selector -> policies (peers without a namespace selector: that namespace)
        self._local: dict[str, dict[LabelSelector, set[PolicyKey]]] = {}
        # (pod selector or None, namespace selector) -> policies
        self._wide: dict[tuple[LabelSelector | None, LabelSelector], set[PolicyKey]] = {}
        for key, policy in policies.items():
            self.in_namespace.setdefault(policy.namespace, []).append(policy)
            for peer in (peer for rule in (*policy.ingress, *policy.egress) for peer in rule.peers):
                if peer.namespace_selector is not None:
                    self.by_namespace_labels.add(key)
                    self._wide.setdefault((peer.pod_selector, peer.namespace_selector), set()).add(key)
                elif peer.pod_selector is not None:
                    self._local.setdefault(policy.namespace, {}).setdefault(peer.pod_selector, set()).add(key)
        self._touched: dict[tuple[str, frozenset[tuple[str, str]]], frozenset[PolicyKey]] = {}

    def touched_by(self, inputs: PolicyInputs, pod: Pod) -> frozenset[PolicyKey]:
        """Policies selecting the pod, or with a peer picking it, or depending on every pod."""
        memo = (pod.namespace, frozenset(pod.labels.items()))
        found = self._touched.get(memo)
        if found is None:
            own = self.in_namespace.get(pod.namespace, ())
            hit = {p.key for p in own if p.pod_selector.matches(pod.labels)}
            for selector, keys in self._local.get(pod.namespace, {}).items():
                if selector.matches(pod.labels):
                    hit |= keys
            space = inputs.namespace_labels(pod.namespace)
            for (pods, spaces), keys in self._wide.items():
                if spaces.matches(space) and (pods is None or pods.matches(pod.labels)):
                    hit |= keys
            found = self._touched[memo] = frozenset(hit) | self.every_pod
        return found
