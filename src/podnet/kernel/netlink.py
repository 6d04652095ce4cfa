"""``Netlink``: one session bound to one network namespace, for everything plugins do.

Reads (dumps and lookups) and writes go over podnet's own NETLINK_ROUTE socket, opened
in the session's namespace (no fork, never ``O_CREAT``). Every dump goes through
:func:`podnet.kernel.dump.consistent_dump`, so every list is a consistent snapshot.
Write requests, the bridge VLAN ones included, are encoded by
:mod:`podnet.kernel.requests` and their errors become the typed errors of
:mod:`podnet.kernel.errors`: one netlink stack, one error path.

Threads: the socket is shared under a lock, so any thread may read and write.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from podnet.kernel import model, requests
from podnet.kernel.dump import (
    DEFAULT_RETRY,
    DumpRequest,
    RetryPolicy,
    RouteSocket,
    Snapshot,
    consistent_dump,
    get,
    send_request,
)
from podnet.kernel.errors import Exists, InvalidArgument, LinkNotFound, NotFound, Subject
from podnet.kernel.model import Address, Link, Neighbour, Route, Rule
from podnet.kernel.netns import NetnsHandle, NetnsRef, opened
from podnet.kernel.sysctl import read_sysctl, write_sysctl
from podnet.kernel.sysfs import NET_ADDR_SET, mounted_addr_assign_type

T = TypeVar("T")
_IFF_PROMISC = 0x100
LinkRef = str | int | Link  # a name, an index, or a Link from this session
IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network
IPIface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def random_mac() -> str:
    """A random locally administered unicast MAC (for setting veth MACs explicitly)."""
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFC) | 0x02  # unicast, locally administered
    return raw.hex(":")


class Netlink:
    """Kernel networking state of one namespace (None: the caller's, at creation time)."""

    def __init__(self, netns: NetnsRef | None = None, *, retry: RetryPolicy = DEFAULT_RETRY,
                 timeout: float = 10.0) -> None:
        if isinstance(netns, NetnsHandle):
            self.netns = netns.dup()
        elif netns is None:
            self.netns = NetnsHandle.current()
        else:
            self.netns = NetnsHandle.open(netns)
        self.retry = retry
        try:
            self._rt = RouteSocket.open(self.netns, timeout)
        except BaseException:
            self.netns.close()
            raise

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        self._rt.close()
        self.netns.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- consistent dumps --------------------------------------------------------------

    def _dump(self, request: DumpRequest[T], best_effort: bool,
              keep: Callable[[T], bool] | None = None) -> Snapshot[T]:
        snap = consistent_dump(self._rt, request, retry=self.retry, best_effort=best_effort)
        if keep is None:
            return snap
        return Snapshot([x for x in snap if keep(x)], snap.attempts, snap.consistent)

    def links(self, *, best_effort: bool = False) -> Snapshot[Link]:
        req = DumpRequest("links", model.RTM_GETLINK, model.link_request(), model.parse_link,
                          flags_interrupts=True)
        return self._dump(req, best_effort)

    def addresses(self, link: LinkRef | None = None, family: int = socket.AF_UNSPEC, *,
                  best_effort: bool = False) -> Snapshot[Address]:
        """All addresses, or those of one link: the kernel filters (ifa_index), so a link's
        addresses come in one small answer however many the namespace holds."""
        index = 0 if link is None else self.index(link)
        # The kernel flags interrupted address dumps, except those it filters to one link;
        # the notifications catch what the flag misses (see dump.py).
        req = DumpRequest("addresses", model.RTM_GETADDR, model.address_request(family, index),
                          model.parse_address, flags_interrupts=not index,
                          watch=model.groups(family, model.RTNLGRP_IPV4_IFADDR, model.RTNLGRP_IPV6_IFADDR))
        # The kernel filters too (strict checking), the check here covers older kernels.
        return self._dump(req, best_effort, lambda a: (not index or a.index == index)
                          and (not family or a.family == family))

    def routes(self, family: int = socket.AF_UNSPEC, *, table: int | None = None,
               oif: LinkRef | None = None, best_effort: bool = False) -> Snapshot[Route]:
        """Routes of all tables (``table=None``), or of one (254 is main); ``oif``: only those
        through that link. The kernel does the filtering, so the answer is small."""
        index = None if oif is None else self.index(oif)
        req = DumpRequest("routes", model.RTM_GETROUTE, model.route_request(family, table, index),
                          model.parse_route, compare=True,
                          watch=model.groups(family, model.RTNLGRP_IPV4_ROUTE, model.RTNLGRP_IPV6_ROUTE))
        try:
            snap = self._dump(req, best_effort)
        except NotFound:
            if table is None:
                raise
            return Snapshot([], 1, True)  # ENOENT: that table does not exist (yet), so it is empty
        return Snapshot([r for r in snap if (table is None or r.table == table)
                         and (index is None or r.oif == index or any(h.oif == index for h in r.multipath))
                         and (not family or r.family == family)], snap.attempts, snap.consistent)

    def neighbours(self, link: LinkRef | None = None, family: int = socket.AF_UNSPEC, *,
                   best_effort: bool = False) -> Snapshot[Neighbour]:
        index = 0 if link is None else self.index(link)
        req = DumpRequest("neighbours", model.RTM_GETNEIGH, model.neighbour_request(family, index),
                          model.parse_neighbour, watch=(model.RTNLGRP_NEIGH,), compare=True)
        return self._dump(req, best_effort, lambda n: (not index or n.index == index)
                          and (not family or n.family == family))

    def rules(self, family: int = socket.AF_UNSPEC, *, best_effort: bool = False) -> Snapshot[Rule]:
        req = DumpRequest("rules", model.RTM_GETRULE, model.rule_request(family), model.parse_rule,
                          compare=True,
                          watch=model.groups(family, model.RTNLGRP_IPV4_RULE, model.RTNLGRP_IPV6_RULE))
        return self._dump(req, best_effort, lambda r: not family or r.family == family)

    # -- lookups -------------------------------------------------------------------------

    def link(self, ref: LinkRef) -> Link:
        """The link by name or index (a single RTM_GETLINK, not a dump). LinkNotFound if absent."""
        if isinstance(ref, Link):
            ref = ref.index
        if isinstance(ref, int):
            body, what = model.link_request(index=ref), f"link #{ref}"
        else:
            body, what = model.link_request(name=ref), f"link {ref}"
        found = get(self._rt, DumpRequest(what, model.RTM_GETLINK, body, model.parse_link), "link")
        if not found:
            raise LinkNotFound(f"{what}: no such link")
        return found[0]

    def find_link(self, ref: LinkRef) -> Link | None:
        try:
            return self.link(ref)
        except LinkNotFound:
            return None

    def link_by_alias(self, alias: str) -> Link:
        """The link whose IFLA_IFALIAS is ``alias`` (the kernel cannot look this up: a dump)."""
        for link in self.links():
            if link.alias == alias:
                return link
        raise LinkNotFound(f"link with alias {alias!r}: no such link")

    def index(self, ref: LinkRef) -> int:
        if isinstance(ref, Link):
            return ref.index
        if isinstance(ref, int):
            return ref
        return self.link(ref).index

    # -- writes ------------------------------------------------------------------------------

    def _send(self, subject: Subject, what: str, request: requests.Request) -> None:
        send_request(self._rt, request.msg_type, request.flags, request.body, subject, what)

    # links

    def add_veth(self, name: str, peer_name: str, *, mac: str, peer_mac: str,
                 peer_netns: NetnsRef | None = None, mtu: int | None = None) -> Link:
        """Create a veth pair; ``name`` here, ``peer_name`` directly in ``peer_netns``.

        Both MACs are given at creation, so the kernel marks them NET_ADDR_SET
        (addr_assign_type 3) and udev's MACAddressPolicy=persistent leaves them alone;
        creating the peer inside the target namespace means its name (often eth0) never
        has to be free in this one. Returns this side's link.
        """
        with contextlib.ExitStack() as stack:
            fd = None if peer_netns is None else stack.enter_context(opened(peer_netns)).fd
            self._send("link", f"veth {name}/{peer_name}", requests.add_veth(
                name, peer_name, mac=mac, peer_mac=peer_mac, peer_netns_fd=fd, mtu=mtu))
        return self.link(name)

    def ensure_bridge(self, name: str, *, mac: str | None = None, mtu: int | None = None,
                      vlan_filtering: bool | None = None) -> Link:
        """The bridge ``name``, created if missing, reused if present (Exists if the name
        is taken by another kind). ``mac``/``mtu`` apply at creation only; an existing
        bridge is changed only for ``vlan_filtering`` (None: leave the setting alone)."""
        link = self.find_link(name)
        if link is None:
            # Exists: made concurrently by someone else; reuse it, its kind is checked below.
            with contextlib.suppress(Exists):
                self._add_bridge(name, mac, mtu, vlan_filtering)
            link = self.link(name)
        if link.kind != "bridge":
            raise Exists(f"bridge {name}: name taken", f"by a link of kind {link.kind or 'none'}")
        if vlan_filtering is not None and bool(link.vlan_filtering) != vlan_filtering:
            request = requests.set_bridge_vlan_filtering(link.index, vlan_filtering)
            self._send("link", f"bridge {name}", request)
            link = self.link(link.index)
        return link

    def _add_bridge(self, name: str, mac: str | None, mtu: int | None, vlan_filtering: bool | None) -> None:
        # Off is the default: not sending it keeps kernels without CONFIG_BRIDGE_VLAN_FILTERING
        # working (they refuse the attribute outright, with EOPNOTSUPP).
        request = requests.add_bridge(name, mac=mac, mtu=mtu, vlan_filtering=True if vlan_filtering else None)
        self._send("link", f"bridge {name}", request)

    def set_up(self, link: LinkRef) -> None:
        self._set(link, flags=model.IFF_UP, change=model.IFF_UP)

    def set_down(self, link: LinkRef) -> None:
        self._set(link, flags=0, change=model.IFF_UP)

    def set_mtu(self, link: LinkRef, mtu: int) -> None:
        self._set(link, mtu=mtu)

    def set_mac(self, link: LinkRef, mac: str) -> None:
        self._set(link, mac=mac)

    def pin_mac(self, link: Link) -> None:
        """Make the link keep the MAC it has now (the kernel's NET_ADDR_SET): a bridge then no
        longer takes the lowest MAC of its ports as they come and go. Setting a MAC, even the
        same one, makes the kernel flush the link's neighbour table, so a link this process has
        pinned already is left alone: the process's own /sys says so when it shows this link
        (rtnetlink does not carry NET_ADDR_SET, and a private sysfs mount per call costs more
        than it saves), else this process remembers pinning it (same namespace, index and MAC).
        A link with no MAC yet (00:00:00:00:00:00) is left alone."""
        current = self.link(link.index)
        mac = current.mac
        if not mac or mac == _ZERO_MAC:
            return
        key = (self.netns.identity(), link.index, mac)
        if key in _pinned or mounted_addr_assign_type(current.name, link.index, mac) == NET_ADDR_SET:
            return
        self.set_mac(link, mac)
        with _pinned_lock:
            if len(_pinned) >= _PINNED_MAX:
                _pinned.clear()  # only ever costs one more (harmless) pin per link
            _pinned.add(key)

    def set_master(self, link: LinkRef, master: LinkRef | None) -> None:
        """Enslave to a bridge (``None``: release; IFLA_MASTER 0 means no master)."""
        self._set(link, master=0 if master is None else self.index(master))

    def set_promisc(self, link: LinkRef, on: bool = True) -> None:
        """IFF_PROMISC on or off (only that flag changes)."""
        self._set(link, flags=_IFF_PROMISC if on else 0, change=_IFF_PROMISC)

    def set_hairpin(self, link: LinkRef, on: bool = True) -> None:
        """A bridge port's hairpin mode (IFLA_BRPORT_MODE): frames may go back out the port
        they came in on, so a pod can reach itself through a service address."""
        self._send("link", f"bridge port {_name(link)}", requests.set_hairpin(self.index(link), on))

    def bridge_vlan_add(self, link: LinkRef, vid: int, *, pvid: bool = False, untagged: bool = False) -> None:
        """Add VLAN ``vid`` to a bridge port (needs vlan_filtering on the bridge and a kernel
        with CONFIG_BRIDGE_VLAN_FILTERING; NotSupported otherwise)."""
        self._send("link", f"vlan {vid} on {_name(link)}",
                   requests.bridge_vlan(self.index(link), vid, pvid=pvid, untagged=untagged))

    def bridge_vlan_del(self, link: LinkRef, vid: int, *, missing_ok: bool = False) -> None:
        try:
            self._send("link", f"vlan {vid} on {_name(link)}",
                       requests.bridge_vlan(self.index(link), vid, delete=True))
        except (NotFound, InvalidArgument):
            if not missing_ok:
                raise

    def set_alias(self, link: LinkRef, alias: str) -> None:
        self._set(link, alias=alias)

    def rename(self, link: LinkRef, new_name: str) -> None:
        """Rename (the kernel refuses while the link is up: EBUSY)."""
        self._set(link, name=new_name)

    def set_netns(self, link: LinkRef, netns: NetnsRef, *, new_name: str | None = None) -> None:
        """Move the link to another namespace, optionally renaming it on the way."""
        with opened(netns) as target:
            self._set(link, netns_fd=target.fd, name=new_name)

    def delete_link(self, link: LinkRef, *, missing_ok: bool = False) -> None:
        """Delete the link (a veth takes its peer with it)."""
        try:
            self._send("link", f"link {_name(link)}", requests.delete_link(self.index(link)))
        except LinkNotFound:
            if not missing_ok:
                raise

    def _set(self, link: LinkRef, **changes: Any) -> None:
        self._send("link", f"link {_name(link)}", requests.set_link(self.index(link), **changes))

    # addresses

    def add_address(self, link: LinkRef, cidr: str | IPIface, *, nodad: bool = False,
                    exist_ok: bool = False, scope: int | None = None) -> None:
        """Add ``10.0.0.2/24`` (or an ip_interface) to the link; ``nodad`` skips IPv6 DAD;
        ``scope`` (IPv4: RT_SCOPE_*) overrides the kernel's default (universe)."""
        iface = _interface(cidr)
        flags = model.IFA_F_NODAD if nodad else 0
        request = requests.address(self.index(link), str(iface.ip), iface.network.prefixlen, flags=flags,
                                   scope=scope or 0)
        try:
            self._send("address", f"address {iface} on {_name(link)}", request)
        except Exists:
            if not exist_ok:
                raise

    def del_address(self, link: LinkRef, cidr: str | IPIface, *, missing_ok: bool = False) -> None:
        iface = _interface(cidr)
        request = requests.address(self.index(link), str(iface.ip), iface.network.prefixlen, delete=True)
        try:
            self._send("address", f"address {iface} on {_name(link)}", request)
        except NotFound:
            if not missing_ok:
                raise

    # routes

    def add_route(self, dst: str | IPNet, *, gateway: str | None = None, oif: LinkRef | None = None,
                  scope: int | None = None, table: int | None = None, metric: int | None = None,
                  onlink: bool = False, src: str | None = None, replace: bool = False) -> None:
        """Add (or with ``replace``, add-or-replace) a route. ``dst`` is a CIDR or "default";
        the family follows dst. ``onlink`` lets the gateway sit outside the link's subnets
        (169.254.1.1 in routed pod setups)."""
        request = self._route(dst, gateway, oif, table, metric, scope=scope or 0, onlink=onlink,
                              src=_optional_address(src), mode="replace" if replace else "add")
        self._send("route", f"route {dst}", request)

    def del_route(self, dst: str | IPNet, *, gateway: str | None = None, oif: LinkRef | None = None,
                  table: int | None = None, metric: int | None = None, missing_ok: bool = False) -> None:
        request = self._route(dst, gateway, oif, table, metric, mode="delete")
        try:
            self._send("route", f"route {dst}", request)
        except NotFound:
            if not missing_ok:
                raise

    def _route(self, dst: str | IPNet, gateway: str | None, oif: LinkRef | None, table: int | None,
               metric: int | None, **extra: Any) -> requests.Request:
        net = _destination(dst, gateway)
        index = None if oif is None else self.index(oif)
        return requests.route(_family(net.version), str(net.network_address), net.prefixlen,
                              gateway=_optional_address(gateway), oif=index, table=table, metric=metric,
                              **extra)

    # neighbours

    def set_neighbour(self, link: LinkRef, ip: str, mac: str) -> None:
        """A permanent neighbour entry (static ARP/NDP), added or replaced."""
        self._send("neighbour", f"neighbour {ip} on {_name(link)}",
                   requests.neighbour(self.index(link), _address(ip), mac))

    def del_neighbour(self, link: LinkRef, ip: str, *, missing_ok: bool = False) -> None:
        try:
            self._send("neighbour", f"neighbour {ip} on {_name(link)}",
                       requests.neighbour(self.index(link), _address(ip)))
        except NotFound:
            if not missing_ok:
                raise

    # sysctls (of this session's namespace)

    def sysctl(self, key: str) -> str:
        return read_sysctl(key, self.netns)

    def set_sysctl(self, key: str, value: str | int) -> None:
        write_sysctl(key, value, self.netns)


_ZERO_MAC = "00:00:00:00:00:00"
# Links this process pinned (see Netlink.pin_mac): (namespace identity, ifindex, MAC).
_pinned: set[tuple[tuple[int, int], int, str]] = set()
_pinned_lock = threading.Lock()
_PINNED_MAX = 4096


def _name(link: LinkRef) -> str:
    if isinstance(link, Link):
        return link.name
    return f"#{link}" if isinstance(link, int) else link


def _family(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


def _address(ip: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError as exc:
        raise InvalidArgument(f"address {ip}: not an IP address", str(exc)) from None


def _optional_address(ip: str | None) -> str | None:
    return None if ip is None else _address(ip)


def _interface(cidr: str | IPIface) -> IPIface:
    try:
        return ipaddress.ip_interface(cidr)
    except ValueError as exc:
        raise InvalidArgument(f"address {cidr}: not an address/prefix", str(exc)) from None


def _destination(dst: str | IPNet, gateway: str | None) -> IPNet:
    if isinstance(dst, str) and dst == "default":
        if gateway is None:
            raise InvalidArgument("route default: needs a gateway to know its family")
        return ipaddress.ip_network("0.0.0.0/0" if ipaddress.ip_address(gateway).version == 4 else "::/0")
    try:
        return ipaddress.ip_network(dst, strict=True)
    except ValueError as exc:
        raise InvalidArgument(f"route {dst}: not a network", str(exc)) from None


__all__ = ["IPIface", "IPNet", "LinkRef", "Netlink", "random_mac"]
