"""Small builders for Service / EndpointSlice values used by the service tests and the bench."""

from __future__ import annotations

from ipaddress import ip_address

from podnet.agent.model import (
    Endpoint,
    EndpointPort,
    EndpointSlice,
    IPAddress,
    Protocol,
    Service,
    ServicePort,
    ServiceType,
    TrafficPolicy,
)

NODE = "node-1"


def ip(text: str) -> IPAddress:
    return ip_address(text)


def service(name: str, cluster_ip: str | tuple[str, ...], *ports: ServicePort, ns: str = "default",
            type: ServiceType = ServiceType.CLUSTER_IP, external_ips: tuple[str, ...] = (),
            affinity: int | None = None, etp: TrafficPolicy = TrafficPolicy.CLUSTER,
            itp: TrafficPolicy = TrafficPolicy.CLUSTER) -> Service:
    cips = (cluster_ip,) if isinstance(cluster_ip, str) else cluster_ip
    return Service(ns, name, type, tuple(ip(c) for c in cips), tuple(ip(e) for e in external_ips),
                   ports or (ServicePort("http", 80),), affinity, etp, itp)


def endpoint(address: str, node: str = NODE, *, ready: bool = True, serving: bool | None = None,
             terminating: bool = False) -> Endpoint:
    return Endpoint((ip(address),), ready, ready if serving is None else serving, terminating, node)


def slice_(svc: str, *endpoints: Endpoint, ns: str = "default", name: str | None = None,
           ports: tuple[EndpointPort, ...] = (EndpointPort("http", 8080),), family: int = 4) -> EndpointSlice:
    return EndpointSlice(ns, name or f"{svc}-{family}", svc, f"IPv{family}", endpoints, ports)


def tcp(name: str, port: int, node_port: int | None = None) -> ServicePort:
    return ServicePort(name, port, Protocol.TCP, node_port)


def udp(name: str, port: int, node_port: int | None = None) -> ServicePort:
    return ServicePort(name, port, Protocol.UDP, node_port)


def many(count: int, endpoints: int = 5) -> tuple[list[Service], list[EndpointSlice]]:
    """``count`` ClusterIP services (10.96.0.0/16, then on) with ``endpoints`` each (10.244.0.0/14)."""
    services, slices = [], []
    for i in range(count):
        cip = ip_address("10.96.0.0") + 1 + i
        services.append(service(f"s{i}", str(cip), tcp("http", 80)))
        eps = [endpoint(str(ip_address("10.244.0.0") + 2 + i * endpoints + j),
                        NODE if j == 0 else "node-2") for j in range(endpoints)]
        slices.append(slice_(f"s{i}", *eps))
    return services, slices
