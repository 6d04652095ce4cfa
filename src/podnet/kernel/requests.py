"""rtnetlink write requests, encoded by podnet: links, bridge VLANs, addresses, routes, neighbours.

Pure functions from arguments to ``(message type, flags, body)``, no sockets, so they are
unit-tested byte for byte. :class:`~podnet.kernel.netlink.Netlink` sends them over its own
NETLINK_ROUTE socket and reads the kernel's acknowledgement.

Why not a library such as pyroute2: one netlink stack (one socket per namespace, one error
path, usable from any thread) and no per-request event-loop machinery on a path where a pod
ADD makes about ten requests. The messages carry the same attributes pyroute2 sends for the
same call (proto ``static`` and type ``unicast`` for routes, both IFA_LOCAL and IFA_ADDRESS
for IPv4 addresses, ...), so the kernel state is the same; pyroute2 is kept as a test-only
oracle (``tests/kernel/test_requests_oracle.py`` compares bytes).
"""

from __future__ import annotations

import socket
import struct
import sys
from typing import NamedTuple

from podnet.kernel import model
from podnet.kernel.wire import NLM_F_ACK, NLM_F_REQUEST, attr

NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
SET = NLM_F_REQUEST | NLM_F_ACK
CREATE = SET | NLM_F_CREATE | NLM_F_EXCL
REPLACE = SET | NLM_F_CREATE | NLM_F_REPLACE

RTM_SETLINK = 19
RTM_DELADDR = 21
RTM_DELROUTE = 25
RTM_DELNEIGH = 29
IFLA_NET_NS_FD = 28
IFLA_INFO_SLAVE_DATA = 5
IFLA_BRPORT_MODE = 4
VETH_INFO_PEER = 1
IFLA_AF_SPEC = 26
IFLA_BRIDGE_VLAN_INFO = 2
BRIDGE_VLAN_INFO_PVID = 0x2
BRIDGE_VLAN_INFO_UNTAGGED = 0x4
AF_BRIDGE = 7
# struct bridge_vlan_info { u16 flags; u16 vid; }
BRIDGE_VLAN_INFO = struct.Struct("=HH")
RTPROT_STATIC = 4
RTN_UNICAST = 1
_ORDER = sys.byteorder


class Request(NamedTuple):
    msg_type: int
    flags: int
    body: bytes


def _u32(n: int) -> bytes:
    return n.to_bytes(4, _ORDER)


def _ifname(name: str) -> bytes:
    return attr(model.IFLA_IFNAME, name.encode() + b"\0")


def _mac(mac: str) -> bytes:
    return attr(model.IFLA_ADDRESS, bytes.fromhex(mac.replace(":", "").replace("-", "")))


def _ip(address: str) -> tuple[int, bytes]:
    """(family, packed address)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return family, socket.inet_pton(family, address)


def _ifinfo(index: int = 0, flags: int = 0, change: int = 0, family: int = socket.AF_UNSPEC) -> bytes:
    return model.IFINFOMSG.pack(family, 0, index, flags, change)


def _linkinfo(kind: str, data: bytes = b"", data_type: int = model.IFLA_INFO_DATA) -> bytes:
    inner = attr(model.IFLA_INFO_KIND, kind.encode() + b"\0")
    return attr(model.IFLA_LINKINFO, inner + (attr(data_type, data) if data else b""))


# -- links ------------------------------------------------------------------------------------


def add_veth(name: str, peer: str, *, mac: str, peer_mac: str, peer_netns_fd: int | None = None,
             mtu: int | None = None) -> Request:
    """A veth pair; the peer is made directly in the namespace ``peer_netns_fd`` refers to."""
    mtu_attr = b"" if mtu is None else attr(model.IFLA_MTU, _u32(mtu))
    netns = b"" if peer_netns_fd is None else attr(IFLA_NET_NS_FD, _u32(peer_netns_fd))
    peer_msg = _ifinfo() + _ifname(peer) + _mac(peer_mac) + mtu_attr + netns
    info = _linkinfo("veth", attr(VETH_INFO_PEER, peer_msg))
    return Request(model.RTM_NEWLINK, CREATE, _ifinfo() + _ifname(name) + _mac(mac) + mtu_attr + info)


def _bridge_data(vlan_filtering: bool | None) -> bytes:
    if vlan_filtering is None:
        return b""
    return attr(model.IFLA_BR_VLAN_FILTERING, bytes([int(vlan_filtering)]))


def add_bridge(name: str, *, mac: str | None = None, mtu: int | None = None,
               vlan_filtering: bool | None = None) -> Request:
    """A bridge; ``vlan_filtering`` None leaves IFLA_BR_VLAN_FILTERING out (the kernel's default,
    off), which kernels without CONFIG_BRIDGE_VLAN_FILTERING accept, unlike the attribute."""
    body = _ifinfo() + _ifname(name)
    if mac is not None:
        body += _mac(mac)
    if mtu is not None:
        body += attr(model.IFLA_MTU, _u32(mtu))
    return Request(model.RTM_NEWLINK, CREATE, body + _linkinfo("bridge", _bridge_data(vlan_filtering)))


def set_bridge_vlan_filtering(index: int, on: bool) -> Request:
    """Turn an existing bridge's VLAN filtering on or off (IFLA_BR_VLAN_FILTERING in its info data)."""
    return Request(model.RTM_NEWLINK, SET, _ifinfo(index) + _linkinfo("bridge", _bridge_data(on)))


