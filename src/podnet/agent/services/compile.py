"""Services compiled into the agent's table (``inet podnet``), handed to the writer as the
``services`` contribution.

Design (kube-proxy's nftables mode in spirit; rules are static, the changing data is elements):

* ``services-prerouting`` (nat, prerouting, dstnat) and ``services-output`` (nat, output, dstnat:
  the node's own connections) jump to ``services-dispatch``, which looks the packet up in verdict
  maps: ``ip daddr . meta l4proto . th dport vmap @svc-ips4`` (ClusterIPs and ExternalIPs; ``ip6``
  and ``svc-ips6`` alike) and ``meta l4proto . th dport vmap @svc-nodeports4/6`` on the node's
  addresses (``fib daddr type local``, loopback excluded; only ``svc-node-ips4/6`` when node
  addresses are given). The map values are ``goto`` a chain shared by every service address of
  one kind with the same number of endpoints (``services-4-cluster-5``, ``-external-``,
  ``-nodeport-``, see :func:`~podnet.agent.services.names.entry_chain`), so the per-packet cost is
  a few lookups however many services there are; only NAT chains see a connection's first packet.
* Picking: that chain decides masquerade, then ``numgen random mod N vmap`` sends the packet to
  slot chain I (``services-4-eps-I``), which DNATs with one lookup of the packet's own key in slot
  map I: ``dnat ip to ip daddr . meta l4proto . th dport map @svc-eps4-I``, whose elements are
  ``10.96.0.10 . tcp . 80 : 10.244.0.2 . 8080`` (NodePorts: ``tcp . 30080 : ...`` in
  ``svc-np-eps4-I``; ``-local`` maps for a Local external policy). Rules and chains depend on
  endpoint counts only, never on how many services there are, and an endpoint change is a
  change of elements: no rule is rewritten, no anonymous set per service is made (the kernel
  creates those, and named sets, at a cost that grows with how many the table has). Every rule
  uses ``meta l4proto``/``th dport`` forms, so SCTP rules load without the SCTP module.
* ClientIP affinity: a service with it keeps chains of its own (``svc-HASH``, see
  :mod:`~podnet.agent.services.plan`). Its policy chain first looks the client up in each
  endpoint's dynamic set (``ip saddr @ep-HASH-aff goto ep-HASH``) and otherwise picks an endpoint
  chain at random; ``ep-HASH`` refreshes the client there (per-element timeout) before it DNATs.
* Masquerade: a mark bit set by ``services-mark-masq``, acted on (and cleared) in
  ``services-postrouting`` (nat, postrouting, srcnat). Marked: hairpin (a DNATed packet whose
  source and destination pair is in ``svc-hairpin4/6``: the pod is its own client, and its reply
  must come back through the node to be un-NATed); ClusterIP traffic from
  outside the pod ranges (only when pod ranges are given, as kube-proxy with a cluster CIDR);
  external traffic from outside the pod ranges with a Cluster policy (its endpoint may be on
  another node, whose reply must come back here). External traffic with a Local policy keeps the
  client's address; pods and the node reaching an external address take the Cluster path.
* No endpoint: ``services-filter-prerouting`` and ``services-filter-output`` (filter, dstnat - 10)
  send new connections through the ``svc-no-endpoints4/6`` and ``svc-no-endpoint-nodeports4/6``
  maps to ``services-reject`` (TCP reset, else ICMP port unreachable: the client fails at once
  instead of timing out) or ``drop`` (endpoints exist, but none the Local policy may use here).
* ``service-ips4/6``: every ClusterIP and ExternalIP, a set shared with other controllers through
  the writer (a union). It only ever says "this address is some controller's service VIP"; no
  rule here relies on it, and a rule elsewhere must only use it for a decision that is right for
  any address in it.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable, Sequence
from ipaddress import IPv4Network, IPv6Network, collapse_addresses

from podnet.agent.model import EndpointSlice, IPAddress, IPNetwork, Service
from podnet.agent.services.endpoints import Target, index_slices
from podnet.agent.services.names import (
    ADDR,
    DISPATCH,
    FAMILIES,
    FILTER_OUTPUT,
    FILTER_PREROUTING,
    MARK_MASQ,
    MASQ_MARK,
    NO_ENDPOINTS,
    OUTPUT,
    POSTROUTING,
    PREROUTING,
    REJECT,
    endpoint_chain,
    entry_chain,
    hairpin,
    no_endpoint_map,
    no_endpoint_nodeport_map,
    node_ips,
    nodeport_map,
    pod_cidrs,
    proto,
    service_ips,
    service_ips_set,
    slot_chain,
    slot_map,
    slot_map_decl,
    vip_map,
)
from podnet.agent.services.parts import Part
from podnet.agent.services.plan import PortPlan, plans, service_plans
from podnet.dataplane.contribution import Chain, Set

NAT_PRIORITY = {"dstnat": -100, "srcnat": 100}
FILTER_PRIORITY = -110  # before DNAT: a key is in a no-endpoint map only when nothing DNATs it
LOOPBACK = {4: "127.0.0.0/8", 6: "::1"}


def fixed_part(node_ips: Sequence[IPAddress], pod_cidrs: Sequence[IPNetwork]) -> Part:
    out = Part()
    _fixed(out, node_ips, pod_cidrs)
    return out


def service_part(service: Service, slices: Sequence[EndpointSlice], node_name: str,
                 pod_families: Collection[int]) -> Part:
    """One service's part: its elements, and the chains and sets it needs (shared ones included)."""
    out = Part()
    plans = service_plans(service, index_slices(slices), node_name)
    for p in plans:
        _port(out, p, p.family in pod_families)
    out.targets = frozenset(t for p in plans for t in p.targets())
    return out


