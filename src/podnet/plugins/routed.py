"""podnet-routed: a veth per pod, the pod's address as a /32 (/128), everything routed by the host.

The wiring of the Amazon VPC CNI and Calico:

pod (``eth0``)
  * the IPAM address(es) as /32 (IPv4) and /128 (IPv6);
  * ``169.254.1.1 dev eth0 scope link`` and ``default via 169.254.1.1 dev eth0 onlink``;
    for IPv6 ``default via fe80::1 dev eth0 onlink``;
  * a PERMANENT neighbour entry gateway -> the host veth's MAC, so the pod never has to resolve
    its gateway.

host (the namespace the plugin runs in)
  * the veth's host end, named from (network, container ID, ifname) and marked with an alias, so
    DEL and GC find it without the pod's namespace or a cached result;
  * both MACs are given when the pair is created: the kernel records them as set
    (``addr_assign_type`` 3) and systemd-udevd's ``MACAddressPolicy=persistent`` never rewrites
    them. The MAC pinned in the pod is exactly the one set on the host end; CHECK fails when the
    two drift apart;
  * ``<pod-ip>/32 dev <veth> scope link`` (``/128`` for IPv6), the only route to the pod, and a
    PERMANENT neighbour entry pod IP -> the pod's MAC (set at creation too) on the veth;
  * ``net.ipv4.ip_forward=1`` (and ``net.ipv6.conf.all.forwarding=1`` for IPv6 pods).

Choices (and why):
  * The gateway is owned by the host: ``169.254.1.1/32 scope host`` and ``fe80::1/64`` (no DAD)
    on every host veth. The pod can ping its gateway, and should its neighbour entry ever be
    flushed (a later plugin taking the link down and up does that) it resolves the gateway by
    plain ARP/NDP and gets the host veth's MAC. Scope host keeps the address out of source
    selection, so traffic the host sends to pods (kubelet probes) still comes from the node's own
    address. ``fe80::1`` is usable at once, so the host can resolve the pod's IPv6 address
    immediately instead of after the DAD of the veth's own link-local address.
  * No ARP or NDP is needed in either direction: the pod's gateway and the host's pod entries are
    both pinned. Neighbour tables are global to the machine (``gc_thresh3``, 1024 entries by
    default, shared by every namespace); on a busy node they overflow and the kernel then drops
    resolutions, which breaks pods that depend on them. Pinned entries are exempt from that limit.
    The pod's MAC belongs to podnet-routed (``mac`` below): a later plugin changing it leaves the
    host's entry stale, which CHECK reports. No proxy ARP / proxy NDP is needed either.
  * rp_filter is left alone: strict mode passes, because the route back to a pod's address is
    the /32 on the very veth its packets arrive on.
  * ``ips[].gateway`` in the result is the pod's real gateway (169.254.1.1 / fe80::1), not the
    IPAM range's gateway, which is never used. IPAM routes are installed via the same gateway.
  * ``ipMasq: true`` is refused (code 2): podnet-routed does no NAT.
  * IPv6 forwarding makes the kernel ignore router advertisements on interfaces with
    ``accept_ra=1``; a host that configures its uplink by SLAAC needs ``accept_ra=2`` there.
  * One routed attachment per pod: a second one finds the gateway route taken and fails cleanly
    (everything it made is rolled back).

Configuration (the Go ``ptp`` plugin's keys where the role is the same): ``ipam`` (required),
``mtu``, ``dns``, ``ipMasq`` (false only); the pod-side MAC from ``CNI_ARGS`` ``MAC=``,
``args.cni.mac`` or ``runtimeConfig.mac`` (capability ``mac``), the later one winning, as in
podnet-bridge (:mod:`podnet.plugins.podconf`). ADD, DEL, CHECK and GC go through the attachment
core shared with podnet-bridge (:mod:`podnet.plugins.attachment`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from podnet.cni import skel
from podnet.cni.errors import CNIError, InvalidNetworkConfig, UnsupportedField
from podnet.cni.result import DNS, Interface, IPAddress, IPConfig, Result, Route
from podnet.kernel.model import RT_SCOPE_HOST, RT_SCOPE_LINK, RT_TABLE_MAIN, Link
from podnet.kernel.netlink import Netlink
from podnet.plugins import attachment, ipam_delegate, podconf, podside, veth
from podnet.plugins.attachment import Rollback
from podnet.plugins.identity import Attachment

PLUGIN_NAME = "podnet-routed"
GATEWAY: dict[int, IPAddress] = {
    4: ipaddress.IPv4Address("169.254.1.1"),
    6: ipaddress.IPv6Address("fe80::1"),
}
# What the host end carries so that it owns the gateway (see the module docstring).
_HOST_GATEWAY_ADDR = {4: "169.254.1.1/32", 6: "fe80::1/64"}
_DEFAULT = {4: ipaddress.ip_network("0.0.0.0/0"), 6: ipaddress.ip_network("::/0")}
_FORWARDING = {4: "net.ipv4.ip_forward", 6: "net.ipv6.conf.all.forwarding"}


# ---- configuration (ADD, CHECK, STATUS; DEL and GC read none of it) ------------------------------


@dataclass(frozen=True)
class RoutedConfig:
    network: str
    mtu: int | None
    pod_mac: str | None
    dns: DNS


def load_config(args: skel.CmdArgs) -> RoutedConfig:
    """Everything ADD needs from the configuration, checked before anything is changed."""
    conf = args.conf
    masq = conf.get("ipMasq")
    if masq not in (None, False):
        if masq is True:
            raise UnsupportedField("ipMasq: podnet-routed does not masquerade; set 'ipMasq' to false "
                                   "or leave it out")
        raise InvalidNetworkConfig("ipMasq must be a boolean", f"got {masq!r}")
    ipam_delegate.ipam_type(conf)  # there is an ipam section with a type
    return RoutedConfig(network=str(conf["name"]), mtu=podconf.mtu(conf), pod_mac=podconf.pod_mac(args),
                        dns=podconf.dns(conf))


# ---- what the pod gets -------------------------------------------------------------------------


def pod_ips(ipam: Result) -> list[IPConfig]:
    """IPAM's addresses as host routes (/32, /128) with the link-local gateway, on interface 1."""
    if not ipam.ips:
        raise CNIError("IPAM returned no IP address")
    out = []
    for ip in ipam.ips:
        bits = ip.address.max_prefixlen
        host = ipaddress.ip_interface(f"{ip.address.ip}/{bits}")
        out.append(IPConfig(address=host, gateway=GATEWAY[ip.address.version], interface=1))
    return out


