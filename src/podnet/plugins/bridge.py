"""podnet-bridge: attach a pod to a Linux bridge on the node through a veth pair.

Configuration keys are those of the reference ``bridge`` plugin: ``bridge`` (default ``cni0``),
``isGateway``, ``isDefaultGateway`` (implies ``isGateway`` and adds a default route), ``forceAddress``,
``ipMasq``, ``mtu``, ``hairpinMode``, ``promiscMode``, ``vlan``, ``preserveDefaultVlan``,
``macspoofchk``, ``ipam``, ``dns``; the pod MAC comes from ``CNI_ARGS`` ``MAC=``, ``args.cni.mac``
or ``runtimeConfig.mac`` (capability ``mac``), the later one winning.

What an attachment owns, and how DEL and GC find it without the pod or a cached result:

* the host veth, named from (network, container ID, ifname) and labelled with an alias
  (:mod:`podnet.plugins.identity`); its peer is the pod interface, so deleting it removes both;
* its addresses, held by the IPAM plugin;
* with ``ipMasq``, elements in the shared ``inet podnet-bridge`` nftables table, with
  ``macspoofchk`` in ``bridge podnet-bridge``; each element's comment is the attachment's owner
  string (:func:`podnet.plugins.identity.owner`).

ADD, DEL, CHECK and GC go through the attachment core shared with podnet-routed
(:mod:`podnet.plugins.attachment`).

The bridge, its gateway addresses and the forwarding sysctls are shared by every attachment of
the network and are never removed, as in the reference plugin.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from podnet.cni import skel
from podnet.cni.args import validate_ifname
from podnet.cni.errors import CNIError, InternalError, InvalidNetworkConfig, UnsupportedField
from podnet.cni.result import DNS, Interface, IPConfig, Result, Route
from podnet.dataplane.plugin_elements import (
    BRIDGE_TABLE,
    Masquerade,
    OwnedElements,
    SpoofCheck,
    bridge_masquerade,
    bridge_spoof_check,
)
from podnet.kernel.errors import NotSupported
from podnet.kernel.model import Link
from podnet.kernel.netlink import IPIface, Netlink, random_mac
from podnet.plugins import attachment, ipam_delegate, podconf, podside, veth
from podnet.plugins.attachment import Rollback
from podnet.plugins.identity import Attachment

PLUGIN_NAME = "podnet-bridge"
DEFAULT_BRIDGE = "cni0"
VLAN_MAX = 4094
# Result.interfaces order, as in the reference plugin: bridge, host veth, pod interface.
BRIDGE_IDX, HOST_IDX, POD_IDX = 0, 1, 2
_ZERO_MAC = podconf.ZERO_MAC
_IFF_PROMISC = 0x100

# ---- configuration (ADD, CHECK, STATUS; DEL and GC read none of it) ------------------------------


@dataclass(frozen=True)
class BridgeConf:
    network: str
    bridge: str
    is_gateway: bool
    is_default_gateway: bool
    force_address: bool
    ip_masq: bool
    mtu: int | None
    hairpin: bool
    promisc: bool
    vlan: int
    preserve_default_vlan: bool
    macspoofchk: bool
    mac: str | None
    has_ipam: bool
    dns: DNS  # the network config's own dns, which wins over IPAM's


def _bridge_name(conf: dict[str, Any]) -> str:
    name = conf.get("bridge") or DEFAULT_BRIDGE
    if not isinstance(name, str):
        raise InvalidNetworkConfig(f"'bridge' must be an interface name, got {name!r}")
    try:
        return validate_ifname(name)
    except CNIError as exc:
        raise InvalidNetworkConfig(f"invalid bridge name: {exc.msg}") from None


def load_conf(args: skel.CmdArgs) -> BridgeConf:
    """Every configuration error is found here, before anything is built."""
    c, flag = args.conf, podconf.flag
    default_gw = flag(c, "isDefaultGateway")
    conf = BridgeConf(
        network=str(c["name"]), bridge=_bridge_name(c), is_gateway=flag(c, "isGateway") or default_gw,
        is_default_gateway=default_gw, force_address=flag(c, "forceAddress"), ip_masq=flag(c, "ipMasq"),
        mtu=podconf.mtu(c), hairpin=flag(c, "hairpinMode"), promisc=flag(c, "promiscMode"),
        vlan=podconf.integer(c, "vlan", 1, VLAN_MAX, "VLAN ID"),
        preserve_default_vlan=flag(c, "preserveDefaultVlan", True), macspoofchk=flag(c, "macspoofchk"),
        mac=podconf.pod_mac(args), has_ipam=attachment.ipam_configured(c), dns=podconf.dns(c),
    )
    if conf.hairpin and conf.promisc:
        raise InvalidNetworkConfig("cannot set hairpin mode and promiscuous mode at the same time")
    if c.get("vlanTrunk") is not None:
        raise UnsupportedField("'vlanTrunk' is not supported by podnet-bridge (use 'vlan')")
    if conf.vlan and conf.is_gateway:
        raise UnsupportedField(f"'vlan' {conf.vlan} with 'isGateway' is not supported by podnet-bridge",
                               "the gateway would need a VLAN interface; use an L2-only vlan network")
    if c.get("ipam") is not None and not conf.has_ipam:
        ipam_delegate.ipam_type(c)  # raises the "ipam has no 'type'" error
    return conf


# ---- ADD helpers -------------------------------------------------------------------------------


def setup_bridge(host: Netlink, conf: BridgeConf) -> Link:
    """The network's bridge, created if missing, up, with the configured promiscuous mode."""
    try:
        # A MAC given at creation is NET_ADDR_SET: the bridge keeps it instead of taking the
        # lowest MAC of its ports, which would change as pods come and go (and break the pods'
        # ARP caches for the gateway).
        bridge = host.ensure_bridge(conf.bridge, mac=random_mac(), mtu=conf.mtu,
                                    vlan_filtering=True if conf.vlan else None)
    except NotSupported as exc:
        raise CNIError(f"bridge {conf.bridge}: cannot enable VLAN filtering for 'vlan' {conf.vlan}",
                       f"this kernel lacks bridge VLAN filtering ({exc.details})") from None
    if (bridge.mac or _ZERO_MAC) == _ZERO_MAC:
        # A bridge somebody else made, without ports: the kernel shows 00:00:00:00:00:00 until a
        # port joins and then borrows that port's MAC. Give it its own, pinned, MAC now.
        host.set_mac(bridge, random_mac())
    if conf.promisc and not bridge.flags & _IFF_PROMISC:
        host.set_promisc(bridge, True)
    # The plugin owns the bridge's routes: router advertisements must not add any.
    with contextlib.suppress(CNIError):
        host.set_sysctl(f"net/ipv6/conf/{conf.bridge}/accept_ra", 0)
    host.set_up(bridge)
    return bridge


