"""Raw Kubernetes objects (dicts from YAML, JSON or the API server) -> the agent's model values.

:func:`parse_object` is the one entry point both sources use. A Namespace, Pod, EndpointSlice or
Node that does not validate raises :class:`ObjectError` naming the object and the field (the
source reports it and skips the object). A NetworkPolicy whose spec does not validate is returned
with ``error`` set (see ``objects_policy``): the policy must keep isolating what it selects. A
Service whose spec does not validate is also returned with ``error`` set (``objects_service``):
it is reported and not proxied. Only a policy or Service whose metadata cannot be read (no name
to key it by) raises.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from podnet.agent import objects_fields as f
from podnet.agent import objects_node, objects_policy, objects_service, objects_slice
from podnet.agent.model import (
    ContainerPort,
    EndpointSlice,
    IPAddress,
    Namespace,
    NetworkPolicy,
    Node,
    Pod,
    Service,
)

Object = Namespace | Pod | NetworkPolicy | Service | EndpointSlice | Node
Key = str | tuple[str, str]
DEFAULT_NAMESPACE = "default"


class Kind(enum.Enum):
    """The kinds the agent reads, with the apiVersion each is served under."""

    NAMESPACE = ("v1", "Namespace")
    POD = ("v1", "Pod")
    NETWORK_POLICY = ("networking.k8s.io/v1", "NetworkPolicy")
    SERVICE = ("v1", "Service")
    ENDPOINT_SLICE = ("discovery.k8s.io/v1", "EndpointSlice")
    NODE = ("v1", "Node")

    @property
    def api_version(self) -> str:
        return self.value[0]

    @property
    def kind(self) -> str:
        return self.value[1]

    @property
    def namespaced(self) -> bool:
        """Namespaced kinds are keyed (namespace, name); cluster-scoped ones by name."""
        return self not in (Kind.NAMESPACE, Kind.NODE)


_KINDS: dict[type, Kind] = {Namespace: Kind.NAMESPACE, Pod: Kind.POD, NetworkPolicy: Kind.NETWORK_POLICY,
                            Service: Kind.SERVICE, EndpointSlice: Kind.ENDPOINT_SLICE, Node: Kind.NODE}


class ObjectError(ValueError):
    """A raw object that cannot become a model value; the message names the object and field."""


class UnsupportedKind(ObjectError):
    """An object of a kind (or apiVersion) the agent does not read: not an error in a manifest
    directory that also holds Deployments or ConfigMaps."""


def kind_named(raw: Mapping[str, Any]) -> Kind | None:
    """The Kind that a raw object's apiVersion and kind fields name; None for one the agent does
    not read."""
    return next((k for k in Kind if (raw.get("apiVersion"), raw.get("kind")) == k.value), None)


def kind_of(obj: Object) -> Kind:
    return _KINDS[type(obj)]


def key_of(obj: Object) -> Key:
    return obj.name if isinstance(obj, Namespace | Node) else obj.key


def describe_key(kind: Kind, key: Key) -> str:
    return f"{kind.kind} {key if isinstance(key, str) else '/'.join(key)}"


def _metadata(raw: Mapping[str, Any], kind: Kind,
              default_ns: str | None) -> tuple[str, str, Mapping[str, Any]]:
    """(namespace, name, metadata) of a raw object; namespace is "" for a cluster-scoped kind."""
    meta = f.mapping(raw.get("metadata"), "metadata")
    # Namespace and Service names are DNS labels (they become DNS names); the rest subdomains.
    name = f.object_name(meta.get("name"), "metadata.name", dns_label=kind in (Kind.NAMESPACE, Kind.SERVICE))
    if not kind.namespaced:
        return "", name, meta
    ns_raw = meta.get("namespace")
    if ns_raw is None and default_ns is not None:
        return default_ns, name, meta
    return f.object_name(ns_raw, "metadata.namespace", dns_label=True), name, meta


def _frozen_labels(meta: Mapping[str, Any]) -> Mapping[str, str]:
    # Read-only, so a value handed out by the store cannot be changed under its other readers.
    return MappingProxyType(f.labels(meta.get("labels"), "metadata.labels"))


def _pod_ips(status: Mapping[str, Any]) -> tuple[IPAddress, ...]:
    entries = f.sequence(status.get("podIPs"), "status.podIPs")
    texts = [f.string(f.mapping(e, f"status.podIPs[{i}]").get("ip"), f"status.podIPs[{i}].ip")
             for i, e in enumerate(entries)]
    where = "status.podIPs"
    if not texts and status.get("podIP") not in (None, ""):
        texts, where = [f.string(status.get("podIP"), "status.podIP")], "status.podIP"
    ips: list[IPAddress] = []
    for i, text in enumerate(texts):
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            raise f.Invalid(f"{where}[{i}]: {f.describe(text)} is not an IP address") from None
        if ip not in ips:
            ips.append(ip)
    return tuple(ips)


def _container_ports(spec: Mapping[str, Any]) -> tuple[ContainerPort, ...]:
    """The named ports of the pod's containers (a NetworkPolicy can name only those)."""
    found: list[ContainerPort] = []
    for i, c in enumerate(f.sequence(spec.get("containers"), "spec.containers")):
        container = f.mapping(c, f"spec.containers[{i}]")
        for j, p in enumerate(f.sequence(container.get("ports"), f"spec.containers[{i}].ports")):
            where = f"spec.containers[{i}].ports[{j}]"
            port = f.mapping(p, where)
            number = f.port_number(port.get("containerPort"), f"{where}.containerPort")
            proto = objects_policy.protocol(port.get("protocol"), f"{where}.protocol")
            name = f.string(port.get("name"), f"{where}.name", optional=True)
            if name:
                found.append(ContainerPort(f.port_name(name, f"{where}.name"), number, proto))
    return tuple(found)


