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
