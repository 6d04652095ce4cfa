"""The kernel side of cross-node routing, all through podnet's netlink layer: consistent dumps of
the main routing table, the VXLAN devices' addresses, neighbours and forwarding entries, and the
writes that make them what :mod:`podnet.agent.routes_plan` says.

Each ``sync_*`` function compares one kind of object podnet owns with the plan, writes only the
difference and returns how many writes it made. What podnet owns, and so what it may delete: routes
marked with ``RTPROT_PODNET``, and its own ``podnet.vx*`` devices with whatever is on them. Nothing
else is ever changed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable

from podnet.agent.routes_plan import VXLAN_PORT, VXLAN_VNI, Overlay, RouteSpec, device_name
from podnet.kernel import model, requests
from podnet.kernel.dump import DumpRequest, RouteSocket, Snapshot, consistent_dump, get, send_request
from podnet.kernel.errors import Exists, LinkNotFound, NotFound, Subject
from podnet.kernel.model import FdbEntry, Route, Vxlan
from podnet.kernel.netlink import Netlink
from podnet.kernel.netns import NetnsRef

log = logging.getLogger(__name__)
# VXLAN's headers on top of the inner frame: outer IP (20 or 40) + UDP 8 + VXLAN 8 + Ethernet 14.
_OVERHEAD = {4: 50, 6: 70}
Conflict = Callable[[str, str], None]  # (destination, why): a route podnet does not own is in the way


class RouteKernel:
    """One namespace's routing state, read and written through one :class:`Netlink` session (reads of
    links, addresses, routes, neighbours) and one more route socket (forwarding-entry dumps and the
    requests :class:`Netlink` has no method for)."""

    def __init__(self, netns: NetnsRef | None = None) -> None:
        self.nl = Netlink(netns)
        try:
            self._sock = RouteSocket.open(self.nl.netns)
        except BaseException:
            self.nl.close()
            raise

    def close(self) -> None:
        self._sock.close()
        self.nl.close()

    def write(self, subject: Subject, what: str, request: requests.Request) -> None:
        send_request(self._sock, request.msg_type, request.flags, request.body, subject, what)

    def main_routes(self) -> Snapshot[Route]:
        return self.nl.routes(table=model.RT_TABLE_MAIN)

    def vxlan(self, name: str) -> Vxlan | None:
        """The VXLAN device ``name``; None when there is none; Exists when the name is another kind's."""
        request = DumpRequest(f"link {name}", model.RTM_GETLINK, model.link_request(name=name),
                              model.parse_vxlan)
        try:
            found = get(self._sock, request, "link")
        except LinkNotFound:
            return None
        if not found:
            raise Exists(f"link {name}: name taken", "by a link that is not a VXLAN device")
        return found[0]

    def fdb(self, index: int) -> Snapshot[FdbEntry]:
        request = DumpRequest("forwarding entries", model.RTM_GETNEIGH, model.fdb_request(index),
                              model.parse_fdb, watch=(model.RTNLGRP_NEIGH,), compare=True)
        snap = consistent_dump(self._sock, request, retry=self.nl.retry)
        return Snapshot([e for e in snap if e.index == index], snap.attempts, snap.consistent)


# ---- devices ---------------------------------------------------------------------------------------


def sync_device(k: RouteKernel, overlay: Overlay) -> tuple[int, int]:
    """The overlay's VXLAN device as planned (made again if any setting differs) and up:
    (its index, writes)."""
    current = k.vxlan(overlay.device)
    writes = 0
    if current is not None and not _device_matches(current, overlay):
        log.info("VXLAN device %s: settings differ from the plan, making it again", overlay.device)
        k.write("link", f"link {overlay.device}", requests.delete_link(current.index))
        current, writes = None, writes + 1
    if current is None:
        local = ipaddress.ip_address(overlay.local)
        request = requests.add_vxlan(overlay.device, vni=VXLAN_VNI, local=overlay.local, port=VXLAN_PORT,
                                     mac=overlay.mac, mtu=_mtu(k, overlay.local, local.version))
        k.write("link", f"VXLAN device {overlay.device}", request)
        current, writes = k.vxlan(overlay.device), writes + 1
        if current is None:
            raise LinkNotFound(f"link {overlay.device}: gone right after it was made")
    if not current.up:
        k.nl.set_up(current.index)
        writes += 1
    return current.index, writes


def _device_matches(dev: Vxlan, overlay: Overlay) -> bool:
    return (dev.vni == VXLAN_VNI and dev.local == overlay.local and dev.port == VXLAN_PORT
            and not dev.learning and dev.mac == overlay.mac)


def _mtu(k: RouteKernel, local: str, version: int) -> int | None:
    """The MTU of the link holding the local address, less VXLAN's overhead (None: the kernel's)."""
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    for address in k.nl.addresses(family=family):
        if address.address == local:
            link = k.nl.find_link(address.index)
            if link is not None and link.mtu > _OVERHEAD[version] + 68:
                return link.mtu - _OVERHEAD[version]
    return None


def remove_other_devices(k: RouteKernel, keep: Iterable[str]) -> int:
    """podnet's VXLAN devices that the plan no longer has (their routes go with them)."""
    writes = 0
    for version in (4, 6):
        name = device_name(version)
        if name in keep:
            continue
        try:
            dev = k.vxlan(name)
        except Exists:
            continue  # a link of another kind by that name is not podnet's
        if dev is not None:
            with contextlib.suppress(LinkNotFound):
                k.write("link", f"link {name}", requests.delete_link(dev.index))
                writes += 1
    return writes


def own_devices(k: RouteKernel) -> list[int]:
    """The indexes of podnet's VXLAN devices that exist (a link of another kind by their name is not one)."""
    found = []
    for version in (4, 6):
        with contextlib.suppress(Exists):
            if (dev := k.vxlan(device_name(version))) is not None:
                found.append(dev.index)
    return found


