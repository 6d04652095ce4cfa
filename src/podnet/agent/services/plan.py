"""What one service port in one address family needs, decided before any nft text is written:
which keys go to which chain (or to the no-endpoint verdict), and which endpoints each of its
policy chains picks from. Both the compiler and :func:`programmed_endpoints` read plans, so the
endpoints reported as programmed are exactly the ones the table DNATs to.

Chains of one service port (``svc-HASH`` and names made from it):

* ``svc-HASH``: Cluster policy, picks among the cluster endpoints;
* ``svc-HASH-local``: Local policy, picks among this node's endpoints;
* ``svc-HASH-ext``: traffic to an ExternalIP or the NodePort; decides masquerade, then goes to the
  policy chain of the external traffic policy.

The ClusterIP goes to the chain of the internal traffic policy. A key with no endpoint under its
policy goes to the no-endpoint map: ``reject`` when the service has no usable endpoint anywhere,
``drop`` when it has some but the Local policy leaves none here (kube-proxy's choice).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from podnet.agent.model import EndpointSlice, IPAddress, Service, ServicePort, ServiceType, TrafficPolicy
from podnet.agent.services.endpoints import Picked, SliceIndex, Target, index_slices, pick
from podnet.agent.services.names import proto, service_chain

EXTERNAL_TYPES = (ServiceType.NODE_PORT, ServiceType.LOAD_BALANCER)


@dataclass
class PortPlan:
    service: Service
    port: ServicePort
    family: int
    cluster_ip: IPAddress
    base: str  # svc-HASH
    picked: Picked
    vips: dict[str, str] = field(default_factory=dict)  # "addr . proto . port" -> chain
    nodeports: dict[str, str] = field(default_factory=dict)  # "proto . port" -> chain
    no_endpoint: dict[str, str] = field(default_factory=dict)  # key -> verdict
    no_endpoint_nodeports: dict[str, str] = field(default_factory=dict)
    policy_chains: dict[str, tuple[Target, ...]] = field(default_factory=dict)  # name -> endpoints
    external_chain: str | None = None  # set when external keys go to svc-HASH-ext

    @property
    def external_local(self) -> bool:
        return self.service.external_traffic_policy is TrafficPolicy.LOCAL

    @property
    def internal_chain(self) -> str:
        local = self.service.internal_traffic_policy is TrafficPolicy.LOCAL
        return f"{self.base}-local" if local else self.base

    def targets(self) -> Iterator[Target]:
        for eps in self.policy_chains.values():
            yield from eps


def proxied(service: Service) -> bool:
    """Headless, ExternalName, not-understood and unallocated services are not proxied."""
    return service.proxied and not service.headless


def plans(services: Iterable[Service], slices: Iterable[EndpointSlice], node_name: str) -> Iterator[PortPlan]:
    index = index_slices(slices)
    for service in sorted(services, key=lambda s: s.key):
        yield from service_plans(service, index, node_name)


def service_plans(service: Service, index: SliceIndex, node_name: str) -> list[PortPlan]:
    if not proxied(service):
        return []
    return [plan(service, port, cluster_ip, index, node_name)
            for cluster_ip in service.cluster_ips for port in service.ports]


def plan(service: Service, port: ServicePort, cluster_ip: IPAddress, index: SliceIndex,
         node_name: str) -> PortPlan:
    family = cluster_ip.version
    picked = pick(service, port, index, family, node_name)
    p = PortPlan(service, port, family, cluster_ip,
                 service_chain(service.key, port.name, port.protocol, family), picked)
    local = p.picked.local
    by_policy = {p.base: picked.cluster, f"{p.base}-local": local}
    verdict = "drop" if picked.usable else "reject"
    key = f"{cluster_ip} . {proto(port.protocol)} . {port.port}"
    if by_policy[p.internal_chain]:
        p.vips[key] = p.internal_chain
        p.policy_chains[p.internal_chain] = by_policy[p.internal_chain]
    else:
        p.no_endpoint[key] = verdict
    _plan_external(p, by_policy, verdict)
    return p


def _plan_external(p: PortPlan, by_policy: dict[str, tuple[Target, ...]], verdict: str) -> None:
    keys = [f"{ip} . {proto(p.port.protocol)} . {p.port.port}"
            for ip in p.service.external_ips if ip.version == p.family]
    nodeport = p.port.node_port if p.service.type in EXTERNAL_TYPES else None
    np_keys = [f"{proto(p.port.protocol)} . {nodeport}"] if nodeport else []
    if not keys and not np_keys:
        return
    policy = f"{p.base}-local" if p.external_local else p.base
    if not by_policy[policy]:
        p.no_endpoint.update((k, verdict) for k in keys)
        p.no_endpoint_nodeports.update((k, verdict) for k in np_keys)
        return
    p.external_chain = f"{p.base}-ext"
    p.vips.update((k, p.external_chain) for k in keys)
    p.nodeports.update((k, p.external_chain) for k in np_keys)
    p.policy_chains[policy] = by_policy[policy]
    if p.external_local:
        # Pods and the node itself reach the external address through the Cluster policy chain
        # (as kube-proxy does): it has endpoints whenever the local one has.
        p.policy_chains[p.base] = by_policy[p.base]