def bridge_vlan(index: int, vid: int, *, pvid: bool = False, untagged: bool = False,
                delete: bool = False) -> Request:
    """Add (RTM_SETLINK) or remove (RTM_DELLINK) VLAN ``vid`` on bridge port ``index``: an
    AF_BRIDGE link message carrying IFLA_AF_SPEC / IFLA_BRIDGE_VLAN_INFO, as ``bridge vlan`` does."""
    flags = (BRIDGE_VLAN_INFO_PVID if pvid else 0) | (BRIDGE_VLAN_INFO_UNTAGGED if untagged else 0)
    spec = attr(IFLA_AF_SPEC, attr(IFLA_BRIDGE_VLAN_INFO, BRIDGE_VLAN_INFO.pack(flags, vid)))
    return Request(model.RTM_DELLINK if delete else RTM_SETLINK, SET, _ifinfo(index, family=AF_BRIDGE) + spec)


def set_link(index: int, *, flags: int = 0, change: int = 0, mtu: int | None = None, mac: str | None = None,
             master: int | None = None, alias: str | None = None, name: str | None = None,
             netns_fd: int | None = None) -> Request:
    """Change a link: the flags in ``change`` to their values in ``flags``, and any attribute given."""
    body = _ifinfo(index, flags, change)
    if netns_fd is not None:
        body += attr(IFLA_NET_NS_FD, _u32(netns_fd))
    if name is not None:
        body += _ifname(name)
    if mtu is not None:
        body += attr(model.IFLA_MTU, _u32(mtu))
    if mac is not None:
        body += _mac(mac)
    if master is not None:
        body += attr(model.IFLA_MASTER, _u32(master))
    if alias is not None:
        body += attr(model.IFLA_IFALIAS, alias.encode() + b"\0")
    return Request(model.RTM_NEWLINK, SET, body)


def set_hairpin(index: int, on: bool) -> Request:
    """A bridge port's IFLA_BRPORT_MODE, as bridge-slave data of the port (what pyroute2 sends)."""
    info = _linkinfo("bridge_slave", attr(IFLA_BRPORT_MODE, bytes([int(on)])), IFLA_INFO_SLAVE_DATA)
    return Request(model.RTM_NEWLINK, SET, _ifinfo(index) + info)


def delete_link(index: int) -> Request:
    return Request(model.RTM_DELLINK, SET, _ifinfo(index))


# -- addresses, routes, neighbours ----------------------------------------------------------------


def address(index: int, ip: str, prefixlen: int, *, delete: bool = False, flags: int = 0,
            scope: int = 0) -> Request:
    """Add (or delete) an address. IPv4 carries IFA_LOCAL too: without it the kernel takes
    IFA_ADDRESS as the peer of a point-to-point link."""
    family, packed = _ip(ip)
    body = model.IFADDRMSG.pack(family, prefixlen, 0, scope, index) + attr(model.IFA_ADDRESS, packed)
    if not delete:
        body += attr(model.IFA_FLAGS, _u32(flags))
    if family == socket.AF_INET:
        body += attr(model.IFA_LOCAL, packed)
    return Request(RTM_DELADDR if delete else model.RTM_NEWADDR, SET if delete else CREATE, body)