def _fixed(out: Part, addresses: Sequence[IPAddress], cidrs: Sequence[IPNetwork]) -> None:
    """The hooks, the fixed chains and the maps they look up: the same whatever the services."""
    dispatch: list[str] = []
    no_endpoints: list[str] = []
    for f in FAMILIES:
        a, addr_type = ADDR[f]
        out.add_set(Set(vip_map(f), (addr_type, "inet_proto", "inet_service"), value_type="verdict"))
        out.add_set(Set(nodeport_map(f), ("inet_proto", "inet_service"), value_type="verdict"))
        out.add_set(Set(no_endpoint_map(f), (addr_type, "inet_proto", "inet_service"), value_type="verdict"))
        out.add_set(Set(no_endpoint_nodeport_map(f), ("inet_proto", "inet_service"), value_type="verdict"))
        out.add_set(Set(pod_cidrs(f), (addr_type,), flags=("interval",)),
                    {str(n): None for n in _collapse(cidrs, f)})
        out.add_set(Set(node_ips(f), (addr_type,)), {str(ip): None for ip in addresses if ip.version == f})
        out.add_set(service_ips_set(f))
        out.add_set(Set(hairpin(f), (addr_type, addr_type)))
        # NodePorts on the given node addresses, else on every local address but loopback.
        local = (f"{a} daddr @{node_ips(f)}" if addresses
                 else f"fib daddr type local {a} daddr != {LOOPBACK[f]}")
        dispatch += [f"{a} daddr . meta l4proto . th dport vmap @{vip_map(f)}",
                     f"{local} meta l4proto . th dport vmap @{nodeport_map(f)}"]
        no_endpoints += [f"{a} daddr . meta l4proto . th dport vmap @{no_endpoint_map(f)}",
                         f"{local} meta l4proto . th dport vmap @{no_endpoint_nodeport_map(f)}"]
    nat = {"type": "nat", "policy": "accept"}
    out.add_chain(Chain(PREROUTING, hook="prerouting", priority=NAT_PRIORITY["dstnat"], rules=(
        f"jump {DISPATCH}",), **nat))
    out.add_chain(Chain(OUTPUT, hook="output", priority=NAT_PRIORITY["dstnat"], rules=(
        f"jump {DISPATCH}",), **nat))
    out.add_chain(Chain(POSTROUTING, hook="postrouting", priority=NAT_PRIORITY["srcnat"], rules=(
        *(f"ct status dnat {ADDR[f][0]} saddr . {ADDR[f][0]} daddr @{hairpin(f)} "
          f"meta mark set meta mark | {MASQ_MARK:#x}" for f in FAMILIES),
        f"meta mark & {MASQ_MARK:#x} == 0 return",
        f"meta mark set meta mark ^ {MASQ_MARK:#x}",  # cleared: a packet re-entering is judged afresh
        "masquerade fully-random"), **nat))
    for name, hook in ((FILTER_PREROUTING, "prerouting"), (FILTER_OUTPUT, "output")):
        out.add_chain(Chain(name, type="filter", hook=hook, priority=FILTER_PRIORITY, policy="accept",
                            rules=(f"ct state new jump {NO_ENDPOINTS}",)))
    out.add_chain(Chain(DISPATCH, rules=tuple(dispatch)))
    out.add_chain(Chain(NO_ENDPOINTS, rules=tuple(no_endpoints)))
    out.add_chain(Chain(MARK_MASQ, rules=(f"meta mark set meta mark | {MASQ_MARK:#x}",)))
    out.add_chain(Chain(REJECT, rules=("meta l4proto tcp reject with tcp reset",
                                       "reject with icmpx port-unreachable")))