def _pod(raw: Mapping[str, Any], namespace: str, name: str, meta: Mapping[str, Any]) -> Pod:
    spec = f.mapping(raw.get("spec"), "spec", optional=True)
    status = f.mapping(raw.get("status"), "status", optional=True)
    phase = f.string(status.get("phase"), "status.phase", optional=True)
    return Pod(
        namespace=namespace, name=name,
        uid=f.string(meta.get("uid"), "metadata.uid", optional=True),
        labels=_frozen_labels(meta),
        ips=_pod_ips(status),
        node_name=f.string(spec.get("nodeName"), "spec.nodeName", optional=True),
        host_network=f.boolean(spec.get("hostNetwork"), "spec.hostNetwork"),
        ports=_container_ports(spec),
        terminal=phase in ("Succeeded", "Failed"))


def _kind(raw: Mapping[str, Any], expected: Kind | None) -> Kind:
    api_version, kind_text = raw.get("apiVersion"), raw.get("kind")
    if expected is not None and api_version is None and kind_text is None:
        return expected  # list items from the API server carry no apiVersion/kind
    for kind in Kind:
        if (api_version, kind_text) == kind.value:
            if expected is not None and kind is not expected:
                break
            return kind
    raise UnsupportedKind(f"{f.describe(api_version)}/{f.describe(kind_text)}: not a kind the agent reads")


def _name_for_error(raw: Mapping[str, Any]) -> str:
    meta = raw.get("metadata")
    if isinstance(meta, Mapping):
        name, ns = meta.get("name"), meta.get("namespace")
        if isinstance(name, str) and name:
            return f"{ns}/{name}" if isinstance(ns, str) and ns else name
    return "(unnamed)"


def parse_object(raw: object, *, expected: Kind | None = None,
                 default_namespace: str | None = DEFAULT_NAMESPACE) -> Object:
    """The model value of one raw object. ``expected`` checks (or, for API list items that carry
    no kind, supplies) the kind; ``default_namespace`` fills a namespaced object's absent
    metadata.namespace (as kubectl does; None makes it required)."""
    if not isinstance(raw, Mapping):
        raise ObjectError(f"object: expected a mapping, got {f.describe(raw)}")
    kind = _kind(raw, expected)
    try:
        namespace, name, meta = _metadata(raw, kind, default_namespace)
    except f.Invalid as exc:
        raise ObjectError(f"{kind.kind} {_name_for_error(raw)}: {exc}") from None
    if kind is Kind.NETWORK_POLICY:
        return objects_policy.parse_spec(raw, namespace, name)
    if kind is Kind.SERVICE:
        return objects_service.parse_spec(raw, namespace, name)
    try:
        return _parse_kind(kind, raw, namespace, name, meta)
    except f.Invalid as exc:
        label = f"{namespace}/{name}" if kind.namespaced else name
        raise ObjectError(f"{kind.kind} {label}: {exc}") from None


def _parse_kind(kind: Kind, raw: Mapping[str, Any], namespace: str, name: str,
                meta: Mapping[str, Any]) -> Object:
    """The kinds that raise (f.Invalid) when they do not validate."""
    if kind is Kind.NAMESPACE:
        return Namespace(name, _frozen_labels(meta))
    if kind is Kind.ENDPOINT_SLICE:
        return objects_slice.parse(raw, namespace, name, _frozen_labels(meta))
    if kind is Kind.NODE:
        return objects_node.parse(raw, name, _frozen_labels(meta))
    return _pod(raw, namespace, name, meta)


def failed_policy(raw: Mapping[str, Any], error: str, *,
                  default_namespace: str | None = DEFAULT_NAMESPACE) -> NetworkPolicy:
    """The fail-closed stand-in for a NetworkPolicy that failed a check outside this module (a
    schema validation); raises ObjectError only when its metadata cannot be read."""
    got = failed_object(Kind.NETWORK_POLICY, raw, error, default_namespace=default_namespace)
    assert isinstance(got, NetworkPolicy)
    return got


# The kinds whose invalid objects are kept, with ``error`` set, instead of skipped.
KEPT_WHEN_INVALID = frozenset({Kind.NETWORK_POLICY, Kind.SERVICE})


def failed_object(kind: Kind, raw: Mapping[str, Any], error: str, *,
                  default_namespace: str | None = DEFAULT_NAMESPACE) -> Object | None:
    """The stand-in for an object that failed a check outside this module (a schema validation):
    a fail-closed NetworkPolicy, a Service that is reported and not proxied, or None for the kinds
    that are skipped instead. Raises ObjectError only when its metadata cannot be read."""
    if kind not in KEPT_WHEN_INVALID:
        return None
    try:
        namespace, name, _ = _metadata(raw, kind, default_namespace)
    except f.Invalid as exc:
        raise ObjectError(f"{kind.kind} {_name_for_error(raw)}: {exc}") from None
    if kind is Kind.SERVICE:
        return objects_service.failed_service(namespace, name, error)
    return objects_policy.failed_policy(raw, namespace, name, error)
