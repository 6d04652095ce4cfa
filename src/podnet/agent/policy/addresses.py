"""The changing data of compiled policy: which addresses a rule's peers are, which ports it opens,
as nft set element keys."""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import ip_network

from podnet.agent.model import IPBlock, IPNetwork, NetworkPolicy, Pod, PolicyPort, Rule
from podnet.agent.policy.index import PodIndex
from podnet.agent.policy.inputs import port_range

PROTOCOL_NAMES = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}


def element(net: IPNetwork) -> str:
    """A host is written as its address, a wider network as CIDR (nft's own form)."""
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def block_networks(block: IPBlock, family: int) -> list[IPNetwork]:
    """The ipBlock's CIDR with the ``except`` networks cut out, as disjoint networks."""
    if block.cidr.version != family:
        return []
    remaining: list[IPNetwork] = [block.cidr]
    for hole in block.except_:
        if hole.version != family:
            continue
        cut: list[IPNetwork] = []
        for net in remaining:
            if net.subnet_of(hole):  # type: ignore[arg-type]  # same family, checked above
                continue
            if hole.subnet_of(net):  # type: ignore[arg-type]
                cut.extend(net.address_exclude(hole))  # type: ignore[arg-type]
            else:
                cut.append(net)
        remaining = cut
    return remaining


def without_nested(nets: Iterable[IPNetwork]) -> list[IPNetwork]:
    """Drop networks inside others: an interval set refuses overlapping elements, and CIDRs either
    nest or are disjoint, so this leaves a valid, sorted element list."""
    out: list[IPNetwork] = []
    for net in sorted(set(nets), key=lambda n: (n.network_address, n.prefixlen)):
        if out and net.subnet_of(out[-1]):  # type: ignore[arg-type]  # one family per call
            continue
        out.append(net)
    return out


def needs_intervals(rule: Rule) -> bool:
    """Whether the rule's peer sets can hold a network (an ipBlock), not only pod addresses."""
    return any(peer.ip_block is not None for peer in rule.peers)


def has_port_ranges(ports: Iterable[PolicyPort]) -> bool:
    """Whether a numbered port set can hold a range (an endPort, or a protocol without a port)."""
    return any(pp.port is None or (not isinstance(pp.port, str) and pp.end_port is not None) for pp in ports)


def peer_elements(index: PodIndex, policy: NetworkPolicy, rule: Rule, family: int) -> dict[str, None]:
    """The addresses of every peer of the rule (pods picked by selectors, anywhere in the cluster,
    and ipBlocks minus their excepts)."""
    if not needs_intervals(rule):  # pod addresses only: hosts, never nested
        return {str(ip): None for peer in rule.peers for pod in index.peer_pods(policy.namespace, peer)
                for ip in pod.ips if ip.version == family}
    nets: list[IPNetwork] = []
    for peer in rule.peers:
        if peer.ip_block is not None:
            nets.extend(block_networks(peer.ip_block, family))
            continue
        for pod in index.peer_pods(policy.namespace, peer):
            nets.extend(ip_network(ip) for ip in pod.ips if ip.version == family)
    return {element(n): None for n in without_nested(nets)}


def port_elements(ports: Iterable[PolicyPort], *, ranges: bool = True) -> dict[str, None]:
    """``proto . port`` or ``proto . first-last`` for every port given by number or not at all.
    With ``ranges`` (an interval set), overlapping and adjacent ranges (``protocol: TCP`` next to
    ``port: 80``) are merged: an interval set refuses overlapping elements. Without, every port is
    its own element (a plain set; the ports are single numbers then)."""
    spans: dict[str, list[tuple[int, int]]] = {}
    for pp in ports:
        if isinstance(pp.port, str):
            continue
        span = port_range(pp, None)
        assert span is not None  # only named ports need a pod
        spans.setdefault(PROTOCOL_NAMES[pp.protocol.value], []).append(span)
    out: dict[str, None] = {}
    for proto, found in spans.items():
        for first, last in _merged(found) if ranges else sorted(set(found)):
            out[f"{proto} . {first if first == last else f'{first}-{last}'}"] = None
    return out


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if out and first <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], last))
        else:
            out.append((first, last))
    return out


def named_elements(pods: Iterable[Pod], ports: Iterable[PolicyPort], family: int) -> dict[str, None]:
    """``address . proto . port`` for every pod that has a named port of the rule, resolved on that
    pod: named ports mean a different number on each destination."""
    named = [pp for pp in ports if isinstance(pp.port, str)]
    out: dict[str, None] = {}
    for pod in pods:
        for pp in named:
            span = port_range(pp, pod)
            if span is None:
                continue
            for ip in pod.ips:
                if ip.version == family:
                    out[f"{ip} . {PROTOCOL_NAMES[pp.protocol.value]} . {span[0]}"] = None
    return out