def _collapse(cidrs: Sequence[IPNetwork], family: int) -> list[IPNetwork]:
    """Overlapping ranges merged: an interval set refuses overlapping elements."""
    if family == 4:
        return list(collapse_addresses(c for c in cidrs if isinstance(c, IPv4Network)))
    return list(collapse_addresses(c for c in cidrs if isinstance(c, IPv6Network)))


def _port(out: Part, p: PortPlan, with_pod_cidrs: bool) -> None:
    f = p.family
    shared = out.put(service_ips(f))
    shared[str(p.cluster_ip)] = None
    shared.update((str(ip), None) for ip in p.service.external_ips if ip.version == f)
    verdicts = {"reject": f"goto {REJECT}", "drop": "drop"}
    out.put(no_endpoint_map(f)).update((k, verdicts[v]) for k, v in p.no_endpoint.items())
    out.put(no_endpoint_nodeport_map(f)).update((k, verdicts[v]) for k, v in p.no_endpoint_nodeports.items())
    # Hairpin: an endpoint that may be on this node is its own client through the service.
    out.put(hairpin(f)).update((f"{_text(t.address)} . {_text(t.address)}", None) for t in p.targets()
                               if t.local or not t.node_name)
    if p.service.session_affinity_seconds:
        _affinity_port(out, p, with_pod_cidrs)
    else:
        _picked_port(out, p, with_pod_cidrs)


def _picked_port(out: Part, p: PortPlan, with_pod_cidrs: bool) -> None:
    """No affinity: each address goes to the shared chain for its kind and endpoint counts, and
    the endpoints themselves are elements of the endpoint maps under that address's key."""
    f = p.family
    cluster = p.policy_chains.get(p.base, ())
    local = p.policy_chains.get(f"{p.base}-local", ())
    for key, chain in p.vips.items():
        if chain == p.external_chain:
            _entry(out, f, key, "external", cluster, local if p.external_local else None, with_pod_cidrs)
        else:
            _entry(out, f, key, "cluster", p.policy_chains[chain], None, with_pod_cidrs)
    for key in p.nodeports:
        _entry(out, f, key, "nodeport", cluster, local if p.external_local else None, with_pod_cidrs)