def families(ips: Sequence[IPConfig]) -> list[int]:
    return sorted({ip.address.version for ip in ips})


def pod_routes(ips: Sequence[IPConfig], ipam_routes: Sequence[Route]) -> list[Route]:
    """A default route per family via the gateway, then IPAM's other routes via the same gateway
    (IPAM's own gateways live in a subnet the pod is not on)."""
    fams = families(ips)
    routes = [Route(dst=_DEFAULT[f], gw=GATEWAY[f]) for f in fams]
    seen = {r.dst for r in routes}
    for r in ipam_routes:
        if r.dst.version not in fams:
            raise InvalidNetworkConfig(f"ipam route {r.dst}: the pod has no IPv{r.dst.version} address")
        if r.dst in seen:
            continue
        seen.add(r.dst)
        routes.append(Route(dst=r.dst, gw=GATEWAY[r.dst.version], priority=r.priority, table=r.table))
    return routes


# ---- kernel wiring -----------------------------------------------------------------------------


def setup_host_veth(host: Netlink, link: Link, ips: Sequence[IPConfig], pod_mac: str) -> None:
    """Up, the gateway addresses, a route and a pinned neighbour per pod address, forwarding on."""
    fams = families(ips)
    if 6 in fams:
        # The host may default new interfaces to IPv6 off; only this veth is changed.
        key = f"net.ipv6.conf.{link.name}.disable_ipv6"
        if host.sysctl(key) != "0":
            host.set_sysctl(key, 0)
    host.set_up(link)
    for fam in fams:
        # The host owns the pod's gateway (scope host: never picked as a source address, see the
        # module docstring); fe80::1 skips DAD so NDP towards the pod works immediately.
        host.add_address(link, _HOST_GATEWAY_ADDR[fam], nodad=fam == 6,
                         scope=RT_SCOPE_HOST if fam == 4 else None)
    for ip in ips:
        host.add_route(ip.address.network, oif=link,
                       scope=RT_SCOPE_LINK if ip.address.version == 4 else None)
        # Pinned (after the link is up: going down flushes even permanent entries) so that the host
        # never has to resolve the pod; see the module docstring on neighbour table overflow.
        host.set_neighbour(link, str(ip.address.ip), pod_mac)
    attachment.enable_forwarding(host, fams)


