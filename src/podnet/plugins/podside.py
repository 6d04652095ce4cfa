"""The pod's end of an attachment: addresses and routes from a CNI result, and their CHECK."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from podnet.cni.errors import CNIError
from podnet.cni.result import IPConfig, Result, Route
from podnet.kernel.model import Link
from podnet.kernel.netlink import Netlink

# RT_SCOPE_LINK: a route to a directly reachable neighbour (the routed plugin's gateway).
SCOPE_LINK = 253


def enable_ipv6(nl: Netlink, ifname: str) -> None:
    """Pods may be created with IPv6 disabled (a sysctl default); an IPv6 address needs it on."""
    for key in (f"net.ipv6.conf.{ifname}.disable_ipv6", "net.ipv6.conf.all.disable_ipv6"):
        try:
            if nl.sysctl(key).strip() != "0":
                nl.set_sysctl(key, 0)
        except CNIError:
            continue  # no IPv6 in this kernel: adding the address will report it


def _default_gateway(ips: Sequence[IPConfig], version: int) -> str | None:
    for ip in ips:
        if ip.address.version == version and ip.gateway is not None:
            return str(ip.gateway)
    return None


def add_addresses(nl: Netlink, link: str | Link, ips: Sequence[IPConfig]) -> None:
    """``link``: its name, or the Link itself (which spares a lookup per address)."""
    if any(ip.address.version == 6 for ip in ips):
        enable_ipv6(nl, link if isinstance(link, str) else link.name)
    for ip in ips:
        # nodad: the address is ours by allocation; waiting for DAD would only delay the pod.
        nl.add_address(link, ip.address, nodad=ip.address.version == 6)


def add_routes(nl: Netlink, link: str | Link, ips: Sequence[IPConfig], routes: Sequence[Route]) -> None:
    """Routes without ``gw`` go via the gateway of the pod address of their family, as in the
    reference plugins; a route with no gateway at all is a direct (link) route."""
    for route in routes:
        gw = str(route.gw) if route.gw is not None else _default_gateway(ips, route.dst.version)
        nl.add_route(route.dst, gateway=gw, oif=link, metric=route.priority or None,
                     table=route.table, scope=route.scope, replace=False)


def configure(nl: Netlink, link: str | Link, ips: Sequence[IPConfig], routes: Sequence[Route]) -> None:
    nl.set_up(link)
    add_addresses(nl, link, ips)
    add_routes(nl, link, ips, routes)


def check_addresses(nl: Netlink, ifname: str, ips: Sequence[IPConfig]) -> None:
    link = nl.find_link(ifname)
    if link is None:
        raise CNIError(f"CHECK: interface {ifname} is missing in {nl.netns.path}")
    have = {a.interface for a in nl.addresses(link)}
    for ip in ips:
        if ip.address not in have:
            raise CNIError(f"CHECK: address {ip.address} is missing on {ifname}",
                           f"found {sorted(str(a) for a in have)}")


def check_routes(nl: Netlink, ifname: str, routes: Sequence[Route]) -> None:
    """Each expected destination still has a route out of ``ifname`` (later plugins may have
    changed gateways or metrics; the spec lets them)."""
    # Filtered by the kernel: a pod with a large routing table under churn still gets a small,
    # consistent answer instead of a whole-table dump that may be interrupted.
    present = {ipaddress.ip_network(r.destination) for r in nl.routes(oif=ifname)}
    for route in routes:
        if route.dst not in present:
            raise CNIError(f"CHECK: route to {route.dst} via {ifname} is missing")


# ---- what prevResult says about the pod interface (CHECK of both veth plugins) ----------------


def recorded_index(prev: Result, ifname: str, netns: str) -> int | None:
    """The pod interface's index in prevResult: the entry with this name in this sandbox, else
    (a runtime may name the same namespace by another path) the one with this name in any sandbox."""
    named = [i for i, iface in enumerate(prev.interfaces) if iface.name == ifname and iface.sandbox]
    exact = [i for i in named if prev.interfaces[i].sandbox == netns]
    found = exact or named
    return found[0] if found else None


def recorded_ips(prev: Result, index: int | None) -> list[IPConfig]:
    """The addresses prevResult binds to the pod interface (a chain may add others elsewhere)."""
    return [ip for ip in prev.ips if index is None or ip.interface in (None, index)]


def check_recorded_mac(link: Link, prev: Result, index: int | None) -> None:
    recorded = prev.interfaces[index].mac.lower() if index is not None else ""
    if recorded and recorded != (link.mac or "").lower():
        raise CNIError(f"CHECK: interface {link.name} has MAC {link.mac}, the ADD result says {recorded}")
