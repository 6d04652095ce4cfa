"""discovery.k8s.io/v1 EndpointSlice: raw dict -> :class:`~podnet.agent.model.EndpointSlice`.

The conditions get upstream's reading of absent values (the API's field documentation, and what
kube-proxy does): ``ready`` nil is true, ``serving`` nil is true, ``terminating`` nil is false.
A port without a number is dropped, as kube-proxy drops it (it names no port to forward to).
A slice that does not validate raises :class:`~podnet.agent.objects_fields.Invalid`: unlike a
policy, a half-understood slice has no safe meaning, so the source reports and skips it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from podnet.agent import objects_fields as f
from podnet.agent.model import Endpoint, EndpointPort, EndpointSlice, IPAddress, Labels
from podnet.agent.objects_policy import protocol

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")
MAX_ADDRESSES = 100  # the API's limit per endpoint


def _condition(conditions: Mapping[str, Any], name: str, default: bool) -> bool:
    value = conditions.get(name)
    return default if value is None else f.boolean(value, f"conditions.{name}")


def _addresses(raw: Mapping[str, Any], where: str, address_type: str) -> tuple[IPAddress, ...]:
    texts = f.sequence(raw.get("addresses"), f"{where}.addresses")
    if not 1 <= len(texts) <= MAX_ADDRESSES:
        raise f.Invalid(f"{where}.addresses: needs 1 to {MAX_ADDRESSES} addresses, got {len(texts)}")
    version = 4 if address_type == "IPv4" else 6
    found: list[IPAddress] = []
    for i, text in enumerate(texts):
        ip = f.ip_address(text, f"{where}.addresses[{i}]")
        if ip.version != version:
            raise f.Invalid(f"{where}.addresses[{i}]: {ip} is not an {address_type} address")
        if ip not in found:
            found.append(ip)
    return tuple(found)


def _endpoint(value: object, where: str, address_type: str) -> Endpoint:
    raw = f.mapping(value, where)
    addresses = _addresses(raw, where, address_type)
    try:
        conditions = f.mapping(raw.get("conditions"), "conditions", optional=True)
        ready = _condition(conditions, "ready", True)
        serving = _condition(conditions, "serving", True)
        terminating = _condition(conditions, "terminating", False)
    except f.Invalid as exc:
        raise f.Invalid(f"{where}.{exc}") from None
    node = f.string(raw.get("nodeName"), f"{where}.nodeName", optional=True)
    return Endpoint(addresses, ready, serving, terminating, node)


def _port(value: object, where: str) -> tuple[str, EndpointPort | None]:
    """(name, port); the port is None when it has no number."""
    raw = f.mapping(value, where)
    name = f.string(raw.get("name"), f"{where}.name", optional=True)
    if name:
        f.dns_label(name, f"{where}.name")
    proto = protocol(raw.get("protocol"), f"{where}.protocol")
    if raw.get("port") is None:
        return name, None
    return name, EndpointPort(name, f.port_number(raw.get("port"), f"{where}.port"), proto)


def _ports(raw: Mapping[str, Any]) -> tuple[EndpointPort, ...]:
    ports: list[EndpointPort] = []
    names: set[str] = set()
    for i, value in enumerate(f.sequence(raw.get("ports"), "ports")):
        name, port = _port(value, f"ports[{i}]")
        if name in names:
            raise f.Invalid(f"ports[{i}].name: {f.describe(name)} is used by another port")
        names.add(name)
        if port is not None:
            ports.append(port)
    return tuple(ports)


def parse(raw: Mapping[str, Any], namespace: str, name: str, labels: Labels) -> EndpointSlice:
    """The slice from a raw object whose metadata is already read. ``service`` is "" for a slice
    without the service-name label: it belongs to no Service and nothing proxies it."""
    address_type = f.string(raw.get("addressType"), "addressType")
    if address_type not in ADDRESS_TYPES:
        raise f.Invalid(f"addressType: {f.describe(address_type)} is not one of {', '.join(ADDRESS_TYPES)}")
    entries = f.sequence(raw.get("endpoints"), "endpoints")
    endpoints: tuple[Endpoint, ...] = ()
    if address_type != "FQDN":  # FQDN slices are never proxied: their endpoints are names
        endpoints = tuple(_endpoint(e, f"endpoints[{i}]", address_type) for i, e in enumerate(entries))
    return EndpointSlice(namespace, name, labels.get(SERVICE_NAME_LABEL, ""), address_type, endpoints,
                         _ports(raw))
