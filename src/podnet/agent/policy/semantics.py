"""What NetworkPolicy means, as plain Python over a snapshot: the source of truth for
``podnet policy explain`` and the oracle the dataplane is tested against.

A connection from ``src`` to ``dst`` on ``protocol``/``port`` is allowed when both halves are:
* egress: the source pod is isolated for egress when some policy of its namespace selects it and
  declares Egress; then some egress rule of one of those policies must match the destination;
* ingress: likewise for the destination pod, with ingress rules matching the source.
Policies are a union (any selecting policy's rule allows), and nothing but selected pods in the
directions their policies declare is isolated. Addresses that are no pod (or host-network pods) are
never isolated. A policy with ``error`` set selects as usual and allows nothing (fail closed).
Traffic of a pod to itself never leaves the pod and is always allowed.
"""

from __future__ import annotations

from dataclasses import dataclass

from podnet.agent.model import Direction, IPAddress, NetworkPolicy, Peer, Pod, Protocol
from podnet.agent.policy.inputs import (
    PolicyInputs,
    peer_matches,
    port_matches,
    rules_of,
    selects,
)

Endpoint = Pod | IPAddress


class EndpointError(ValueError):
    """An endpoint the verdict cannot use (a pod with no address of the needed family)."""


@dataclass(frozen=True)
class Match:
    """The rule that allows one direction: policy, rule index, and which peer and port of it
    (None: the rule has no peers / no ports, so every peer / port)."""

    policy: tuple[str, str]
    rule: int
    peer: int | None
    port: int | None

    def __str__(self) -> str:
        peer = "any peer" if self.peer is None else f"peer {self.peer}"
        port = "any port" if self.port is None else f"port {self.port}"
        return f"{self.policy[0]}/{self.policy[1]} rule {self.rule} ({peer}, {port})"


@dataclass(frozen=True)
class Half:
    """One direction of a verdict: the policies isolating that side, and the allowing rule."""

    direction: Direction
    selected_by: tuple[tuple[str, str], ...]
    allowed_by: Match | None

    @property
    def isolated(self) -> bool:
        return bool(self.selected_by)

    @property
    def allowed(self) -> bool:
        return not self.isolated or self.allowed_by is not None


@dataclass(frozen=True)
class Verdict:
    src_ip: IPAddress
    dst_ip: IPAddress
    port: int
    protocol: Protocol
    egress: Half
    ingress: Half
    loopback: bool = False

    @property
    def allowed(self) -> bool:
        return self.loopback or (self.egress.allowed and self.ingress.allowed)


@dataclass(frozen=True)
class _End:
    pod: Pod | None
    ip: IPAddress


def verdict(inputs: PolicyInputs, src: Endpoint, dst: Endpoint, port: int, protocol: Protocol,
            *, family: int | None = None) -> Verdict:
    """Whether ``src`` may open a connection to ``dst`` on ``protocol``/``port``, and why. Pods
    connect over ``family`` (default: the destination's first address family)."""
    dst_end = _resolve(inputs, dst, family)
    src_end = _resolve(inputs, src, family or dst_end.ip.version)
    if src_end.ip.version != dst_end.ip.version:
        raise EndpointError(f"{src_end.ip} and {dst_end.ip} are of different address families")
    loopback = src_end.ip == dst_end.ip
    egress = _half(inputs, Direction.EGRESS, src_end, dst_end, port, protocol)
    ingress = _half(inputs, Direction.INGRESS, dst_end, src_end, port, protocol)
    return Verdict(src_end.ip, dst_end.ip, port, protocol, egress, ingress, loopback)


def allowed(inputs: PolicyInputs, src: Endpoint, dst: Endpoint, port: int, protocol: Protocol,
            *, family: int | None = None) -> bool:
    return verdict(inputs, src, dst, port, protocol, family=family).allowed


def selecting(inputs: PolicyInputs, pod: Pod, direction: Direction) -> tuple[NetworkPolicy, ...]:
    return tuple(p for p in inputs.policies if selects(p, pod, direction))


def _resolve(inputs: PolicyInputs, end: Endpoint, family: int | None) -> _End:
    if isinstance(end, Pod):
        ips = [ip for ip in end.ips if family is None or ip.version == family]
        if not ips:
            wanted = f"IPv{family} " if family else ""
            raise EndpointError(f"pod {end.namespace}/{end.name} has no {wanted}address")
        # A host-network or finished pod is only its address (which may be another pod's now).
        owner = end if not (end.host_network or end.terminal) else inputs.pod_by_ip(ips[0])
        return _End(owner, ips[0])
    # An address is the pod that owns it, when one does: policies select pods, not addresses.
    return _End(inputs.pod_by_ip(end), end)


def _half(inputs: PolicyInputs, direction: Direction, subject: _End, other: _End,
          port: int, protocol: Protocol) -> Half:
    if subject.pod is None:
        return Half(direction, (), None)
    policies = selecting(inputs, subject.pod, direction)
    # The port is the destination's: the subject for ingress, the other end for egress.
    destination = subject.pod if direction is Direction.INGRESS else other.pod
    match = next((m for p in policies
                  if (m := _allowing_rule(inputs, p, direction, other, destination, port, protocol))), None)
    return Half(direction, tuple(p.key for p in policies), match)


def _allowing_rule(inputs: PolicyInputs, policy: NetworkPolicy, direction: Direction, other: _End,
                   destination: Pod | None, port: int, protocol: Protocol) -> Match | None:
    for index, rule in enumerate(rules_of(policy, direction)):
        matched, peer = _matching_peer(inputs, policy, rule.peers, other)
        if not matched:
            continue
        if not rule.ports:
            return Match(policy.key, index, peer, None)
        hit = next((i for i, pp in enumerate(rule.ports)
                    if port_matches(pp, destination, port, protocol)), None)
        if hit is not None:
            return Match(policy.key, index, peer, hit)
    return None


def _matching_peer(inputs: PolicyInputs, policy: NetworkPolicy, peers: tuple[Peer, ...],
                   other: _End) -> tuple[bool, int | None]:
    """Whether a peer of the rule matches, and which (None: the rule has no peers, so all match)."""
    if not peers:
        return True, None
    for i, peer in enumerate(peers):
        if peer_matches(inputs, policy, peer, other.pod, other.ip):
            return True, i
    return False, None
