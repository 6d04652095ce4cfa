"""Small builders for policy tests: pods, namespaces and policies in a line each."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from ipaddress import ip_address, ip_network

from podnet.agent.model import (
    ContainerPort,
    Direction,
    IPBlock,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    Operator,
    Peer,
    PolicyPort,
    Protocol,
    Requirement,
    Rule,
)
from podnet.agent.model import Pod as PodValue

ING = Direction.INGRESS
EGR = Direction.EGRESS
TCP, UDP, SCTP = Protocol.TCP, Protocol.UDP, Protocol.SCTP


def sel(labels: Mapping[str, str] | None = None, *exprs: tuple[str, str, Iterable[str]]) -> LabelSelector:
    """``sel({"a": "b"}, ("k", "In", ["v"]))``."""
    reqs = tuple(Requirement(k, Operator(op), frozenset(vs)) for k, op, vs in exprs)
    return LabelSelector(tuple(sorted((labels or {}).items())), reqs)


def pod(ns: str, name: str, *ips: str, node: str = "n1", ports: Iterable[tuple[str, int, Protocol]] = (),
        **labels: str) -> PodValue:
    return PodValue(namespace=ns, name=name, labels=dict(labels), ips=tuple(ip_address(i) for i in ips),
                    node_name=node, ports=tuple(ContainerPort(n, p, pr) for n, p, pr in ports))


def ns(name: str, **labels: str) -> Namespace:
    return Namespace(name, {"kubernetes.io/metadata.name": name, **labels})


def peer(pods: LabelSelector | None = None, nss: LabelSelector | None = None) -> Peer:
    return Peer(pod_selector=pods, namespace_selector=nss)


def block(cidr: str, *except_: str) -> Peer:
    return Peer(ip_block=IPBlock(ip_network(cidr), tuple(ip_network(e) for e in except_)))


def port(p: int | str | None = None, proto: Protocol = TCP, end: int | None = None) -> PolicyPort:
    return PolicyPort(proto, p, end)


def rule(*peers: Peer, ports: Iterable[PolicyPort] = ()) -> Rule:
    return Rule(tuple(peers), tuple(ports))


def policy(namespace: str, name: str, selector: LabelSelector | None = None, *,
           ingress: Iterable[Rule] | None = None, egress: Iterable[Rule] | None = None,
           types: Iterable[Direction] | None = None, error: str | None = None) -> NetworkPolicy:
    """Directions default as the API server does: Ingress always, Egress when egress rules exist."""
    ing, egr = tuple(ingress or ()), tuple(egress or ())
    default = {ING} | ({EGR} if egress is not None else set())
    dirs = frozenset(types) if types is not None else frozenset(default)
    return NetworkPolicy(namespace, name, selector or LabelSelector(), dirs, ing, egr, error)
