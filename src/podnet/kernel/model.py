"""Typed kernel objects (links, addresses, routes, neighbours, rules) and their decoding.

Each ``parse_*`` function reads one rtnetlink message payload into a frozen dataclass,
taking only the attributes podnet uses; everything else in the message is skipped.
The ``*_request`` functions build the fixed header of the matching dump request.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys
from dataclasses import dataclass
from typing import Final

from podnet.kernel.wire import attr, attrs, cstr

_ORDER: Final = sys.byteorder
_inet_ntop = socket.inet_ntop
_AF_INET: Final = socket.AF_INET
_AF_INET6: Final = socket.AF_INET6
IP_FAMILIES: Final = frozenset({_AF_INET, _AF_INET6})

# rtnetlink message types
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_GETROUTE = 26
RTM_NEWNEIGH = 28
RTM_GETNEIGH = 30
RTM_NEWRULE = 32
RTM_GETRULE = 34

# rtnetlink multicast groups (enum rtnetlink_groups): where changes to each table are announced
RTNLGRP_LINK = 1
RTNLGRP_NEIGH = 3
RTNLGRP_IPV4_IFADDR = 5
RTNLGRP_IPV4_ROUTE = 7
RTNLGRP_IPV4_RULE = 8
RTNLGRP_IPV6_IFADDR = 9
RTNLGRP_IPV6_ROUTE = 11
RTNLGRP_IPV6_RULE = 19

# struct ifinfomsg / ifaddrmsg / rtmsg / ndmsg / fib_rule_hdr
IFINFOMSG = struct.Struct("=BxHiII")
IFADDRMSG = struct.Struct("=BBBBi")
RTMSG = struct.Struct("=BBBBBBBBI")
NDMSG = struct.Struct("=BxxxiHBB")
FIB_RULE_HDR = struct.Struct("=BBBBBBBBI")
RTNEXTHOP = struct.Struct("=HBBi")

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000

IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_LINK = 5
IFLA_MASTER = 10
IFLA_OPERSTATE = 16
IFLA_LINKINFO = 18
IFLA_IFALIAS = 20
IFLA_EXT_MASK = 29
IFLA_LINK_NETNSID = 37
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
IFLA_INFO_SLAVE_KIND = 4
IFLA_BR_VLAN_FILTERING = 7
# Link dumps skip the ~300 bytes of counters per link: podnet never reads them and
# smaller messages mean fewer receive buffers per dump.
RTEXT_FILTER_SKIP_STATS = 1 << 3

IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_LABEL = 3
IFA_FLAGS = 8
IFA_F_NODAD = 0x02
IFA_F_PERMANENT = 0x80

RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_PREFSRC = 7
RTA_MULTIPATH = 9
RTA_TABLE = 15
RTA_VIA = 18
RTNH_F_ONLINK = 4
RT_TABLE_MAIN = 254
RT_TABLE_LOCAL = 255
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_HOST = 254

NDA_DST = 1
NDA_LLADDR = 2
NDA_IFINDEX = 8
NUD_PERMANENT = 0x80

FRA_DST = 1
FRA_SRC = 2
FRA_IIFNAME = 3
FRA_PRIORITY = 6
FRA_FWMARK = 10
FRA_TABLE = 15
FRA_FWMASK = 16
FRA_OIFNAME = 17
FIB_RULE_INVERT = 0x2


def _u32(data: bytes) -> int:
    return int.from_bytes(data[:4], _ORDER)


def _ip(family: int, data: bytes | None) -> str | None:
    return _inet_ntop(family, data) if data else None


def _mac(data: bytes | None) -> str | None:
    return data.hex(":") if data else None


@dataclass(frozen=True, slots=True)
class Link:
    index: int
    name: str
    flags: int
    mtu: int
    mac: str | None
    kind: str | None  # "veth", "bridge", ...; None for plain devices such as lo
    master: int | None
    # IFLA_LINK: a veth's peer (or a vlan's parent); its index is in the namespace
    # named by link_netnsid when that is set, else in this one.
    peer_index: int | None
    link_netnsid: int | None
    alias: str | None
    operstate: int
    slave_kind: str | None  # "bridge" when enslaved to a bridge
    vlan_filtering: bool | None  # bridges only

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)


@dataclass(frozen=True, slots=True)
class Address:
    index: int
    family: int
    address: str  # the interface's own address (IFA_LOCAL, else IFA_ADDRESS)
    prefixlen: int
    scope: int
    flags: int  # IFA_F_* (the 32-bit IFA_FLAGS when the kernel sends it)
    peer: str | None  # point-to-point peer, when it differs from the local address
    label: str | None

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefixlen}"

    @property
    def interface(self) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        return ipaddress.ip_interface(self.cidr)


@dataclass(frozen=True, slots=True)
class NextHop:
    gateway: str | None
    oif: int | None
    flags: int
    weight: int  # rtnh_hops + 1


@dataclass(frozen=True, slots=True)
class Route:
    family: int
    dst: str | None  # None: default route
    dst_len: int
    table: int
    protocol: int
    scope: int
    type: int
    flags: int  # rtm_flags / RTNH_F_* (RTNH_F_ONLINK)
    gateway: str | None
    oif: int | None
    priority: int | None  # the metric
    prefsrc: str | None
    multipath: tuple[NextHop, ...] = ()

    @property
    def destination(self) -> str:
        """CIDR of the destination; the default route is 0.0.0.0/0 or ::/0."""
        if self.dst is None:
            return "0.0.0.0/0" if self.family == _AF_INET else "::/0"
        return f"{self.dst}/{self.dst_len}"

    @property
    def onlink(self) -> bool:
        return bool(self.flags & RTNH_F_ONLINK)


@dataclass(frozen=True, slots=True)
class Neighbour:
    family: int
    index: int
    dst: str
    lladdr: str | None
    state: int  # NUD_*
    flags: int  # NTF_*

    @property
    def permanent(self) -> bool:
        return bool(self.state & NUD_PERMANENT)


@dataclass(frozen=True, slots=True)
class Rule:
    family: int
    priority: int
    table: int
    action: int
    flags: int
    src: str | None
    src_len: int
    dst: str | None
    dst_len: int
    iifname: str | None
    oifname: str | None
    fwmark: int | None
    fwmask: int | None

    @property
    def invert(self) -> bool:
        return bool(self.flags & FIB_RULE_INVERT)


def parse_link(buf: bytes, start: int, end: int) -> Link:
    _family, _type, index, flags, _change = IFINFOMSG.unpack_from(buf, start)
    a = attrs(buf, start + IFINFOMSG.size, end)
    kind = slave_kind = vlan_filtering = None
    if (info := a.get(IFLA_LINKINFO)) is not None:
        kind, slave_kind, vlan_filtering = _linkinfo(info)
    master, peer, netnsid = a.get(IFLA_MASTER), a.get(IFLA_LINK), a.get(IFLA_LINK_NETNSID)
    alias, mtu, operstate = a.get(IFLA_IFALIAS), a.get(IFLA_MTU), a.get(IFLA_OPERSTATE)
    return Link(
        index=index,
        name=cstr(a.get(IFLA_IFNAME, b"")),
        flags=flags,
        mtu=_u32(mtu) if mtu else 0,
        mac=_mac(a.get(IFLA_ADDRESS)),
        kind=kind,
        master=_u32(master) if master else None,
        peer_index=_u32(peer) if peer else None,
        link_netnsid=int.from_bytes(netnsid[:4], _ORDER, signed=True) if netnsid else None,
        alias=cstr(alias) if alias else None,
        operstate=operstate[0] if operstate else 0,
        slave_kind=slave_kind,
        vlan_filtering=vlan_filtering,
    )


def _linkinfo(info: bytes) -> tuple[str | None, str | None, bool | None]:
    nested = attrs(info, 0, len(info))
    kind = cstr(nested[IFLA_INFO_KIND]) if IFLA_INFO_KIND in nested else None
    slave = cstr(nested[IFLA_INFO_SLAVE_KIND]) if IFLA_INFO_SLAVE_KIND in nested else None
    vlan_filtering = None
    if kind == "bridge" and (data := nested.get(IFLA_INFO_DATA)) is not None:
        value = attrs(data, 0, len(data)).get(IFLA_BR_VLAN_FILTERING)
        vlan_filtering = bool(value[0]) if value else None
    return kind, slave, vlan_filtering


def parse_address(buf: bytes, start: int, end: int) -> Address | None:
    family, prefixlen, flags, scope, index = IFADDRMSG.unpack_from(buf, start)
    if family not in IP_FAMILIES:
        return None
    a = attrs(buf, start + 8, end)
    local, addr = a.get(IFA_LOCAL), a.get(IFA_ADDRESS)
    own = local or addr
    if not own:
        return None
    wide, label = a.get(IFA_FLAGS), a.get(IFA_LABEL)
    return Address(
        index=index,
        family=family,
        address=_inet_ntop(family, own),
        prefixlen=prefixlen,
        scope=scope,
        flags=_u32(wide) if wide else flags,
        peer=_inet_ntop(family, addr) if local and addr and addr != local else None,
        label=cstr(label) if label else None,
    )


def parse_route(buf: bytes, start: int, end: int) -> Route | None:
    family, dst_len, _src_len, _tos, table, proto, scope, rtype, flags = RTMSG.unpack_from(buf, start)
    if family not in IP_FAMILIES:  # skip multicast routing tables (RTNL_FAMILY_IPMR, ...)
        return None
    a = attrs(buf, start + RTMSG.size, end)
    gateway = _ip(family, a.get(RTA_GATEWAY)) or _via(a.get(RTA_VIA))
    wide_table, oif, prio = a.get(RTA_TABLE), a.get(RTA_OIF), a.get(RTA_PRIORITY)
    mp = a.get(RTA_MULTIPATH)
    return Route(
        family=family,
        dst=_ip(family, a.get(RTA_DST)),
        dst_len=dst_len,
        table=_u32(wide_table) if wide_table else table,
        protocol=proto,
        scope=scope,
        type=rtype,
        flags=flags,
        gateway=gateway,
        oif=_u32(oif) if oif else None,
        priority=_u32(prio) if prio is not None else None,
        prefsrc=_ip(family, a.get(RTA_PREFSRC)),
        multipath=_nexthops(family, mp) if mp else (),
    )


def _via(data: bytes | None) -> str | None:
    # struct rtvia { u16 family; u8 addr[]; }: a gateway of another family (IPv4 over IPv6).
    if not data or len(data) < 2:
        return None
    return _inet_ntop(int.from_bytes(data[:2], _ORDER), data[2:])


def _nexthops(family: int, data: bytes) -> tuple[NextHop, ...]:
    hops: list[NextHop] = []
    off = 0
    while off + RTNEXTHOP.size <= len(data):
        length, flags, weight, oif = RTNEXTHOP.unpack_from(data, off)
        if length < RTNEXTHOP.size:
            break
        a = attrs(data, off + RTNEXTHOP.size, off + length)
        gateway = _ip(family, a.get(RTA_GATEWAY)) or _via(a.get(RTA_VIA))
        hops.append(NextHop(gateway=gateway, oif=oif or None, flags=flags, weight=weight + 1))
        off += (length + 3) & ~3
    return tuple(hops)


def parse_neighbour(buf: bytes, start: int, end: int) -> Neighbour | None:
    family, index, state, flags, _type = NDMSG.unpack_from(buf, start)
    if family not in IP_FAMILIES:
        return None
    a = attrs(buf, start + NDMSG.size, end)
    dst = a.get(NDA_DST)
    if not dst:
        return None
    return Neighbour(family=family, index=index, dst=_inet_ntop(family, dst),
                     lladdr=_mac(a.get(NDA_LLADDR)), state=state, flags=flags)


def parse_rule(buf: bytes, start: int, end: int) -> Rule | None:
    family, dst_len, src_len, _tos, table, _r1, _r2, action, flags = FIB_RULE_HDR.unpack_from(buf, start)
    if family not in IP_FAMILIES:
        return None
    a = attrs(buf, start + FIB_RULE_HDR.size, end)
    prio, wide_table = a.get(FRA_PRIORITY), a.get(FRA_TABLE)
    iif, oif, mark, mask = a.get(FRA_IIFNAME), a.get(FRA_OIFNAME), a.get(FRA_FWMARK), a.get(FRA_FWMASK)
    return Rule(
        family=family,
        priority=_u32(prio) if prio else 0,
        table=_u32(wide_table) if wide_table else table,
        action=action,
        flags=flags,
        src=_ip(family, a.get(FRA_SRC)),
        src_len=src_len,
        dst=_ip(family, a.get(FRA_DST)),
        dst_len=dst_len,
        iifname=cstr(iif) if iif else None,
        oifname=cstr(oif) if oif else None,
        fwmark=_u32(mark) if mark else None,
        fwmask=_u32(mask) if mask else None,
    )


# Dump / get request bodies. The socket asks for strict checking (NETLINK_GET_STRICT_CHK),
# under which the kernel filters on what the request names (and rejects non-zero header
# fields it cannot filter on). A filtered dump answers with the matching objects only,
# which usually fit in one part: consistent without a second attempt (see dump.py).

def link_request(index: int = 0, name: str | None = None) -> bytes:
    body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0)
    if name is not None:
        body += attr(IFLA_IFNAME, name.encode() + b"\0")
    return body + attr(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS.to_bytes(4, _ORDER))


def address_request(family: int = socket.AF_UNSPEC, index: int = 0) -> bytes:
    return IFADDRMSG.pack(family, 0, 0, 0, index)


def route_request(family: int = socket.AF_UNSPEC, table: int | None = None, oif: int | None = None) -> bytes:
    """Routes of ``family``; the kernel keeps only those of ``table`` (RTA_TABLE, any table id)
    and with a next hop through link ``oif`` (RTA_OIF) when given."""
    body = RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
    if table is not None:
        body += attr(RTA_TABLE, table.to_bytes(4, _ORDER))
    if oif is not None:
        body += attr(RTA_OIF, oif.to_bytes(4, _ORDER))
    return body


def groups(family: int, v4: int, v6: int) -> tuple[int, ...]:
    """The multicast groups announcing changes to a table of ``family`` (both for AF_UNSPEC)."""
    if family == _AF_INET:
        return (v4,)
    return (v6,) if family == _AF_INET6 else (v4, v6)


def neighbour_request(family: int = socket.AF_UNSPEC, index: int = 0) -> bytes:
    # Unlike address dumps, neighbour dumps take the ifindex filter as NDA_IFINDEX;
    # a non-zero ndm_ifindex is refused under strict checking.
    body = NDMSG.pack(family, 0, 0, 0, 0)
    return body + attr(NDA_IFINDEX, index.to_bytes(4, _ORDER)) if index else body


def rule_request(family: int = socket.AF_UNSPEC) -> bytes:
    return FIB_RULE_HDR.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)


# -- VXLAN links and bridge forwarding (FDB) entries, for the agent's overlay ---------------------

# The route protocol podnet's agent marks its routes with: not a kernel value and not one iproute2,
# BIRD, Calico or the routing daemons name, so "ip route show proto 157" lists podnet's routes and
# reconciling reads (and deletes) only those.
RTPROT_PODNET = 157
AF_BRIDGE = 7
NTF_SELF = 0x2
IFLA_VXLAN_ID = 1
IFLA_VXLAN_LOCAL = 4
IFLA_VXLAN_LEARNING = 7
IFLA_VXLAN_PORT = 15  # big-endian u16
IFLA_VXLAN_LOCAL6 = 17


@dataclass(frozen=True, slots=True)
class FdbEntry:
    """One forwarding entry of a bridge or VXLAN device (an AF_BRIDGE neighbour): frames for
    ``mac`` go to port ``index``, and for a VXLAN device to the remote ``dst`` (NDA_DST)."""

    index: int
    mac: str
    dst: str | None
    state: int  # NUD_*
    flags: int  # NTF_*

    @property
    def permanent(self) -> bool:
        return bool(self.state & NUD_PERMANENT)


def parse_fdb(buf: bytes, start: int, end: int) -> FdbEntry | None:
    family, index, state, flags, _type = NDMSG.unpack_from(buf, start)
    if family != AF_BRIDGE:
        return None
    a = attrs(buf, start + NDMSG.size, end)
    mac = a.get(NDA_LLADDR)
    if not mac:
        return None
    dst = a.get(NDA_DST)
    dst_family = _AF_INET if dst is not None and len(dst) == 4 else _AF_INET6
    return FdbEntry(index=index, mac=mac.hex(":"), dst=_ip(dst_family, dst), state=state, flags=flags)


@dataclass(frozen=True, slots=True)
class Vxlan:
    """A VXLAN device's settings (IFLA_INFO_DATA of kind "vxlan"), for checking one podnet made."""

    index: int
    name: str
    mac: str | None
    up: bool
    vni: int | None
    local: str | None
    port: int | None
    learning: bool | None


