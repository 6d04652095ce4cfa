"""The service proxy's nftables names in the agent's table (``inet podnet``, shared with policy).

Fixed objects are kebab-case ``services-*``; generated ones are ``svc-HASH`` (one service port in
one address family) and ``ep-HASH`` (one endpoint of it), kube-proxy's ``prefix-HASH`` form, so
ownership shows in the name and nothing collides with policy's ``pol-``/``ingress-``/``egress-``.
"""

from __future__ import annotations

import hashlib

from podnet.agent.model import Protocol
from podnet.dataplane.contribution import Set

OWNER = "services"

# Base chains (hooks) and the fixed regular chains they jump to.
PREROUTING = "services-prerouting"
OUTPUT = "services-output"
POSTROUTING = "services-postrouting"
FILTER_PREROUTING = "services-filter-prerouting"
FILTER_OUTPUT = "services-filter-output"
DISPATCH = "services-dispatch"
NO_ENDPOINTS = "services-no-endpoints"
MARK_MASQ = "services-mark-masq"
REJECT = "services-reject"

# The packet mark bit that asks postrouting to masquerade (kube-proxy's bit, the same meaning).
MASQ_MARK = 0x4000

ADDR = {4: ("ip", "ipv4_addr"), 6: ("ip6", "ipv6_addr")}
FAMILIES = (4, 6)


def vip_map(family: int) -> str:
    """``address . proto . port : verdict`` of ClusterIPs and ExternalIPs with endpoints."""
    return f"svc-ips{family}"


def nodeport_map(family: int) -> str:
    """``proto . port : verdict`` of NodePorts with endpoints (matched on the node's addresses)."""
    return f"svc-nodeports{family}"


def no_endpoint_map(family: int) -> str:
    return f"svc-no-endpoints{family}"


def no_endpoint_nodeport_map(family: int) -> str:
    return f"svc-no-endpoint-nodeports{family}"


def pod_cidrs(family: int) -> str:
    return f"svc-pod-cidrs{family}"


def node_ips(family: int) -> str:
    return f"svc-node-ips{family}"


def hairpin(family: int) -> str:
    """``endpoint . endpoint`` pairs: a DNATed packet from an endpoint to itself is masqueraded."""
    return f"svc-hairpin{family}"


def _list_name(nodeport: bool, local: bool) -> str:
    return f"{'np-' if nodeport else ''}eps{'-local' if local else ''}"


def slot_map(family: int, slot: int, *, nodeport: bool = False, local: bool = False) -> str:
    """``svc-eps4-I``: the endpoint numbered I of each service address (``addr . proto . port``
    key), or of each NodePort (``np-``, ``proto . port`` key), as ``addr . port``; ``-local``: the
    list under a Local traffic policy."""
    return f"svc-{_list_name(nodeport, local)}{family}-{slot}"


def slot_map_decl(family: int, slot: int, *, nodeport: bool = False, local: bool = False) -> Set:
    addr_type = ADDR[family][1]
    key = ("inet_proto", "inet_service") if nodeport else (addr_type, "inet_proto", "inet_service")
    return Set(slot_map(family, slot, nodeport=nodeport, local=local), key,
               value_type=f"{addr_type} . inet_service")


def slot_chain(family: int, slot: int, *, nodeport: bool = False, local: bool = False) -> str:
    """``services-4-eps-I``: DNAT to endpoint I of the packet's own key (its slot map)."""
    return f"services-{family}-{_list_name(nodeport, local)}-{slot}"


def entry_chain(family: int, kind: str, count: int, local_count: int | None = None) -> str:
    """``services-F-KIND-N[-local-M]``: where a service address of ``kind`` (``cluster``: a
    ClusterIP; ``external``: an ExternalIP; ``nodeport``) goes when it has N endpoints (and M
    under its Local policy): it picks a slot at random. Shared by every service with those
    counts: which endpoints they are is in the slot maps, so an endpoint change is a change of
    elements."""
    tail = "" if local_count is None else f"-local-{local_count}"
    return f"services-{family}-{kind}-{count}{tail}"


def service_ips(family: int) -> str:
    """The shared set of service VIPs (ClusterIPs and ExternalIPs); other controllers may add to it."""
    return f"service-ips{family}"


def service_ips_set(family: int) -> Set:
    """The one declaration of the shared VIP set: every contributor must declare it identically."""
    return Set(service_ips(family), (ADDR[family][1],))


def short_hash(*parts: str) -> str:
    """16 hex digits of SHA-256: stable, short, and quick for tens of thousands of endpoints."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def proto(protocol: Protocol) -> str:
    return protocol.value.lower()


def service_chain(key: tuple[str, str], port_name: str, protocol: Protocol, family: int) -> str:
    """``svc-HASH``: the cluster-policy chain of one service port in one family; ``-local`` (local
    endpoints only) and ``-ext`` (external traffic) are named after it."""
    return f"svc-{short_hash(*key, port_name, protocol.value, str(family))}"


def endpoint_chain(key: tuple[str, str], port_name: str, protocol: Protocol, address: str,
                   port: int) -> str:
    """``ep-HASH``: DNAT to one endpoint of one service port; ``-aff`` is its affinity set."""
    return f"ep-{short_hash(*key, port_name, protocol.value, address, str(port))}"
