"""v1 Service: raw dict -> :class:`~podnet.agent.model.Service`.

Validation follows the API server's (pkg/apis/core/validation ``ValidateService``) where it
changes what the proxy would program, and defaulting follows its defaults (``type`` ClusterIP,
``targetPort`` = ``port``, ``sessionAffinityConfig.clientIP.timeoutSeconds`` 10800, the traffic
policies Cluster). A Service whose spec does not validate is kept with ``error`` set: it is
reported and not proxied, so a typo never makes the proxy guess what was meant.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from podnet.agent import objects_fields as f
from podnet.agent.model import IPAddress, Service, ServicePort, ServiceType, TrafficPolicy
from podnet.agent.objects_policy import protocol

DEFAULT_AFFINITY_SECONDS = 10800
MAX_AFFINITY_SECONDS = 86400
FAMILIES = {4: "IPv4", 6: "IPv6"}
_NAMES = {
    "type": "ClusterIP, NodePort, LoadBalancer, ExternalName",
    "externalTrafficPolicy": "Cluster, Local",
    "internalTrafficPolicy": "Cluster, Local",
}


def _service_type(spec: Mapping[str, Any]) -> ServiceType:
    value = spec.get("type")
    if value is None:
        return ServiceType.CLUSTER_IP
    text = f.string(value, "spec.type")
    try:
        return ServiceType(text)
    except ValueError:
        raise f.Invalid(f"spec.type: {f.describe(text)} is not one of {_NAMES['type']}") from None


def _traffic_policy(spec: Mapping[str, Any], field: str) -> TrafficPolicy | None:
    value = spec.get(field)
    if value is None or value == "":
        return None
    text = f.string(value, f"spec.{field}")
    try:
        return TrafficPolicy(text)
    except ValueError:
        raise f.Invalid(f"spec.{field}: {f.describe(text)} is not one of {_NAMES[field]}") from None


def _ip_texts(spec: Mapping[str, Any]) -> list[str]:
    """spec.clusterIPs, or spec.clusterIP alone; the two must agree on the first IP."""
    many = [f.string(v, f"spec.clusterIPs[{i}]")
            for i, v in enumerate(f.sequence(spec.get("clusterIPs"), "spec.clusterIPs"))]
    one = f.string(spec.get("clusterIP"), "spec.clusterIP", optional=True)
    if many and one and many[0] != one:
        raise f.Invalid(f"spec.clusterIPs[0]: {f.describe(many[0])} must equal spec.clusterIP "
                        f"{f.describe(one)}")
    return many or ([one] if one else [])


def _cluster_ips(spec: Mapping[str, Any], kind: ServiceType) -> tuple[tuple[IPAddress, ...], bool]:
    """(cluster IPs, headless)."""
    texts = _ip_texts(spec)
    if texts and kind is ServiceType.EXTERNAL_NAME:
        raise f.Invalid("spec.clusterIP: must not be set for type ExternalName")
    if "None" in texts:
        if texts != ["None"]:
            raise f.Invalid("spec.clusterIPs: \"None\" must be the only cluster IP")
        if kind is not ServiceType.CLUSTER_IP:
            raise f.Invalid(f"spec.clusterIP: \"None\" (headless) is only allowed for type ClusterIP, "
                            f"not {kind.value}")
        return (), True
    if len(texts) > 2:
        raise f.Invalid(f"spec.clusterIPs: at most 2 cluster IPs (one per family), got {len(texts)}")
    ips = tuple(f.ip_address(t, f"spec.clusterIPs[{i}]") for i, t in enumerate(texts))
    if len(ips) == 2 and ips[0].version == ips[1].version:
        raise f.Invalid("spec.clusterIPs: the two cluster IPs must be of different families")
    return ips, False


def _ip_families(spec: Mapping[str, Any], ips: tuple[IPAddress, ...]) -> tuple[str, ...]:
    families: list[str] = []
    for i, value in enumerate(f.sequence(spec.get("ipFamilies"), "spec.ipFamilies")):
        text = f.string(value, f"spec.ipFamilies[{i}]")
        if text not in FAMILIES.values():
            raise f.Invalid(f"spec.ipFamilies[{i}]: {f.describe(text)} is not one of IPv4, IPv6")
        if text in families:
            raise f.Invalid(f"spec.ipFamilies[{i}]: {text} is listed twice")
        families.append(text)
    # The API server keeps the families in the order of the cluster IPs they describe.
    for i, ip in enumerate(ips):
        if i < len(families) and families[i] != FAMILIES[ip.version]:
            raise f.Invalid(f"spec.ipFamilies[{i}]: {families[i]} does not match spec.clusterIPs[{i}] {ip}")
    derived = [FAMILIES[ip.version] for ip in ips]
    return tuple(families) if len(families) >= len(derived) else tuple(derived)


def _external_ips(spec: Mapping[str, Any]) -> tuple[IPAddress, ...]:
    found: list[IPAddress] = []
    for i, value in enumerate(f.sequence(spec.get("externalIPs"), "spec.externalIPs")):
        ip = f.ip_address(value, f"spec.externalIPs[{i}]")
        if ip not in found:
            found.append(ip)
    return tuple(found)


def _zero(value: object) -> bool:
    return type(value) is int and value == 0  # not False: a boolean is never a port


def _target_port(value: object, where: str, port: int) -> int | str:
    if value is None or value == "" or _zero(value):
        return port  # upstream defaulting (0 and "" too): the target is the service port itself
    if isinstance(value, str):
        return f.port_name(value, where)
    return f.port_number(value, where)


def _port(value: object, where: str, kind: ServiceType, needs_name: bool) -> ServicePort:
    raw = f.mapping(value, where)
    name = f.string(raw.get("name"), f"{where}.name", optional=True)
    if name:
        f.dns_label(name, f"{where}.name")
    elif needs_name:
        raise f.Invalid(f"{where}.name: required when the service has more than one port")
    number = f.port_number(raw.get("port"), f"{where}.port")
    node_port = None
    # 0 is "not allocated yet", as the API server reads it.
    if raw.get("nodePort") is not None and not _zero(raw.get("nodePort")):
        node_port = f.port_number(raw.get("nodePort"), f"{where}.nodePort")
        if kind in (ServiceType.CLUSTER_IP, ServiceType.EXTERNAL_NAME):
            raise f.Invalid(f"{where}.nodePort: may not be used when type is {kind.value}")
    return ServicePort(name, number, protocol(raw.get("protocol"), f"{where}.protocol"), node_port,
                       _target_port(raw.get("targetPort"), f"{where}.targetPort", number))


def _ports(spec: Mapping[str, Any], kind: ServiceType, headless: bool) -> tuple[ServicePort, ...]:
    raws = f.sequence(spec.get("ports"), "spec.ports")
    if not raws and not headless and kind is not ServiceType.EXTERNAL_NAME:
        raise f.Invalid("spec.ports: a service that is not headless needs at least one port")
    ports: list[ServicePort] = []
    for i, raw in enumerate(raws):
        where = f"spec.ports[{i}]"
        port = _port(raw, where, kind, len(raws) > 1)
        for other in ports:
            if port.name == other.name:
                raise f.Invalid(f"{where}.name: {f.describe(port.name)} is used by another port")
            if (port.port, port.protocol) == (other.port, other.protocol):
                raise f.Invalid(f"{where}: port {port.port}/{port.protocol.value} is listed twice")
            if port.node_port is not None and (port.node_port, port.protocol) == (other.node_port,
                                                                                   other.protocol):
                raise f.Invalid(f"{where}.nodePort: {port.node_port}/{port.protocol.value} is listed twice")
        ports.append(port)
    return tuple(ports)


def _affinity_seconds(spec: Mapping[str, Any]) -> int | None:
    affinity = f.string(spec.get("sessionAffinity"), "spec.sessionAffinity", optional=True) or "None"
    config = f.mapping(spec.get("sessionAffinityConfig"), "spec.sessionAffinityConfig", optional=True)
    if affinity == "None":
        if config:
            raise f.Invalid("spec.sessionAffinityConfig: must not be set when sessionAffinity is None")
        return None
    if affinity != "ClientIP":
        raise f.Invalid(f"spec.sessionAffinity: {f.describe(affinity)} is not one of None, ClientIP")
    client = f.mapping(config.get("clientIP"), "spec.sessionAffinityConfig.clientIP", optional=True)
    where = "spec.sessionAffinityConfig.clientIP.timeoutSeconds"
    if client.get("timeoutSeconds") is None:
        return DEFAULT_AFFINITY_SECONDS
    seconds = f.integer(client.get("timeoutSeconds"), where)
    if not 1 <= seconds <= MAX_AFFINITY_SECONDS:
        raise f.Invalid(f"{where}: {seconds} is not in 1-{MAX_AFFINITY_SECONDS}")
    return seconds


def _external_policy(spec: Mapping[str, Any], kind: ServiceType,
                     external_ips: tuple[IPAddress, ...]) -> TrafficPolicy:
    policy = _traffic_policy(spec, "externalTrafficPolicy")
    reachable = kind in (ServiceType.NODE_PORT, ServiceType.LOAD_BALANCER) or (
        kind is ServiceType.CLUSTER_IP and bool(external_ips))
    if policy is not None and not reachable:
        # As the API server: the field means nothing for a service with no external address.
        raise f.Invalid("spec.externalTrafficPolicy: may only be set for externally-accessible services "
                        "(NodePort, LoadBalancer, or with externalIPs)")
    return policy or TrafficPolicy.CLUSTER


def _service(namespace: str, name: str, spec: Mapping[str, Any]) -> Service:
    kind = _service_type(spec)
    cluster_ips, headless = _cluster_ips(spec, kind)
    external_ips = _external_ips(spec)
    return Service(
        namespace, name, kind, cluster_ips, external_ips, _ports(spec, kind, headless),
        session_affinity_seconds=_affinity_seconds(spec),
        external_traffic_policy=_external_policy(spec, kind, external_ips),
        internal_traffic_policy=_traffic_policy(spec, "internalTrafficPolicy") or TrafficPolicy.CLUSTER,
        headless=headless, ip_families=_ip_families(spec, cluster_ips))


def failed_service(namespace: str, name: str, error: str) -> Service:
    """The stand-in for a Service that cannot be proxied as written: reported, never proxied."""
    return Service(namespace, name, error=error)


def parse_spec(raw: Mapping[str, Any], namespace: str, name: str) -> Service:
    """The Service from a raw object whose metadata is already read; an invalid spec gives a
    Service with ``error`` naming the field, never an exception."""
    try:
        return _service(namespace, name, f.mapping(raw.get("spec"), "spec", optional=True))
    except f.Invalid as exc:
        return failed_service(namespace, name, str(exc))
