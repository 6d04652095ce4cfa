"""The seed failure of udev rewriting a host veth's MAC, and what is left of it.

* a podnet host veth whose MAC the kernel chose at random (``addr_assign_type`` 1) is what
  systemd-udevd's ``MACAddressPolicy=persistent`` rewrites; podnet's ADD sets MACs explicitly
  (type 3), so such a veth was made by something older or by hand, and is at risk;
* a routed pod pins its gateway (169.254.1.1, fe80::1) to the host veth's MAC in a PERMANENT
  neighbour entry; when the host veth's MAC changed afterwards, the pod's gateway entry points at
  a MAC that no longer exists and the pod is cut off.

Both are reported, never fixed: the pieces belong to a live pod, and the repair is a DEL and an
ADD of that pod (which sets and pins one MAC again).
"""

from __future__ import annotations

import socket

from podnet.doctor.context import Context
from podnet.doctor.findings import Finding
from podnet.doctor.live import HostVeth
from podnet.kernel.errors import KernelError
from podnet.kernel.model import RT_SCOPE_UNIVERSE, Link
from podnet.kernel.netlink import Netlink
from podnet.kernel.netns import NetnsHandle
from podnet.kernel.sysfs import NET_ADDR_RANDOM, NetSysfs
from podnet.plugins.routed import GATEWAY
from podnet.runtime.cache import ResultCache

_REDO = "not fixed by doctor (the pod is live): DEL and ADD that pod; podnet's ADD sets the MAC explicitly"
_FAMILY: dict[int, int] = {socket.AF_INET: 4, socket.AF_INET6: 6}


def _who(veth: HostVeth) -> str:
    if veth.attachment is None:
        return f"an attachment of network {veth.network}"
    return f"{veth.network}/{veth.attachment[0]}/{veth.attachment[1]}"


def random_macs(ctx: Context, sysfs: NetSysfs) -> list[Finding]:
    out = []
    for net in ctx.scope.judged:
        for veth in ctx.live.veths(net.name):
            if sysfs.addr_assign_type(veth.link.name) != NET_ADDR_RANDOM:
                continue
            out.append(Finding(
                "veth-random-mac", "problem", veth.link.name,
                f"host veth {veth.link.name} of {_who(veth)} has a MAC the kernel chose at random "
                f"({veth.link.mac}, addr_assign_type 1): udev's MACAddressPolicy=persistent rewrites "
                "such MACs",
                _REDO + " (addr_assign_type 3)", network=net.name, attachment=veth.attachment))
    return out


def _sandbox(ctx: Context, veth: HostVeth) -> str | None:
    """The pod's namespace path as its cached ADD result records it (the runtime's CNI_NETNS).

    Only that path is trusted: link indices are per namespace, so some other namespace's link at
    the host veth's peer index pointing back at the same index number proves nothing.
    """
    if veth.attachment is None:
        return None
    try:
        read = ResultCache(ctx.cache_dir).read(veth.network, *veth.attachment)
    except ValueError:
        return None
    for iface in (read.prev_result or {}).get("interfaces", []):
        if isinstance(iface, dict) and iface.get("name") == veth.attachment[1] and iface.get("sandbox"):
            return str(iface["sandbox"])
    return None


def _pod_end(ctx: Context, veth: HostVeth) -> tuple[Netlink, Link] | None:
    """A session in the pod's namespace and the pod end of the pair: the attachment's ifname
    there, a veth at the host veth's peer index that names the host veth's index as its peer."""
    path, peer = _sandbox(ctx, veth), veth.link.peer_index
    if path is None or peer is None or veth.link.link_netnsid is None or veth.attachment is None:
        return None
    try:
        with NetnsHandle.open(path) as handle:
            if handle.identity() == ctx.nl.netns.identity():
                return None
            pod = Netlink(handle)
    except KernelError:
        return None
    link = pod.find_link(peer)
    if link is not None and link.kind == "veth" and link.peer_index == veth.link.index \
            and link.name == veth.attachment[1]:
        return pod, link
    pod.close()
    return None


def _gateway_finding(veth: HostVeth, pod_link: Link, gateway: str, pinned: str | None) -> Finding:
    host_mac = (veth.link.mac or "").lower()
    if pinned is None:
        what = (f"the pod of {_who(veth)} has no permanent neighbour entry for its gateway {gateway} on "
                f"{pod_link.name} (host veth {veth.link.name} has MAC {host_mac})")
        kind = "gateway-neighbour-missing"
    else:
        what = (f"MAC drift: host veth {veth.link.name} of {_who(veth)} has MAC {host_mac} but the pod's "
                f"permanent gateway entry {gateway} on {pod_link.name} points to {pinned}: "
                "the pod is cut off")
        kind = "gateway-mac-drift"
    return Finding(kind, "problem", veth.link.name, what, _REDO, network=veth.network,
                   attachment=veth.attachment)


def gateway_drift(ctx: Context) -> tuple[list[Finding], list[Finding]]:
    """(findings, notes): the routed pods' pinned gateway entries against their host veth's MAC."""
    out, notes = [], []
    for net in ctx.scope.judged:
        if not net.routed:
            continue
        for veth in ctx.live.veths(net.name):
            found = _pod_end(ctx, veth)
            if found is None:
                notes.append(Finding(
                    "pod-unreachable", "note", veth.link.name,
                    f"the pod namespace of {_who(veth)} is not known from a cached result: its gateway "
                    "entry was not checked", "none needed", network=net.name,
                    attachment=veth.attachment))
                continue
            pod, link = found
            with pod:
                families = {_FAMILY[a.family] for a in pod.addresses(link) if a.scope == RT_SCOPE_UNIVERSE}
                entries = {n.dst: n for n in pod.neighbours(link) if n.permanent}
            for family in sorted(families):
                gateway = str(GATEWAY[family])
                entry = entries.get(gateway)
                pinned = (entry.lladdr or "").lower() if entry is not None else None
                if pinned != (veth.link.mac or "").lower():
                    out.append(_gateway_finding(veth, link, gateway, pinned))
    return out, notes


def check(ctx: Context) -> list[Finding]:
    out: list[Finding] = []
    try:
        with NetSysfs(ctx.netns) as sysfs:
            out += random_macs(ctx, sysfs)
    except OSError as exc:
        out.append(Finding("assign-type-unreadable", "note", "sysfs",
                           f"cannot read the host veths' addr_assign_type: {exc}",
                           "none; random MACs were not checked"))
    found, notes = gateway_drift(ctx)
    return out + found + notes