def setup_host_veth(host: Netlink, conf: BridgeConf, port: Link, bridge: Link) -> None:
    """Enslave the host end to the bridge, set the port options and bring it up."""
    host.set_master(port, bridge)
    if conf.hairpin:
        host.set_hairpin(port, True)
    if conf.vlan:
        if not conf.preserve_default_vlan:
            host.bridge_vlan_del(port, 1, missing_ok=True)
        # Access port: frames enter untagged and are tagged with the pvid on the bridge.
        host.bridge_vlan_add(port, conf.vlan, pvid=True, untagged=True)
    # A bridge port needs no IPv6 of its own: its link-local address would start DAD, MLD
    # reports and router solicitations that the bridge floods to every other pod.
    with contextlib.suppress(CNIError):
        host.set_sysctl(f"net/ipv6/conf/{port.name}/disable_ipv6", 1)
    host.set_up(port)


def pod_ips(conf: BridgeConf, ipam: Result) -> tuple[list[IPConfig], list[Route]]:
    """IPAM's addresses bound to the pod interface, gateways filled in (.1 of the subnet when
    isGateway and IPAM gave none) and, with isDefaultGateway, a default route per family."""
    if not ipam.ips:
        raise InternalError("IPAM plugin returned no IP configuration")
    ips, routes = [], list(ipam.routes)
    for ip in ipam.ips:
        gateway = ip.gateway
        if gateway is None and conf.is_gateway:
            gateway = ip.address.network.network_address + 1
        ips.append(IPConfig(address=ip.address, gateway=gateway, interface=POD_IDX))
        default = ipaddress.ip_network("0.0.0.0/0" if ip.family == 4 else "::/0")
        if conf.is_default_gateway and not any(r.dst == default and r.gw is not None for r in routes):
            routes.append(Route(dst=default, gw=gateway))
    return ips, routes


def setup_pod_veth(pod: Netlink, link: Link, ips: Sequence[IPConfig], routes: Sequence[Route]) -> None:
    # Addresses are ours by allocation: duplicate address detection would only keep an IPv6
    # address tentative (unusable) for a second or more. arp_notify announces the new MAC.
    ifname = link.name
    for key, value in ((f"net/ipv6/conf/{ifname}/accept_dad", 0), (f"net/ipv4/conf/{ifname}/arp_notify", 1)):
        with contextlib.suppress(CNIError):
            pod.set_sysctl(key, value)
    podside.configure(pod, link, ips, routes)


def _gateway_addresses(ips: Sequence[IPConfig]) -> list[IPIface]:
    return [ipaddress.ip_interface(f"{ip.gateway}/{ip.address.network.prefixlen}")
            for ip in ips if ip.gateway is not None]


