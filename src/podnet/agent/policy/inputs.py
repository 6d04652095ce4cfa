"""What policy is computed from: one consistent snapshot of the model, and the matching rules of
networking.k8s.io/v1 that both the explainer and the compiler use (who a policy selects, who a peer
is, which port a policy port names).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from podnet.agent.model import (
    Direction,
    IPAddress,
    Namespace,
    NetworkPolicy,
    Peer,
    Pod,
    PolicyPort,
    Protocol,
    Rule,
)

BOTH = frozenset({Direction.INGRESS, Direction.EGRESS})


@dataclass(frozen=True)
class PolicyInputs:
    """A snapshot: namespaces by name, pods, policies, and the node the policy is enforced on."""

    namespaces: Mapping[str, Namespace] = field(default_factory=dict)
    pods: tuple[Pod, ...] = ()
    policies: tuple[NetworkPolicy, ...] = ()
    node_name: str = ""

    @classmethod
    def of(cls, namespaces: Mapping[str, Namespace], pods: Iterable[Pod],
           policies: Iterable[NetworkPolicy], node_name: str = "") -> PolicyInputs:
        return cls(dict(namespaces), tuple(pods), tuple(policies), node_name)

    def live_pods(self) -> Iterator[Pod]:
        """Pods that own their IPs and can be policy subjects or peers (host-network pods use the
        node's addresses: NetworkPolicy does not apply to them)."""
        return (p for p in self.pods if not p.terminal and not p.host_network)

    def namespace_labels(self, name: str) -> Mapping[str, str]:
        ns = self.namespaces.get(name)
        # A namespace the sources have not reported yet has no labels: only empty selectors match it.
        return ns.labels if ns is not None else {}

    def pod_by_ip(self, ip: IPAddress) -> Pod | None:
        return next((p for p in self.live_pods() if ip in p.ips), None)


def directions_of(policy: NetworkPolicy) -> frozenset[Direction]:
    """An invalid policy isolates what it selects in both directions (fail closed)."""
    return BOTH if policy.error is not None else policy.directions


def selects(policy: NetworkPolicy, pod: Pod, direction: Direction) -> bool:
    return (direction in directions_of(policy) and not pod.host_network and not pod.terminal
            and pod.namespace == policy.namespace and policy.pod_selector.matches(pod.labels))


def rules_of(policy: NetworkPolicy, direction: Direction) -> tuple[Rule, ...]:
    if policy.error is not None or direction not in policy.directions:
        return ()
    return policy.ingress if direction is Direction.INGRESS else policy.egress


def peer_selects_pod(inputs: PolicyInputs, policy: NetworkPolicy, peer: Peer, pod: Pod) -> bool:
    """Whether a peer's selectors pick this pod (ipBlock is matched on addresses, not here)."""
    if peer.pod_selector is None and peer.namespace_selector is None:
        return False
    if peer.namespace_selector is None:
        in_namespace = pod.namespace == policy.namespace
    else:
        in_namespace = peer.namespace_selector.matches(inputs.namespace_labels(pod.namespace))
    pod_ok = peer.pod_selector is None or peer.pod_selector.matches(pod.labels)
    return in_namespace and pod_ok


def peer_matches(inputs: PolicyInputs, policy: NetworkPolicy, peer: Peer,
                 pod: Pod | None, ip: IPAddress) -> bool:
    """A peer matches the other end of a connection: its pod by selectors, or its address by
    ipBlock (upstream applies ipBlock to pod addresses too)."""
    if peer.ip_block is not None:
        return peer.ip_block.contains(ip)
    return pod is not None and peer_selects_pod(inputs, policy, peer, pod)


def port_range(port: PolicyPort, destination: Pod | None) -> tuple[int, int] | None:
    """The destination ports a policy port opens for its protocol, as an inclusive range: every port
    when none is given, a named port resolved on the destination pod (nothing when the destination
    is no pod or has no such port)."""
    if port.port is None:
        return (0, 65535)
    if isinstance(port.port, str):
        number = destination.named_port(port.port, port.protocol) if destination is not None else None
        return (number, number) if number is not None else None
    return (port.port, port.end_port if port.end_port is not None else port.port)


def port_matches(port: PolicyPort, destination: Pod | None, number: int, protocol: Protocol) -> bool:
    if port.protocol is not protocol:
        return False
    span = port_range(port, destination)
    return span is not None and span[0] <= number <= span[1]
