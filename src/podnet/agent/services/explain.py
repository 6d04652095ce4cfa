"""``podnet policy explain`` for a destination that is a service address (a ClusterIP or an
ExternalIP): which Service and port it is, which endpoints the proxy DNATs it to (as the compiled
table picks them, see :mod:`podnet.agent.services.plan`), and for each endpoint the policy verdict,
since policy judges the connection after DNAT, on the endpoint's address and port.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from ipaddress import ip_address

from podnet.agent.model import EndpointSlice, IPAddress, Protocol, Service
from podnet.agent.services.endpoints import Target, index_slices
from podnet.agent.services.names import proto
from podnet.agent.services.plan import PortPlan, service_plans

# (endpoint address, "port/PROTO") -> the policy explanation of the connection to it
PerEndpoint = Callable[[str, str], str]


def service_address(services: Iterable[Service], text: str) -> bool:
    """Whether ``text`` is a ClusterIP or ExternalIP of some proxied Service."""
    try:
        address = ip_address(text)
    except ValueError:
        return False
    return any(address in (*s.cluster_ips, *s.external_ips) for s in services if s.proxied)


def explain_service(services: Iterable[Service], slices: Iterable[EndpointSlice], node_name: str,
                    dst: str, port: int, protocol: Protocol, per_endpoint: PerEndpoint) -> str | None:
    """What a connection to ``dst`` ``port/protocol`` meets, or None when ``dst`` is no service
    address (the caller explains it as a plain destination)."""
    if not service_address(services, dst):
        return None
    address = ip_address(dst)
    matches = [s for s in services if s.proxied and address in (*s.cluster_ips, *s.external_ips)]
    index = index_slices(slices)
    key = f"{address} . {proto(protocol)} . {port}"
    lines: list[str] = []
    for service in sorted(matches, key=lambda s: s.key):
        kind = "ClusterIP" if address in service.cluster_ips else "ExternalIP"
        plans = [p for p in service_plans(service, index, node_name) if p.family == address.version]
        plan = next((p for p in plans if key in p.vips or key in p.no_endpoint), None)
        head = f"{dst} is the {kind} of Service {service.namespace}/{service.name}"
        if plan is None:
            ports = ", ".join(f"{p.port}/{p.protocol.value}" for p in service.ports) or "none"
            lines.append(f"{head}, which has no port {port}/{protocol.value} (its ports: {ports}): "
                         "the proxy does not translate it")
            continue
        lines.append(f"{head}, port {plan.port.name or port} ({port}/{protocol.value})")
        lines += _endpoints(plan, key, per_endpoint)
    return "\n".join(lines)


def _endpoints(plan: PortPlan, key: str, per_endpoint: PerEndpoint) -> list[str]:
    if key in plan.no_endpoint:
        verdict = plan.no_endpoint[key]
        why = ("no usable endpoint: new connections are rejected at once" if verdict == "reject" else
               "endpoints exist, but none on this node that its Local traffic policy may use: dropped")
        return [f"  {why}"]
    targets = _targets(plan, plan.vips[key])
    lines = [f"  -> {len(targets)} endpoint(s), picked at random per connection: "
             + ", ".join(_address(t) for t in targets)]
    for t in targets:
        lines.append(f"  endpoint {_address(t)}:")
        text = per_endpoint(str(t.address), f"{t.port}/{t.protocol.value}")
        lines += [f"    {line}" for line in text.splitlines()]
    return lines


def _targets(plan: PortPlan, chain: str) -> tuple[Target, ...]:
    """The endpoints the chain a key goes to picks from (an external key's chain goes on to the
    policy chain of its external traffic policy)."""
    if chain == plan.external_chain:
        chain = f"{plan.base}-local" if plan.external_local else plan.base
    return plan.policy_chains.get(chain, ())


def _address(t: Target) -> str:
    host: IPAddress = t.address
    return f"[{host}]:{t.port}" if host.version == 6 else f"{host}:{t.port}"
