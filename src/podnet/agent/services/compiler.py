"""The service compiler the sync loop keeps: each service's compiled part between syncs, so a sync
costs the services that changed, not the services there are.

:meth:`ServiceCompiler.update` recompiles the services a sync was told about (the loop collects
their keys from the store's changes); :meth:`ServiceCompiler.compile` looks at every service and
recompiles those whose Service or EndpointSlices differ (the store hands unchanged objects over as
the same values, so most are recognized by identity). Both keep, as they go, what conntrack
cleaning needs: which endpoints no part DNATs to any more, and which UDP service addresses stopped
rejecting (their endpoints came).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence

from podnet.agent.model import EndpointSlice, IPAddress, IPNetwork, Protocol, Service
from podnet.agent.services.compile import fixed_part, service_part
from podnet.agent.services.endpoints import Target
from podnet.agent.services.names import FAMILIES
from podnet.agent.services.parts import FIXED_PART, Assembly, Part
from podnet.agent.services.stale import EndpointKey
from podnet.dataplane.contribution import Contribution

ServiceKey = tuple[str, str]
VipPort = tuple[IPAddress, int]
Kept = tuple[Service, tuple[EndpointSlice, ...], Part]


def compile(services: Iterable[Service], slices: Iterable[EndpointSlice], *, node_name: str,
            node_ips: Sequence[IPAddress] = (), pod_cidrs: Sequence[IPNetwork] = ()) -> Contribution:
    """The ``services`` contribution from scratch."""
    compiler = ServiceCompiler(node_name=node_name, node_ips=node_ips, pod_cidrs=pod_cidrs)
    return compiler.compile(services, slices)


class ServiceCompiler:
    def __init__(self, *, node_name: str, node_ips: Sequence[IPAddress] = (),
                 pod_cidrs: Sequence[IPNetwork] = ()) -> None:
        self.node_name = node_name
        self._pod_families = frozenset(f for f in FAMILIES if any(c.version == f for c in pod_cidrs))
        self._parts: dict[ServiceKey, Kept] = {}
        self._assembly = Assembly()
        self._assembly.replace({FIXED_PART: fixed_part(node_ips, pod_cidrs)})
        self._endpoints: Counter[EndpointKey] = Counter()  # endpoint -> parts DNATing to it
        self._dropped: set[EndpointKey] = set()  # went to 0 since last taken
        self._rejecting: dict[ServiceKey, frozenset[VipPort]] = {}
        self._rejecting_count: Counter[VipPort] = Counter()
        self._opened: set[VipPort] = set()  # stopped rejecting since last taken

    # ---- compiling ----

    def compile(self, services: Iterable[Service], slices: Iterable[EndpointSlice]) -> Contribution:
        """Every service (those not given are gone)."""
        by_service: dict[ServiceKey, list[EndpointSlice]] = {}
        for s in slices:
            by_service.setdefault((s.namespace, s.service), []).append(s)
        given = {s.key: s for s in services}
        changes: dict[ServiceKey, Kept | None] = {k: None for k in self._parts.keys() - given.keys()}
        for key, service in given.items():
            found = by_service.get(key, ())
            mine = tuple(sorted(found, key=lambda s: s.key)) if len(found) > 1 else tuple(found)
            kept = self._kept(service, mine)
            if kept is not self._parts.get(key):
                changes[key] = kept
        return self._apply(changes)

    def update(self, keys: Iterable[ServiceKey], services: Mapping[ServiceKey, Service],
               slices_of: Callable[[str, str], tuple[EndpointSlice, ...]]) -> Contribution:
        """Only the services ``keys`` name, as ``services`` and ``slices_of`` have them now
        (``slices_of(namespace, name)``: the service's slices in name order)."""
        changes: dict[ServiceKey, Kept | None] = {}
        for key in keys:
            service = services.get(key)
            kept = None if service is None else self._kept(service, slices_of(*key))
            if kept is not self._parts.get(key):
                changes[key] = kept
        return self._apply(changes)

    def _kept(self, service: Service, slices: tuple[EndpointSlice, ...]) -> Kept:
        known = self._parts.get(service.key)
        # Tuples compare their items by identity first: unchanged slices cost next to nothing.
        if known is not None and (known[0] is service or known[0] == service) and known[1] == slices:
            return known
        return service, slices, service_part(service, slices, self.node_name, self._pod_families)

    def _apply(self, changes: dict[ServiceKey, Kept | None]) -> Contribution:
        for key, kept in changes.items():
            old = self._parts.pop(key, None)
            if old is not None:
                self._count(key, old, -1)
            if kept is not None:
                self._parts[key] = kept
                self._count(key, kept, +1)
        return self._assembly.replace({k: None if v is None else v[2] for k, v in changes.items()})

    def _count(self, key: ServiceKey, kept: Kept, sign: int) -> None:
        service, _, part = kept
        for endpoint in {EndpointKey(t.address, t.port, t.protocol) for t in part.targets}:
            self._endpoints[endpoint] += sign
            if self._endpoints[endpoint] <= 0:
                del self._endpoints[endpoint]
                self._dropped.add(endpoint)
        if sign < 0:
            for vip in self._rejecting.pop(key, frozenset()):
                self._rejecting_count[vip] -= 1
                if self._rejecting_count[vip] <= 0:
                    del self._rejecting_count[vip]
                    self._opened.add(vip)
        else:
            rejecting = rejecting_udp(service, part.targets)
            if rejecting:
                self._rejecting[key] = rejecting
                self._rejecting_count.update(rejecting)

    # ---- what the sync reads ----

    def targets_of(self, key: ServiceKey) -> frozenset[Target]:
        """The endpoints one service's part DNATs to (empty: unknown or none)."""
        known = self._parts.get(key)
        return known[2].targets if known is not None else frozenset()

    def endpoints(self) -> frozenset[EndpointKey]:
        """Every endpoint some part DNATs to."""
        return frozenset(self._endpoints)

    def proxied(self) -> int:
        return sum(1 for service, _, _ in self._parts.values() if service.proxied)

    def take_stale(self) -> tuple[frozenset[EndpointKey], frozenset[VipPort]]:
        """Since the last call: the endpoints no part DNATs to any more, and the UDP service
        addresses that stopped rejecting. Take them after a commit succeeded: until then they
        keep accumulating."""
        dropped = frozenset(e for e in self._dropped if e not in self._endpoints)
        opened = frozenset(v for v in self._opened if v not in self._rejecting_count)
        self._dropped, self._opened = set(), set()
        return dropped, opened


def rejecting_udp(service: Service, targets: frozenset[Target]) -> frozenset[VipPort]:
    """The service's UDP addresses and ports with no endpoint to go to (their packets are rejected):
    once an endpoint comes, the entries the rejects left must go, or those clients stay rejected."""
    udp_ports = [p.port for p in service.ports if p.protocol is Protocol.UDP]
    if not service.proxied or not udp_ports or any(t.protocol is Protocol.UDP for t in targets):
        return frozenset()
    vips = (*service.cluster_ips, *service.external_ips)
    return frozenset((vip, port) for vip in vips for port in udp_ports)