def setup_pod_side(pod: Netlink, ifname: str, host_mac: str, ips: Sequence[IPConfig],
                   routes: Sequence[Route]) -> None:
    """Up, the /32 (/128) addresses, the pinned gateway neighbour, the routes via the gateway."""
    podside.add_addresses(pod, ifname, ips)  # enables IPv6 on the interface when needed
    pod.set_up(ifname)
    for fam in families(ips):
        gw = str(GATEWAY[fam])
        # Set after the link is up: taking a link down flushes even permanent neighbours.
        # The MAC is the one set on the host end at creation, which udev never rewrites.
        pod.set_neighbour(ifname, gw, host_mac)
        if fam == 4:
            pod.add_route(f"{gw}/32", oif=ifname, scope=RT_SCOPE_LINK)
    for route in routes:
        # onlink: the gateway is in none of the pod's (host-only) subnets.
        pod.add_route(route.dst, gateway=str(route.gw), oif=ifname, onlink=True,
                      metric=route.priority or None, table=route.table)


# ---- commands ----------------------------------------------------------------------------------


def cmd_add(args: skel.CmdArgs) -> Result:
    cfg = load_config(args)
    return attachment.add(args, PLUGIN_NAME,
                          lambda host, pod, att, undo: _add(args, cfg, host, pod, att, undo))


def _add(args: skel.CmdArgs, cfg: RoutedConfig, host: Netlink, pod: Netlink, att: Attachment,
         undo: Rollback) -> Result:
    """Undone newest first on failure: the veth (its host routes go with it), then the address."""
    ipam = ipam_delegate.ipam_add(args)
    undo.push("releasing the address", ipam_delegate.ipam_del, args)
    ips = pod_ips(ipam)
    routes = pod_routes(ips, ipam.routes)
    # Registered before creating: a failure halfway through creation still removes it.
    undo.push("removing the veth", veth.delete_host_side, host, att.host_name, args.netns)
    pair = veth.create_pair(host, pod, host_name=att.host_name, pod_ifname=att.ifname, alias=att.alias,
                            mtu=cfg.mtu, pod_mac=cfg.pod_mac)
    setup_host_veth(host, pair.host, ips, pair.pod.mac or "")
    setup_pod_side(pod, att.ifname, pair.host.mac or "", ips, routes)
    return Result(
        cni_version=args.cni_version,
        interfaces=[Interface(name=att.host_name, mac=pair.host.mac or "", mtu=pair.host.mtu),
                    Interface(name=att.ifname, mac=pair.pod.mac or "", sandbox=args.netns, mtu=pair.pod.mtu)],
        ips=ips, routes=routes, dns=podconf.result_dns(cfg.dns, ipam.dns))


def cmd_del(args: skel.CmdArgs) -> None:
    """The veth goes before the address, so a released address is never still routed to the old pod."""
    attachment.delete(args)


def cmd_check(args: skel.CmdArgs) -> None:
    load_config(args)
    prev = args.prev_result
    if prev is None:
        raise InvalidNetworkConfig("CHECK needs the ADD result in prevResult")
    att = Attachment.of(args)
    with attachment.locked(args, att):
        ipam_delegate.ipam_check(args)
        index = podside.recorded_index(prev, args.ifname, args.netns)
        ips = podside.recorded_ips(prev, index)
        with Netlink() as host, Netlink(args.netns) as pod:
            host_link, pod_link = _attachment_links(host, pod, att.host_name, args.ifname)
            # The seed failure's guard first: a changed host MAC also flushes the host's pinned
            # entries (the kernel drops a link's neighbours when its address changes), which would hide it.
            check_gateway_neighbours(pod, pod_link, host_link, families(ips))
            check_host_side(host, host_link, pod_link, ips)
            check_pod_side(pod, pod_link, prev, index, ips)