def parse_vxlan(buf: bytes, start: int, end: int) -> Vxlan | None:
    """A link message read as a VXLAN device (None for any other kind)."""
    link = parse_link(buf, start, end)
    if link.kind != "vxlan":
        return None
    info = attrs(buf, start + IFINFOMSG.size, end)[IFLA_LINKINFO]
    nested = attrs(info, 0, len(info)).get(IFLA_INFO_DATA, b"")
    data = attrs(nested, 0, len(nested))
    vni, port, learning = data.get(IFLA_VXLAN_ID), data.get(IFLA_VXLAN_PORT), data.get(IFLA_VXLAN_LEARNING)
    local = _ip(_AF_INET, data.get(IFLA_VXLAN_LOCAL)) or _ip(_AF_INET6, data.get(IFLA_VXLAN_LOCAL6))
    return Vxlan(index=link.index, name=link.name, mac=link.mac, up=link.up,
                 vni=_u32(vni) if vni else None, local=local,
                 port=int.from_bytes(port[:2], "big") if port else None,
                 learning=bool(learning[0]) if learning else None)


def fdb_request(index: int = 0) -> bytes:
    """The forwarding entries of every bridge/VXLAN port, or of port ``index`` (NDA_IFINDEX)."""
    return neighbour_request(AF_BRIDGE, index)


__all__ = [
    "Address",
    "FdbEntry",
    "Link",
    "Neighbour",
    "NextHop",
    "Route",
    "Rule",
    "Vxlan",
]