def setup_gateway(host: Netlink, conf: BridgeConf, bridge: Link, ips: Sequence[IPConfig]) -> None:
    """Put each family's gateway address on the bridge and turn forwarding on.

    Another IPv4 address on the bridge (or an overlapping IPv6 one) is an error, or with
    forceAddress is replaced, as in the reference plugin.
    """
    wanted = _gateway_addresses(ips)
    # Only the gateways' families can conflict; a dump of one family does not wait on the lock
    # that the kernel holds while it wires the new port (one of all families does).
    have_all = [a for v in sorted({w.version for w in wanted})
                for a in host.addresses(bridge, socket.AF_INET if v == 4 else socket.AF_INET6)]
    for have in have_all:
        addr = have.interface
        conflict = addr not in wanted and any(addr.version == w.version and (
            w.version == 4 or addr.ip in w.network or w.ip in addr.network) for w in wanted)
        if conflict and not conf.force_address:
            raise CNIError(f"bridge {conf.bridge} already has an IP address different from "
                           f"{', '.join(str(w) for w in wanted)}",
                           f"found {addr} (set forceAddress to replace it)")
        if conflict:
            host.del_address(bridge, addr, missing_ok=True)
    present = {a.interface for a in have_all}
    for gw in wanted:
        if gw not in present:
            # No DAD for the gateway either: pods would not reach a tentative IPv6 gateway.
            host.add_address(bridge, gw, nodad=gw.version == 6, exist_ok=True)
    # A bridge this plugin did not create may still follow the lowest port MAC as pods come and
    # go (breaking the pods' ARP caches for the gateway): pin the one it has.
    host.pin_mac(bridge)
    attachment.enable_forwarding(host, (w.version for w in wanted))


def _interfaces(host: Netlink, pod: Netlink, conf: BridgeConf, host_name: str,
                args: skel.CmdArgs) -> list[Interface]:
    """Read back at the end: the bridge's MAC is the one it has now, with the port added."""
    bridge, host_link, pod_link = host.link(conf.bridge), host.link(host_name), pod.link(args.ifname)
    return [Interface(name=bridge.name, mac=bridge.mac or ""),
            Interface(name=host_link.name, mac=host_link.mac or ""),
            Interface(name=pod_link.name, mac=pod_link.mac or "", sandbox=args.netns)]


# ---- commands ----------------------------------------------------------------------------------


def cmd_add(args: skel.CmdArgs) -> Result:
    conf = load_conf(args)
    return attachment.add(args, PLUGIN_NAME,
                          lambda host, pod, att, undo: _add(args, conf, host, pod, att, undo))


def _add(args: skel.CmdArgs, conf: BridgeConf, host: Netlink, pod: Netlink, att: Attachment,
         undo: Rollback) -> Result:
    """The veth's undo step is registered before creating it: a creation failing halfway is still
    undone. The bridge and its gateway are shared by the network's attachments and stay."""
    bridge = setup_bridge(host, conf)
    ipam = Result()
    if conf.has_ipam:
        ipam = ipam_delegate.ipam_add(args)
        undo.push("IPAM DEL", ipam_delegate.ipam_del, args)
    ips, routes = pod_ips(conf, ipam) if conf.has_ipam else ([], [])
    undo.push(f"delete {att.host_name}", veth.delete_host_side, host, att.host_name, args.netns)
    pair = veth.create_pair(host, pod, host_name=att.host_name, pod_ifname=att.ifname, alias=att.alias,
                            mtu=conf.mtu, pod_mac=conf.mac)
    if conf.macspoofchk:  # before the port forwards anything
        undo.push("remove spoof check", bridge_spoof_check().remove, att.owner.__eq__)
        bridge_spoof_check().add(att.owner, att.host_name, pair.pod.mac or "")
    setup_host_veth(host, conf, pair.host, bridge)
    if ips:
        setup_pod_veth(pod, pair.pod, ips, routes)
    else:
        pod.set_up(pair.pod)  # layer 2 only: the pod configures its own addresses
    if conf.is_gateway:
        setup_gateway(host, conf, bridge, ips)
    if conf.ip_masq and ips:
        undo.push("remove masquerade", bridge_masquerade().remove, att.owner.__eq__)
        bridge_masquerade().add(att.owner, [ip.address for ip in ips])
    return Result(cni_version=args.cni_version, ips=ips, routes=routes,
                  interfaces=_interfaces(host, pod, conf, att.host_name, args),
                  dns=podconf.result_dns(conf.dns, ipam.dns))