def _entry(out: Part, f: int, key: str, kind: str, targets: tuple[Target, ...],
           local: tuple[Target, ...] | None, with_pod_cidrs: bool) -> None:
    nodeport = kind == "nodeport"
    chain = entry_chain(f, kind, len(targets), None if local is None else len(local))
    out.put(nodeport_map(f) if nodeport else vip_map(f))[key] = f"goto {chain}"
    _number(out, f, key, targets, nodeport, False)
    if local is not None:
        _number(out, f, key, local, nodeport, True)
    if chain not in out.chains:
        local_count = None if local is None else len(local)
        out.add_chain(_entry_chain(chain, f, kind, len(targets), local_count, with_pod_cidrs))


def _number(out: Part, f: int, key: str, targets: tuple[Target, ...], nodeport: bool, local: bool) -> None:
    """Endpoint I under ``key`` in slot map I, and the slot's map and chain declared."""
    for i, t in enumerate(targets):
        decl, chain = _slot(f, i, nodeport, local)
        if decl.name not in out.elements:
            out.add_set(decl)
            out.add_chain(chain)
        out.elements[decl.name][key] = f"{_text(t.address)} . {t.port}"


@functools.cache
def _slot(f: int, slot: int, nodeport: bool, local: bool) -> tuple[Set, Chain]:
    """A slot's map and chain (made once: every service with that many endpoints shares them)."""
    name = slot_chain(f, slot, nodeport=nodeport, local=local)
    chain = Chain(name, rules=(_slot_rule(f, slot, nodeport, local),))
    return slot_map_decl(f, slot, nodeport=nodeport, local=local), chain


@functools.lru_cache(maxsize=1 << 16)
def _text(address: IPAddress) -> str:
    """An address as nft text (the same endpoints and VIPs come back at every compile)."""
    return str(address)


def _slot_rule(f: int, slot: int, nodeport: bool, local: bool) -> str:
    """DNAT by the packet's own key in the slot's map. ``th dport`` and a protocol set keep one rule
    valid for TCP, UDP and SCTP alike (SCTP without its module loaded)."""
    a = ADDR[f][0]
    key = "meta l4proto . th dport" if nodeport else f"{a} daddr . meta l4proto . th dport"
    return (f"meta l4proto {{ tcp, udp, sctp }} dnat {a} to {key} "
            f"map @{slot_map(f, slot, nodeport=nodeport, local=local)}")


def _pick(f: int, count: int, nodeport: bool, local: bool) -> str:
    """Go to one of the first ``count`` slots at random."""
    chains = [slot_chain(f, i, nodeport=nodeport, local=local) for i in range(count)]
    if count == 1:
        return f"goto {chains[0]}"
    picks = ", ".join(f"{i} : goto {c}" for i, c in enumerate(chains))
    return f"numgen random mod {count} vmap {{ {picks} }}"


@functools.cache
def _entry_chain(name: str, f: int, kind: str, count: int, local: int | None, with_pod_cidrs: bool) -> Chain:
    return Chain(name, rules=_entry_rules(f, kind, count, local, with_pod_cidrs))


def _entry_rules(f: int, kind: str, count: int, local: int | None, with_pod_cidrs: bool) -> tuple[str, ...]:
    a = ADDR[f][0]
    pods = f"@{pod_cidrs(f)}"
    nodeport = kind == "nodeport"
    pick = _pick(f, count, nodeport, False)
    if kind == "cluster":
        # ClusterIP traffic from outside the pod ranges (only when they are known) is masqueraded.
        return ((f"{a} saddr != {pods} jump {MARK_MASQ}",) if with_pod_cidrs else ()) + (pick,)
    if local is None:
        # An empty pod-range set masquerades every external client (kube-proxy's default).
        return (f"{a} saddr != {pods} jump {MARK_MASQ}", pick)
    return (f"{a} saddr {pods} {pick}",
            # The node's own address is the source here, and also the destination's owner.
            f"fib saddr type local jump {MARK_MASQ}",
            f"fib saddr type local {pick}",
            _pick(f, local, nodeport, True))


