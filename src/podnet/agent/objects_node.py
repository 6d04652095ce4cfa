"""v1 Node: raw dict -> :class:`~podnet.agent.model.Node` (what cross-node routing needs).

- pod CIDRs: ``spec.podCIDRs`` (at most one per family), or ``spec.podCIDR`` alone; when both are
  set the first of ``podCIDRs`` must be ``podCIDR``, as the API server requires;
- node IPs: the ``InternalIP`` entries of ``status.addresses``, in order;
- readiness: the ``Ready`` condition's status is "True". A node whose status reports no Ready
  condition at all (a hand-written manifest, a node object made before its kubelet reported)
  counts as ready: there is no report to distrust, and its routes depend on its pod CIDR and
  address anyway. A Ready condition that says "False" or "Unknown" makes it not ready.
A Node that does not validate raises :class:`~podnet.agent.objects_fields.Invalid`: a wrong pod
CIDR must never become a route, so the source reports and skips it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from podnet.agent import objects_fields as f
from podnet.agent.model import IPAddress, IPNetwork, Labels, Node


def _pod_cidrs(spec: Mapping[str, Any]) -> tuple[IPNetwork, ...]:
    cidrs = [f.cidr(v, f"spec.podCIDRs[{i}]")
             for i, v in enumerate(f.sequence(spec.get("podCIDRs"), "spec.podCIDRs"))]
    single = f.string(spec.get("podCIDR"), "spec.podCIDR", optional=True)
    if single:
        first = f.cidr(single, "spec.podCIDR")
        if cidrs and cidrs[0] != first:
            raise f.Invalid(f"spec.podCIDRs[0]: {cidrs[0]} must equal spec.podCIDR {first}")
        cidrs = cidrs or [first]
    if len(cidrs) > 2 or (len(cidrs) == 2 and cidrs[0].version == cidrs[1].version):
        raise f.Invalid("spec.podCIDRs: at most one CIDR per family (IPv4, IPv6)")
    return tuple(cidrs)


def _internal_ips(status: Mapping[str, Any]) -> tuple[IPAddress, ...]:
    found: list[IPAddress] = []
    for i, value in enumerate(f.sequence(status.get("addresses"), "status.addresses")):
        entry = f.mapping(value, f"status.addresses[{i}]")
        if f.string(entry.get("type"), f"status.addresses[{i}].type") != "InternalIP":
            continue  # Hostname, ExternalIP, InternalDNS...: not where pod routes point
        ip = f.ip_address(entry.get("address"), f"status.addresses[{i}].address")
        if ip not in found:
            found.append(ip)
    return tuple(found)


def _ready(status: Mapping[str, Any]) -> bool:
    for i, value in enumerate(f.sequence(status.get("conditions"), "status.conditions")):
        entry = f.mapping(value, f"status.conditions[{i}]")
        if f.string(entry.get("type"), f"status.conditions[{i}].type") == "Ready":
            return f.string(entry.get("status"), f"status.conditions[{i}].status") == "True"
    return True


def parse(raw: Mapping[str, Any], name: str, labels: Labels) -> Node:
    """The Node from a raw object whose metadata is already read."""
    spec = f.mapping(raw.get("spec"), "spec", optional=True)
    status = f.mapping(raw.get("status"), "status", optional=True)
    return Node(name, _pod_cidrs(spec), _internal_ips(status), _ready(status), labels)