# ---- what is on a device ------------------------------------------------------------------------------


def sync_addresses(k: RouteKernel, index: int, overlay: Overlay) -> int:
    have = {a.cidr: a for a in k.nl.addresses(index) if not a.interface.ip.is_link_local}
    writes = 0
    for cidr in sorted(overlay.addresses - have.keys()):
        k.nl.add_address(index, cidr, nodad=True, exist_ok=True)
        writes += 1
    for cidr in sorted(have.keys() - overlay.addresses):
        k.nl.del_address(index, cidr, missing_ok=True)
        writes += 1
    return writes


def sync_neighbours(k: RouteKernel, index: int, overlay: Overlay) -> int:
    # Only permanent entries are podnet's: the kernel may hold others while it resolves.
    have = {n.dst: n.lladdr for n in k.nl.neighbours(index) if n.permanent}
    writes = 0
    for ip, mac in sorted(overlay.neighbours.items()):
        if have.get(ip) != mac:
            k.nl.set_neighbour(index, ip, mac)
            writes += 1
    for ip in sorted(have.keys() - overlay.neighbours.keys()):
        k.nl.del_neighbour(index, ip, missing_ok=True)
        writes += 1
    return writes


def sync_fdb(k: RouteKernel, index: int, overlay: Overlay) -> int:
    have: dict[str, set[str]] = {}
    for entry in k.fdb(index):
        if entry.dst is not None:
            have.setdefault(entry.mac, set()).add(entry.dst)
    writes = 0
    for mac, dst in sorted(overlay.fdb.items()):
        if have.get(mac) != {dst}:
            for old in sorted(have.get(mac, set()) - {dst}):  # replace rewrites one remote, not all
                _del_fdb(k, index, mac, old)
                writes += 1
            k.write("neighbour", f"forwarding entry {mac} -> {dst}", requests.fdb(index, mac, dst))
            writes += 1
    for mac in sorted(have.keys() - overlay.fdb.keys()):
        for old in sorted(have[mac]):
            _del_fdb(k, index, mac, old)
            writes += 1
    return writes


def _del_fdb(k: RouteKernel, index: int, mac: str, dst: str) -> None:
    with contextlib.suppress(NotFound):
        k.write("neighbour", f"forwarding entry {mac} -> {dst}", requests.fdb(index, mac, dst, delete=True))


# ---- routes ---------------------------------------------------------------------------------------------


def sync_routes(k: RouteKernel, current: Iterable[Route], wanted: dict[ipaddress.IPv4Network
                | ipaddress.IPv6Network, RouteSpec], devices: dict[str, int], conflict: Conflict) -> int:
    """podnet's routes (``current``: the main table's, of every protocol) as ``wanted``; a destination
    another program's route holds is reported to ``conflict`` and left alone."""
    ours: dict[str, list[Route]] = {}
    for r in current:
        if r.protocol == model.RTPROT_PODNET:
            ours.setdefault(r.destination, []).append(r)
    writes = 0
    for dst, spec in sorted(wanted.items(), key=lambda kv: str(kv[0])):
        have = ours.pop(str(dst), [])
        oif = devices.get(spec.device) if spec.device is not None else spec.oif
        if spec.device is not None and oif is None:
            continue  # its device failed this pass (said already): what is there stays until it works
        if len(have) == 1 and _route_matches(have[0], spec, oif):
            continue
        for extra in have[1:]:
            _del_route(k, extra)
            writes += 1
        mode = "replace" if have else "add"
        request = requests.owned_route(_family(dst.version), str(dst.network_address), dst.prefixlen,
                                       protocol=model.RTPROT_PODNET, gateway=spec.gateway, oif=oif,
                                       onlink=spec.onlink, mode=mode)
        try:
            k.write("route", f"route {dst} via {spec.gateway}", request)
            writes += 1
        except Exists:
            conflict(str(dst), "a route podnet does not own holds this destination")
    for routes in ours.values():
        for r in routes:
            _del_route(k, r)
            writes += 1
    return writes


def _route_matches(r: Route, spec: RouteSpec, oif: int | None) -> bool:
    return r.gateway == spec.gateway and r.oif == oif and r.onlink == spec.onlink and not r.multipath


def _del_route(k: RouteKernel, r: Route) -> None:
    request = requests.owned_route(r.family, r.dst or ("0.0.0.0" if r.family == socket.AF_INET else "::"),
                                   r.dst_len, protocol=model.RTPROT_PODNET, gateway=r.gateway, oif=r.oif,
                                   mode="delete")
    with contextlib.suppress(NotFound):
        k.write("route", f"route {r.destination}", request)


def _family(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


def underlay_routes(routes: Iterable[Route],
                    own_devices: Iterable[int]) -> list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network,
                                                              str | None, int | None]]:
    """The main table as (destination, gateway, oif) for the on-link decision, without podnet's own
    routes and devices; a route that forwards nowhere (blackhole, unreachable) counts as not on-link."""
    skip = set(own_devices)
    out = []
    for r in routes:
        if r.protocol == model.RTPROT_PODNET or (r.oif is not None and r.oif in skip):
            continue
        gateway = r.gateway if r.type == requests.RTN_UNICAST else "-"
        if r.multipath:
            gateway = next((h.gateway for h in r.multipath if h.gateway), gateway)
        out.append((ipaddress.ip_network(r.destination), gateway, r.oif))
    return out


__all__ = ["RouteKernel", "own_devices", "remove_other_devices", "sync_addresses", "sync_device", "sync_fdb",
           "sync_neighbours", "sync_routes", "underlay_routes"]