def _remove_elements(args: skel.CmdArgs) -> attachment.RemoveElements:
    """DEL's and GC's removal of masquerade and spoof-check elements, even when the feature has
    since been turned off in the config. Without nft installed there can be none, unless the
    config asks for the feature (read leniently: DEL and GC validate nothing)."""
    def remove(which: Callable[[str], bool]) -> None:
        tables: list[tuple[OwnedElements, str]] = [(bridge_masquerade(), "ipMasq"),
                                                   (bridge_spoof_check(), "macspoofchk")]
        for table, key in tables:
            table.remove(which, missing_ok=args.conf.get(key) is not True)
    return remove


def cmd_del(args: skel.CmdArgs) -> None:
    attachment.delete(args, _remove_elements(args))


def cmd_gc(args: skel.CmdArgs) -> None:
    attachment.gc(args, _remove_elements(args))


def cmd_check(args: skel.CmdArgs) -> None:
    conf = load_conf(args)
    prev = args.prev_result
    if prev is None:
        raise InvalidNetworkConfig("CHECK needs prevResult (the result of ADD)")
    att = Attachment.of(args)
    with attachment.locked(args, att):
        if conf.has_ipam:
            ipam_delegate.ipam_check(args)
        index = podside.recorded_index(prev, args.ifname, args.netns)
        ips = podside.recorded_ips(prev, index)
        with Netlink() as host, Netlink(args.netns) as pod:
            bridge = check_bridge(host, conf)
            pod_link = check_pod_link(pod, args, prev, index)
            check_host_veth(host, att.host_name, bridge, pod_link)
            podside.check_addresses(pod, args.ifname, ips)
            podside.check_routes(pod, args.ifname, prev.routes)
        if conf.ip_masq:
            check_masquerade(att.owner, [ip.address for ip in ips])
        if conf.macspoofchk:
            check_spoof(att.owner, att.host_name, prev, args)


def check_bridge(host: Netlink, conf: BridgeConf) -> Link:
    bridge = host.find_link(conf.bridge)
    if bridge is None or bridge.kind != "bridge":
        raise CNIError(f"CHECK: bridge {conf.bridge} is missing",
                       "" if bridge is None else f"{conf.bridge} is a {bridge.kind or 'plain'} link")
    if bool(bridge.flags & _IFF_PROMISC) != conf.promisc:
        raise CNIError(f"CHECK: bridge {conf.bridge} promiscuous mode is not {conf.promisc}")
    return bridge


def check_pod_link(pod: Netlink, args: skel.CmdArgs, prev: Result, index: int | None) -> Link:
    link = pod.find_link(args.ifname)
    if link is None or link.kind != "veth":
        raise CNIError(f"CHECK: veth {args.ifname} is missing in {args.netns}")
    podside.check_recorded_mac(link, prev, index)
    return link


def check_host_veth(host: Netlink, name: str, bridge: Link, pod_link: Link) -> None:
    link = host.find_link(name)
    if link is None:
        raise CNIError(f"CHECK: host veth {name} is missing")
    if link.master != bridge.index:
        raise CNIError(f"CHECK: host veth {name} is not a port of bridge {bridge.name}")
    if link.peer_index != pod_link.index or pod_link.peer_index != link.index:
        raise CNIError(f"CHECK: host veth {name} is not the peer of the pod's {pod_link.name}")


def check_masquerade(own: str, addresses: Sequence[IPIface]) -> None:
    have = {(name, e.key) for name, e in bridge_masquerade().owned_by(own)}
    for address in addresses:
        pods, pod_key, local, local_key = Masquerade.keys(address)
        if (pods, pod_key) not in have or (local, local_key) not in have:
            raise CNIError(f"CHECK: masquerade for {address.ip} is missing from table inet "
                           f"{BRIDGE_TABLE}")


def check_spoof(own: str, host_name: str, prev: Result, args: skel.CmdArgs) -> None:
    mac = next((i.mac for i in prev.interfaces if i.name == args.ifname and i.sandbox == args.netns), "")
    have = {e.key for _, e in bridge_spoof_check().owned_by(own)}
    if not mac or set(SpoofCheck.keys(host_name, mac)) - have:
        raise CNIError(f"CHECK: MAC spoof check for {host_name} ({mac}) is missing from table bridge "
                       f"{BRIDGE_TABLE}")


def cmd_status(args: skel.CmdArgs) -> None:
    """Ready when IPAM is (code 50 from IPAM when its ranges are exhausted)."""
    conf = load_conf(args)
    if conf.has_ipam:
        ipam_delegate.ipam_status(args)


PLUGIN = skel.Plugin(add=cmd_add, delete=cmd_del, check=cmd_check, status=cmd_status, gc=cmd_gc,
                     about="podnet-bridge: attaches pods to a Linux bridge through veth pairs")


def main() -> None:
    skel.main(PLUGIN)
