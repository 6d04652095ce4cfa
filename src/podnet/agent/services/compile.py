"""Services compiled into the agent's table (``inet podnet``), handed to the writer as the
``services`` contribution.

Design (kube-proxy's nftables mode in spirit; rules are static, the changing data is elements):

* ``services-prerouting`` (nat, prerouting, dstnat) and ``services-output`` (nat, output, dstnat:
  the node's own connections) jump to ``services-dispatch``, which looks the packet up in verdict
  maps: ``ip daddr . meta l4proto . th dport vmap @svc-ips4`` (ClusterIPs and ExternalIPs; ``ip6``
  and ``svc-ips6`` alike) and ``meta l4proto . th dport vmap @svc-nodeports4/6`` on the node's
  addresses (``fib daddr type local``, loopback excluded; only ``svc-node-ips4/6`` when node
  addresses are given). The map values are ``goto`` a service port's chain (see
  :mod:`~podnet.agent.services.plan`), so the per-packet cost is a few lookups however many
  services there are; only NAT chains see a connection's first packet at all.
* A policy chain picks an endpoint and DNATs in one rule: ``meta l4proto tcp dnat ip to numgen
  random mod N map { 0 : 10.244.0.2 . 8080, ... }`` (``meta l4proto``/``th dport`` forms only, so
  SCTP rules load without the SCTP module). So rules grow by one or two per service port, and
  there is no chain per endpoint, except with ``ClientIP`` affinity: then the policy chain first
  looks the client up in each endpoint's dynamic set (``ip saddr @ep-HASH-aff goto ep-HASH``), and
  ``ep-HASH`` refreshes the client there (per-element timeout) before it DNATs.
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

from collections.abc import Callable, Iterable, Sequence
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
    hairpin,
    no_endpoint_map,
    no_endpoint_nodeport_map,
    node_ips,
    nodeport_map,
    pod_cidrs,
    proto,
    service_ips,
    service_ips_set,
    vip_map,
)
from podnet.agent.services.parts import FIXED_PART, Assembly, Part
from podnet.agent.services.plan import PortPlan, plans, service_plans
from podnet.dataplane.contribution import Chain, Contribution, Set

NAT_PRIORITY = {"dstnat": -100, "srcnat": 100}
FILTER_PRIORITY = -110  # before DNAT: a key is in a no-endpoint map only when nothing DNATs it
LOOPBACK = {4: "127.0.0.0/8", 6: "::1"}


def compile(services: Iterable[Service], slices: Iterable[EndpointSlice], *, node_name: str,
            node_ips: Sequence[IPAddress] = (), pod_cidrs: Sequence[IPNetwork] = ()) -> Contribution:
    compiler = ServiceCompiler(node_name=node_name, node_ips=node_ips, pod_cidrs=pod_cidrs)
    return compiler.compile(services, slices)


class ServiceCompiler:
    """:func:`compile` that keeps each service's compiled part: a sync recompiles only the services
    whose Service or EndpointSlices changed (the agent's store hands unchanged objects over as the
    same values, so most are recognized by identity), and joins the parts."""

    def __init__(self, *, node_name: str, node_ips: Sequence[IPAddress] = (),
                 pod_cidrs: Sequence[IPNetwork] = ()) -> None:
        self.node_name = node_name
        self._fixed = Part()
        _fixed(self._fixed, node_ips, pod_cidrs)
        self._pod_families = {f for f in FAMILIES if any(c.version == f for c in pod_cidrs)}
        self._parts: dict[tuple[str, str], tuple[Service, tuple[EndpointSlice, ...], Part]] = {}
        self._assembly = Assembly()

    def compile(self, services: Iterable[Service], slices: Iterable[EndpointSlice]) -> Contribution:
        by_service: dict[tuple[str, str], list[EndpointSlice]] = {}
        for s in slices:
            by_service.setdefault((s.namespace, s.service), []).append(s)
        parts: dict[tuple[str, str], tuple[Service, tuple[EndpointSlice, ...], Part]] = {}
        for service in services:
            found = by_service.get(service.key, ())
            mine = tuple(sorted(found, key=lambda s: s.key)) if len(found) > 1 else tuple(found)
            known = self._parts.get(service.key)
            # Tuples compare their items by identity first: unchanged slices cost next to nothing.
            if known is not None and (known[0] is service or known[0] == service) and known[1] == mine:
                parts[service.key] = known
            else:
                parts[service.key] = (service, mine, self._service(service, mine))
        self._parts = parts
        return self._assembly.update({FIXED_PART: self._fixed, **{k: v[2] for k, v in parts.items()}})

    def _service(self, service: Service, slices: tuple[EndpointSlice, ...]) -> Part:
        out = Part()
        plans = service_plans(service, index_slices(slices), self.node_name)
        for p in plans:
            _port(out, p, p.family in self._pod_families)
        out.targets = frozenset(t for p in plans for t in p.targets())
        return out

    def targets_of(self, key: tuple[str, str]) -> frozenset[Target]:
        """The endpoints one service's part DNATs to (empty: unknown or none)."""
        known = self._parts.get(key)
        return known[2].targets if known is not None else frozenset()

    def endpoints(self) -> frozenset[Target]:
        """Every endpoint the last compiled contribution DNATs to (as :func:`programmed_endpoints`,
        from the kept parts): hand the previous and the current to :func:`affected_endpoints`."""
        return frozenset().union(*(part.targets for _, _, part in self._parts.values()))


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
    out.put(vip_map(f)).update((k, f"goto {c}") for k, c in p.vips.items())
    out.put(nodeport_map(f)).update((k, f"goto {c}") for k, c in p.nodeports.items())
    verdicts = {"reject": f"goto {REJECT}", "drop": "drop"}
    out.put(no_endpoint_map(f)).update((k, verdicts[v]) for k, v in p.no_endpoint.items())
    out.put(no_endpoint_nodeport_map(f)).update((k, verdicts[v]) for k, v in p.no_endpoint_nodeports.items())
    # Hairpin: an endpoint that may be on this node is its own client through the service.
    out.put(hairpin(f)).update((f"{t.address} . {t.address}", None) for t in p.targets()
                               if t.local or not t.node_name)
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
    a = ADDR[p.family][0]
    rules: list[str] = []
    if masq:
        rules.append(f"{a} daddr {p.cluster_ip} {a} saddr != @{pod_cidrs(p.family)} jump {MARK_MASQ}")
    l4 = f"meta l4proto {proto(p.port.protocol)}"
    if p.service.session_affinity_seconds:
        chains = [_affinity_endpoint(out, p, t) for t in targets]
        rules += [f"{a} saddr @{c}-aff goto {c}" for c in chains]
        rules.append(_choose([f"goto {c}" for c in chains], lambda picks: f"vmap {{ {picks} }}"))
    elif len(targets) == 1:
        rules.append(f"{l4} dnat {a} to {_host_port(targets[0])}")
    else:
        # One rule picks and translates: no chain per endpoint.
        pairs = [f"{t.address} . {t.port}" for t in targets]
        rules.append(f"{l4} dnat {a} to " + _choose(pairs, lambda picks: f"map {{ {picks} }}"))
    return tuple(rules)


def _choose(values: list[str], form: Callable[[str], str]) -> str:
    if len(values) == 1:
        return values[0]
    picks = ", ".join(f"{i} : {v}" for i, v in enumerate(values))
    return f"numgen random mod {len(values)} {form(picks)}"


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