def cmd_status(args: skel.CmdArgs) -> None:
    load_config(args)
    ipam_delegate.ipam_status(args)


def cmd_gc(args: skel.CmdArgs) -> None:
    """Remove this network's veths of attachments GC's valid list does not keep; IPAM then
    releases their addresses (:func:`podnet.plugins.attachment.gc`)."""
    attachment.gc(args)


# ---- CHECK helpers -----------------------------------------------------------------------------


def _attachment_links(host: Netlink, pod: Netlink, host_name: str, ifname: str) -> tuple[Link, Link]:
    host_link = host.find_link(host_name)
    if host_link is None or host_link.kind != "veth":
        raise CNIError(f"CHECK: host veth {host_name} is missing")
    pod_link = pod.find_link(ifname)
    if pod_link is None:
        raise CNIError(f"CHECK: interface {ifname} is missing in {pod.netns.path}")
    return host_link, pod_link


def check_host_side(host: Netlink, link: Link, pod_link: Link, ips: Sequence[IPConfig]) -> None:
    host_name = link.name
    if not link.up:
        raise CNIError(f"CHECK: host veth {host_name} is down")
    routed = {r.destination for r in host.routes(table=RT_TABLE_MAIN, oif=link)}
    for ip in ips:
        if str(ip.address.network) not in routed:
            raise CNIError(f"CHECK: host route {ip.address.network} dev {host_name} is missing",
                           f"routes via {host_name}: {sorted(routed)}")
    pod_mac = (pod_link.mac or "").lower()
    pinned = {n.dst: n for n in host.neighbours(link)}
    for ip in ips:
        entry = pinned.get(str(ip.address.ip))
        if entry is None or not entry.permanent:
            raise CNIError(f"CHECK: no permanent neighbour entry for pod address {ip.address.ip} on "
                           f"{host_name}", f"the pod's {pod_link.name} has MAC {pod_mac}")
        if (entry.lladdr or "").lower() != pod_mac:
            raise CNIError(f"CHECK: MAC drift: the pod's {pod_link.name} has MAC {pod_mac} but the host's "
                           f"permanent neighbour {ip.address.ip} on {host_name} points to {entry.lladdr}")
    for fam in families(ips):
        if host.sysctl(_FORWARDING[fam]) != "1":
            raise CNIError(f"CHECK: {_FORWARDING[fam]} is off on the host: pods cannot be routed")


def check_pod_side(pod: Netlink, link: Link, prev: Result, index: int | None,
                   ips: Sequence[IPConfig]) -> None:
    ifname = link.name
    if not link.up:
        raise CNIError(f"CHECK: interface {ifname} is down in {pod.netns.path}")
    podside.check_recorded_mac(link, prev, index)
    podside.check_addresses(pod, ifname, ips)
    if 4 in families(ips):
        podside.check_routes(pod, ifname, [Route(dst=ipaddress.ip_network(f"{GATEWAY[4]}/32"))])
    podside.check_routes(pod, ifname, prev.routes)


def check_gateway_neighbours(pod: Netlink, link: Link, host_link: Link, fams: Sequence[int]) -> None:
    """The seed failure's guard: the MAC pinned in the pod is the host veth's current MAC."""
    ifname = link.name
    host_mac = (host_link.mac or "").lower()
    neighbours = {n.dst: n for n in pod.neighbours(ifname)}
    for fam in fams:
        gw = str(GATEWAY[fam])
        entry = neighbours.get(gw)
        if entry is None or not entry.permanent:
            raise CNIError(f"CHECK: no permanent neighbour entry for gateway {gw} on {ifname}",
                           f"host veth {host_link.name} has MAC {host_mac}")
        pinned = (entry.lladdr or "").lower()
        if pinned != host_mac:
            raise CNIError(f"CHECK: MAC drift: host veth {host_link.name} has MAC {host_mac} but the "
                           f"pod's permanent neighbour {gw} on {ifname} points to {pinned}")


PLUGIN = skel.Plugin(add=cmd_add, delete=cmd_del, check=cmd_check, status=cmd_status, gc=cmd_gc,
                     about="podnet-routed: a routed veth per pod (/32, gateway 169.254.1.1, host route)")


def main() -> None:
    skel.main(PLUGIN)
