"""networking.k8s.io/v1 NetworkPolicy: raw dict -> :class:`~podnet.agent.model.NetworkPolicy`.

Validation follows the API server's (pkg/apis/networking/validation) and defaulting follows
its defaults (``policyTypes``). A policy that does not validate is never dropped: dropping it
would silently open the pods it meant to isolate. It becomes a policy with ``error`` set, which
the compiler enforces fail-closed on the pods its selector picks (the whole namespace when even
the selector cannot be read).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from podnet.agent import objects_fields as f
from podnet.agent.model import (
    EVERYTHING,
    Direction,
    IPBlock,
    LabelSelector,
    NetworkPolicy,
    Peer,
    PolicyPort,
    Protocol,
    Rule,
)

BOTH = frozenset({Direction.INGRESS, Direction.EGRESS})


def protocol(value: object, where: str) -> Protocol:
    """A protocol field: absent means TCP; the API's spelling is case-sensitive."""
    if value is None:
        return Protocol.TCP
    text = f.string(value, where)
    try:
        return Protocol(text)
    except ValueError:
        raise f.Invalid(f"{where}: {f.describe(text)} is not one of TCP, UDP, SCTP") from None


def _ip_block(value: object, where: str) -> IPBlock:
    raw = f.mapping(value, where)
    cidr = f.cidr(raw.get("cidr"), f"{where}.cidr")
    excepts = []
    for i, item in enumerate(f.sequence(raw.get("except"), f"{where}.except")):
        sub = f.cidr(item, f"{where}.except[{i}]")
        # The API requires a strict subset: same family, inside cidr, longer prefix.
        if (sub.version != cidr.version or not sub.subnet_of(cidr)  # type: ignore[arg-type]
                or sub.prefixlen <= cidr.prefixlen):
            raise f.Invalid(f"{where}.except[{i}]: {sub} is not strictly inside cidr {cidr}")
        excepts.append(sub)
    return IPBlock(cidr, tuple(excepts))


def _peer(value: object, where: str) -> Peer:
    raw = f.mapping(value, where)
    has_pods, has_ns, has_block = (raw.get(k) is not None
                                   for k in ("podSelector", "namespaceSelector", "ipBlock"))
    if has_block and (has_pods or has_ns):
        raise f.Invalid(f"{where}: ipBlock cannot be combined with podSelector or namespaceSelector")
    if has_block:
        return Peer(ip_block=_ip_block(raw["ipBlock"], f"{where}.ipBlock"))
    if not (has_pods or has_ns):
        raise f.Invalid(f"{where}: a peer needs podSelector, namespaceSelector or ipBlock")
    return Peer(
        pod_selector=f.selector(raw["podSelector"], f"{where}.podSelector") if has_pods else None,
        namespace_selector=(f.selector(raw["namespaceSelector"], f"{where}.namespaceSelector")
                            if has_ns else None))


def _port(value: object, where: str) -> PolicyPort:
    raw = f.mapping(value, where)
    proto = protocol(raw.get("protocol"), f"{where}.protocol")
    port_raw, end_raw = raw.get("port"), raw.get("endPort")
    port: int | str | None = None
    if isinstance(port_raw, str):
        port = f.port_name(port_raw, f"{where}.port")
    elif port_raw is not None:
        port = f.port_number(port_raw, f"{where}.port")
    if end_raw is None:
        return PolicyPort(proto, port)
    end = f.port_number(end_raw, f"{where}.endPort")
    if not isinstance(port, int):
        raise f.Invalid(f"{where}.endPort: needs a numeric port (port is {f.describe(port_raw)})")
    if end < port:
        raise f.Invalid(f"{where}.endPort: {end} is less than port {port}")
    return PolicyPort(proto, port, end)


def _rule(value: object, where: str, peers_key: str) -> Rule:
    raw = f.mapping(value, where, optional=True)
    peers = tuple(_peer(p, f"{where}.{peers_key}[{i}]")
                  for i, p in enumerate(f.sequence(raw.get(peers_key), f"{where}.{peers_key}")))
    ports = tuple(_port(p, f"{where}.ports[{i}]")
                  for i, p in enumerate(f.sequence(raw.get("ports"), f"{where}.ports")))
    return Rule(peers, ports)


def _directions(spec: Mapping[str, Any], egress_rules: int) -> frozenset[Direction]:
    types = f.sequence(spec.get("policyTypes"), "spec.policyTypes")
    if not types:
        # Upstream defaulting: Ingress always, Egress only when there are egress rules.
        return frozenset({Direction.INGRESS, Direction.EGRESS}) if egress_rules else frozenset(
            {Direction.INGRESS})
    found: set[Direction] = set()
    for i, item in enumerate(types):
        text = f.string(item, f"spec.policyTypes[{i}]")
        try:
            direction = Direction(text)
        except ValueError:
            raise f.Invalid(f"spec.policyTypes[{i}]: {f.describe(text)} is not Ingress or Egress") from None
        if direction in found:
            raise f.Invalid(f"spec.policyTypes[{i}]: {text} is listed twice")
        found.add(direction)
    return frozenset(found)


def _spec(namespace: str, name: str, spec: Mapping[str, Any], selector: LabelSelector) -> NetworkPolicy:
    ingress = tuple(_rule(r, f"spec.ingress[{i}]", "from")
                    for i, r in enumerate(f.sequence(spec.get("ingress"), "spec.ingress")))
    egress = tuple(_rule(r, f"spec.egress[{i}]", "to")
                   for i, r in enumerate(f.sequence(spec.get("egress"), "spec.egress")))
    return NetworkPolicy(namespace, name, selector, _directions(spec, len(egress)), ingress, egress)


def readable_selector(raw: Mapping[str, Any]) -> LabelSelector:
    """The policy's podSelector if it can be read, else the empty one (its whole namespace)."""
    try:
        spec = f.mapping(raw.get("spec"), "spec")
        return f.selector(spec.get("podSelector"), "spec.podSelector")
    except f.Invalid:
        return EVERYTHING


def failed_policy(raw: Mapping[str, Any], namespace: str, name: str, error: str) -> NetworkPolicy:
    """The fail-closed stand-in for a policy that cannot be enforced as written."""
    return NetworkPolicy(namespace, name, readable_selector(raw), BOTH, error=error)


def parse_spec(raw: Mapping[str, Any], namespace: str, name: str) -> NetworkPolicy:
    """The policy from a raw object whose metadata is already read; an invalid spec gives a
    fail-closed policy with ``error`` naming the field, never an exception."""
    try:
        spec = f.mapping(raw.get("spec"), "spec")
        selector = f.selector(spec.get("podSelector"), "spec.podSelector")
        return _spec(namespace, name, spec, selector)
    except f.Invalid as exc:
        return failed_policy(raw, namespace, name, str(exc))