def route(family: int, dst: str, dst_len: int, *, gateway: str | None = None, oif: int | None = None,
          table: int | None = None, metric: int | None = None, scope: int = 0, onlink: bool = False,
          src: str | None = None, mode: str = "add") -> Request:
    """``mode``: add, replace or delete. A table above 255 goes in RTA_TABLE only."""
    table = model.RT_TABLE_MAIN if table is None else table
    delete = mode == "delete"
    proto, kind = (0, 0) if delete else (RTPROT_STATIC, RTN_UNICAST)
    header = model.RTMSG.pack(family, dst_len, 0, 0, table if table < 256 else model.RT_TABLE_MAIN,
                              proto, scope, kind, model.RTNH_F_ONLINK if onlink else 0)
    body = header + (attr(model.RTA_DST, _ip(dst)[1]) if dst_len else b"")
    if gateway is not None:
        body += attr(model.RTA_GATEWAY, _ip(gateway)[1])
    if oif is not None:
        body += attr(model.RTA_OIF, _u32(oif))
    if table != model.RT_TABLE_MAIN:
        body += attr(model.RTA_TABLE, _u32(table))
    if metric is not None:
        body += attr(model.RTA_PRIORITY, _u32(metric))
    if src is not None:
        body += attr(model.RTA_PREFSRC, _ip(src)[1])
    flags = {"add": CREATE, "replace": REPLACE, "delete": SET}[mode]
    return Request(RTM_DELROUTE if delete else model.RTM_NEWROUTE, flags, body)


def neighbour(index: int, ip: str, mac: str | None = None) -> Request:
    """A permanent neighbour, added or replaced; with ``mac`` None, its deletion."""
    family, packed = _ip(ip)
    body = model.NDMSG.pack(family, index, model.NUD_PERMANENT, 0, 0) + attr(model.NDA_DST, packed)
    if mac is None:
        return Request(RTM_DELNEIGH, SET, body)
    lladdr = attr(model.NDA_LLADDR, bytes.fromhex(mac.replace(":", "")))
    return Request(model.RTM_NEWNEIGH, REPLACE, body + lladdr)


# -- the agent's routing: routes it owns, VXLAN devices and their forwarding entries -------------------


def owned_route(family: int, dst: str, dst_len: int, *, protocol: int, gateway: str | None = None,
                oif: int | None = None, onlink: bool = False, mode: str = "add") -> Request:
    """A main-table unicast route marked with ``protocol`` (``mode``: add, replace or delete). A
    delete carries the protocol too, so the kernel removes the route only if it has that mark:
    another program's route to the same destination is never taken for podnet's."""
    header = model.RTMSG.pack(family, dst_len, 0, 0, model.RT_TABLE_MAIN, protocol,
                              model.RT_SCOPE_UNIVERSE, RTN_UNICAST, model.RTNH_F_ONLINK if onlink else 0)
    body = header + (attr(model.RTA_DST, _ip(dst)[1]) if dst_len else b"")
    if gateway is not None:
        body += attr(model.RTA_GATEWAY, _ip(gateway)[1])
    if oif is not None:
        body += attr(model.RTA_OIF, _u32(oif))
    if mode == "delete":
        return Request(RTM_DELROUTE, SET, body)
    return Request(model.RTM_NEWROUTE, {"add": CREATE, "replace": REPLACE}[mode], body)


def add_vxlan(name: str, *, vni: int, local: str, port: int, mac: str, mtu: int | None = None) -> Request:
    """A VXLAN device with learning off and no group or default remote: it sends only to the
    remotes its forwarding entries name, so nothing is flooded or multicast."""
    family, packed = _ip(local)
    data = attr(model.IFLA_VXLAN_ID, _u32(vni))
    data += attr(model.IFLA_VXLAN_LOCAL if family == socket.AF_INET else model.IFLA_VXLAN_LOCAL6, packed)
    data += attr(model.IFLA_VXLAN_PORT, port.to_bytes(2, "big"))
    data += attr(model.IFLA_VXLAN_LEARNING, b"\0")
    body = _ifinfo() + _ifname(name) + _mac(mac)
    if mtu is not None:
        body += attr(model.IFLA_MTU, _u32(mtu))
    return Request(model.RTM_NEWLINK, CREATE, body + _linkinfo("vxlan", data))


def fdb(index: int, mac: str, dst: str, *, delete: bool = False) -> Request:
    """A permanent forwarding entry of VXLAN device ``index``: frames for ``mac`` go to the
    remote ``dst`` (added or replaced; or deleted)."""
    flags = model.NTF_SELF
    body = model.NDMSG.pack(model.AF_BRIDGE, index, model.NUD_PERMANENT, flags, 0)
    body += attr(model.NDA_LLADDR, bytes.fromhex(mac.replace(":", ""))) + attr(model.NDA_DST, _ip(dst)[1])
    if delete:
        return Request(RTM_DELNEIGH, SET, body)
    return Request(model.RTM_NEWNEIGH, REPLACE, body)
