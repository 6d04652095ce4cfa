"""The agent's picture of the cluster: the Kubernetes objects it acts on, reduced to what podnet uses.

Both sources (the manifest directory and the API informer) turn what they read into these values
(``agent.objects`` parses and validates), so the compilers never see raw API dicts. Values are
frozen: a change is a new value replacing the old one in the :class:`~podnet.agent.store.Store`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
Labels = Mapping[str, str]


class Operator(enum.Enum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


@dataclass(frozen=True)
class Requirement:
    """One ``matchExpressions`` entry (values are empty for Exists / DoesNotExist)."""

    key: str
    operator: Operator
    values: frozenset[str] = frozenset()

    def matches(self, labels: Labels) -> bool:
        if self.operator is Operator.EXISTS:
            return self.key in labels
        if self.operator is Operator.DOES_NOT_EXIST:
            return self.key not in labels
        inside = self.key in labels and labels[self.key] in self.values
        return inside if self.operator is Operator.IN else not inside


@dataclass(frozen=True)
class LabelSelector:
    """A metav1.LabelSelector: every matchLabels pair and every requirement (AND). The empty
    selector matches everything."""

    match_labels: tuple[tuple[str, str], ...] = ()
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Labels) -> bool:
        return (all(labels.get(k) == v for k, v in self.match_labels)
                and all(r.matches(labels) for r in self.requirements))

    @property
    def is_empty(self) -> bool:
        return not self.match_labels and not self.requirements


EVERYTHING = LabelSelector()


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


class Protocol(enum.Enum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"


@dataclass(frozen=True)
class ContainerPort:
    """A named container port (only named ones matter to policy: ports by number need no pod)."""

    name: str
    port: int
    protocol: Protocol = Protocol.TCP


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    uid: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    ips: tuple[IPAddress, ...] = ()
    node_name: str = ""
    host_network: bool = False
    ports: tuple[ContainerPort, ...] = ()
    # Succeeded/Failed pods keep their object but no longer own their IPs.
    terminal: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def named_port(self, name: str, protocol: Protocol) -> int | None:
        return next((p.port for p in self.ports if p.name == name and p.protocol is protocol), None)


@dataclass(frozen=True)
class IPBlock:
    cidr: IPNetwork
    except_: tuple[IPNetwork, ...] = ()

    def contains(self, ip: IPAddress) -> bool:
        return (ip.version == self.cidr.version and ip in self.cidr
                and not any(ip.version == e.version and ip in e for e in self.except_))


@dataclass(frozen=True)
class Peer:
    """One ``from``/``to`` entry: pods by selector (in the policy's namespace, or in the namespaces
    ``namespace_selector`` picks; both set = AND), or an ipBlock."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True)
class PolicyPort:
    """``port`` is a number, a name (resolved per destination pod) or None (every port); ``end_port``
    makes a range with a numeric port."""

    protocol: Protocol = Protocol.TCP
    port: int | str | None = None
    end_port: int | None = None


@dataclass(frozen=True)
class Rule:
    """An ingress or egress rule: ``peers`` empty = every peer; ``ports`` empty = every port."""

    peers: tuple[Peer, ...] = ()
    ports: tuple[PolicyPort, ...] = ()


class Direction(enum.Enum):
    INGRESS = "Ingress"
    EGRESS = "Egress"


@dataclass(frozen=True)
class NetworkPolicy:
    """A networking.k8s.io/v1 NetworkPolicy with ``policyTypes`` already defaulted. ``error`` set
    means it could not be understood: the pods it selects (every pod of its namespace when even the
    selector is unreadable) are isolated in both directions with nothing allowed — fail closed."""

    namespace: str
    name: str
    pod_selector: LabelSelector = EVERYTHING
    directions: frozenset[Direction] = frozenset({Direction.INGRESS})
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    error: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


# ---- Services (the service proxy) and Nodes (cross-node routing) ----------------------------------


class TrafficPolicy(enum.Enum):
    CLUSTER = "Cluster"
    LOCAL = "Local"


class ServiceType(enum.Enum):
    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"
    EXTERNAL_NAME = "ExternalName"


@dataclass(frozen=True)
class ServicePort:
    """``target_port`` is a number or a container port name (resolved per endpoint by the
    EndpointSlice controller: slices already carry numbers, matched to this port by ``name``)."""

    name: str
    port: int
    protocol: Protocol = Protocol.TCP
    node_port: int | None = None
    target_port: int | str | None = None


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    type: ServiceType = ServiceType.CLUSTER_IP
    cluster_ips: tuple[IPAddress, ...] = ()  # empty: headless (no proxying)
    external_ips: tuple[IPAddress, ...] = ()
    ports: tuple[ServicePort, ...] = ()
    session_affinity_seconds: int | None = None  # ClientIP affinity and its timeout
    external_traffic_policy: TrafficPolicy = TrafficPolicy.CLUSTER
    internal_traffic_policy: TrafficPolicy = TrafficPolicy.CLUSTER
    error: str | None = None  # set: not understood, not proxied (reported)
    # clusterIP "None": DNS-only, never proxied. A Service that is not headless may still have no
    # cluster IP (a manifest with nothing allocated): not proxied either, as kube-proxy skips it.
    headless: bool = False
    ip_families: tuple[str, ...] = ()  # "IPv4" / "IPv6", as spec.ipFamilies (or its cluster IPs)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def proxied(self) -> bool:
        """Whether the service proxy programs anything for it: understood, not ExternalName (DNS
        only), and with a cluster IP (kube-proxy skips a service without one, node ports too)."""
        return self.error is None and self.type is not ServiceType.EXTERNAL_NAME and bool(self.cluster_ips)


@dataclass(frozen=True)
class Endpoint:
    """One endpoint of a slice, with upstream's conditions (``ready`` absent counts as ready)."""

    addresses: tuple[IPAddress, ...]
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str = ""


@dataclass(frozen=True)
class EndpointPort:
    name: str
    port: int
    protocol: Protocol = Protocol.TCP


@dataclass(frozen=True)
class EndpointSlice:
    """discovery.k8s.io/v1; ``service`` from the ``kubernetes.io/service-name`` label."""

    namespace: str
    name: str
    service: str
    address_type: str = "IPv4"  # IPv4 | IPv6 (FQDN slices are not proxied)
    endpoints: tuple[Endpoint, ...] = ()
    ports: tuple[EndpointPort, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class Node:
    name: str
    pod_cidrs: tuple[IPNetwork, ...] = ()
    internal_ips: tuple[IPAddress, ...] = ()
    ready: bool = True
    labels: Mapping[str, str] = field(default_factory=dict)
