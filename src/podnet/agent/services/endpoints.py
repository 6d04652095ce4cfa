"""Which endpoints a service port sends traffic to, the way kube-proxy picks them.

* Cluster traffic uses the ready endpoints; when none is ready anywhere, the serving ones that are
  terminating (a rolling update that has nothing ready yet still answers instead of failing).
* Local traffic (a ``Local`` traffic policy) uses this node's ready endpoints, else this node's
  serving terminating ones; never another node's.
* An endpoint appearing in several slices counts once (its first address is the one used).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from podnet.agent.model import Endpoint, EndpointSlice, IPAddress, Protocol, Service, ServicePort

ADDRESS_TYPES = {"IPv4": 4, "IPv6": 6}


@dataclass(frozen=True)
class Target:
    """One endpoint a service port may DNAT to."""

    address: IPAddress
    port: int
    protocol: Protocol
    local: bool
    node_name: str = ""

    def sort_key(self) -> tuple[int, int, int]:
        return (self.address.version, int(self.address), self.port)


@dataclass(frozen=True)
class Picked:
    cluster: tuple[Target, ...]  # for Cluster traffic policy
    local: tuple[Target, ...]  # for Local traffic policy
    usable: bool  # some endpoint anywhere could serve (none at all: reject, not drop)


SliceIndex = Mapping[tuple[str, str, int], list[EndpointSlice]]


def index_slices(slices: Iterable[EndpointSlice]) -> dict[tuple[str, str, int], list[EndpointSlice]]:
    """Slices by (namespace, service, family); FQDN slices are not proxied."""
    out: dict[tuple[str, str, int], list[EndpointSlice]] = {}
    for s in sorted(slices, key=lambda s: s.key):
        family = ADDRESS_TYPES.get(s.address_type)
        if family is not None and s.service:
            out.setdefault((s.namespace, s.service, family), []).append(s)
    return out


def _candidates(service: Service, port: ServicePort, slices: SliceIndex, family: int
                ) -> list[tuple[Endpoint, IPAddress, int]]:
    found: dict[IPAddress, tuple[Endpoint, IPAddress, int]] = {}
    for s in slices.get((service.namespace, service.name, family), ()):
        number = next((p.port for p in s.ports if p.name == port.name and p.protocol is port.protocol), None)
        if number is None:
            continue  # this slice does not serve this port
        for ep in s.endpoints:
            addresses = [a for a in ep.addresses if a.version == family]
            if addresses and addresses[0] not in found:
                found[addresses[0]] = (ep, addresses[0], number)
    return list(found.values())


def pick(service: Service, port: ServicePort, slices: SliceIndex, family: int, node_name: str) -> Picked:
    cands = _candidates(service, port, slices, family)

    def targets(want: list[tuple[Endpoint, IPAddress, int]]) -> tuple[Target, ...]:
        made = (Target(a, n, port.protocol, ep.node_name == node_name, ep.node_name) for ep, a, n in want)
        return tuple(sorted(made, key=Target.sort_key))

    ready = [c for c in cands if c[0].ready]
    fallback = [c for c in cands if c[0].serving and c[0].terminating]
    local_ready = [c for c in ready if c[0].node_name == node_name]
    local_fallback = [c for c in fallback if c[0].node_name == node_name]
    return Picked(cluster=targets(ready or fallback), local=targets(local_ready or local_fallback),
                  usable=bool(ready or fallback))