def _affinity_port(out: Part, p: PortPlan, with_pod_cidrs: bool) -> None:
    """ClientIP affinity: chains of the service's own (a client's endpoint is remembered per
    endpoint, in that endpoint's set)."""
    f = p.family
    out.put(vip_map(f)).update((k, f"goto {c}") for k, c in p.vips.items())
    out.put(nodeport_map(f)).update((k, f"goto {c}") for k, c in p.nodeports.items())
    if p.external_chain is not None:
        out.add_chain(Chain(p.external_chain, rules=_external_rules(p)))
    for name, targets in p.policy_chains.items():
        masq = with_pod_cidrs and name == p.internal_chain and p.cluster_ip.version == f
        out.add_chain(Chain(name, rules=_policy_rules(out, p, targets, masq)))


def _external_rules(p: PortPlan) -> tuple[str, ...]:
    a = ADDR[p.family][0]
    pods = f"@{pod_cidrs(p.family)}"
    if not p.external_local:
        # An empty pod-range set masquerades every external client (kube-proxy's default).
        return (f"{a} saddr != {pods} jump {MARK_MASQ}", f"goto {p.base}")
    return (f"{a} saddr {pods} goto {p.base}",
            # The node's own address is the source here, and also the destination's owner.
            f"fib saddr type local jump {MARK_MASQ}",
            f"fib saddr type local goto {p.base}",
            f"goto {p.base}-local")


def _policy_rules(out: Part, p: PortPlan, targets: tuple[Target, ...], masq: bool) -> tuple[str, ...]:
    """An affinity service port's policy chain: a client remembered by an endpoint goes back to it;
    otherwise one endpoint is picked at random (its chain remembers the client)."""
    a = ADDR[p.family][0]
    rules: list[str] = []
    if masq:
        rules.append(f"{a} daddr {p.cluster_ip} {a} saddr != @{pod_cidrs(p.family)} jump {MARK_MASQ}")
    chains = [_affinity_endpoint(out, p, t) for t in targets]
    rules += [f"{a} saddr @{c}-aff goto {c}" for c in chains]
    if len(chains) == 1:
        rules.append(f"goto {chains[0]}")
    else:
        picks = ", ".join(f"{i} : goto {c}" for i, c in enumerate(chains))
        rules.append(f"numgen random mod {len(chains)} vmap {{ {picks} }}")
    return tuple(rules)


def _host_port(t: Target) -> str:
    return f"[{t.address}]:{t.port}" if t.address.version == 6 else f"{t.address}:{t.port}"


def _affinity_endpoint(out: Part, p: PortPlan, t: Target) -> str:
    """With ClientIP affinity, a chain per endpoint: it records the client in the endpoint's
    dynamic set (per-element timeout, refreshed by each new connection), then DNATs. Declared
    once however many policy chains pick it; returns its name."""
    name = endpoint_chain(p.service.key, p.port.name, p.port.protocol, str(t.address), t.port)
    if name in out.chains:
        return name
    a, addr_type = ADDR[p.family]
    out.add_set(Set(f"{name}-aff", (addr_type,), flags=("dynamic", "timeout")))
    out.add_chain(Chain(name, rules=(
        f"update @{name}-aff {{ {a} saddr timeout {p.service.session_affinity_seconds}s }}",
        f"meta l4proto {proto(t.protocol)} dnat {a} to {_host_port(t)}")))
    return name


def programmed_endpoints(services: Iterable[Service], slices: Iterable[EndpointSlice], *,
                         node_name: str) -> frozenset[Target]:
    """Every endpoint the compiled table DNATs to (as :func:`compile` would pick them)."""
    return frozenset(t for p in plans(services, slices, node_name) for t in p.targets())
