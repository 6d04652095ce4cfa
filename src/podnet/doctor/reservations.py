"""host-local reservations (``<dataDir>/<network>/<ip>``) against live attachments.

* a reservation whose attachment is not live holds an address no pod uses: the range runs dry
  over time. ``--fix`` releases it through :class:`podnet.ipam.DiskStore`, under the network's
  IPAM lock (the lock every ADD and DEL takes), after checking again, under that lock, that the
  reservation is unchanged and its attachment still not live;
* an unreadable (empty) reservation was left by a writer that died (the reference host-local
  creates the file before writing it): it holds an address for nobody;
* a live attachment without a reservation has an address host-local may hand to the next pod.
  That is reported only: inventing a reservation could take an address another pod now holds.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from podnet.doctor.context import Context
from podnet.doctor.findings import Changed, Finding
from podnet.doctor.live import LiveAttachments, still_live
from podnet.doctor.scope import PodnetNetwork
from podnet.ipam.disk_store import DiskStore
from podnet.ipam.store import Reservation, select_owned


def _store(net: PodnetNetwork) -> DiskStore | None:
    if net.ipam_dir is None:
        return None
    store = DiskStore(os.path.dirname(net.ipam_dir), net.name, create=False)
    return store if store.exists() else None


def _live(ctx: Context, net: PodnetNetwork, r: Reservation) -> bool | None:
    """Whether the reservation's attachment is live; None when that cannot be told."""
    if not r.container_id:
        return False
    if r.ifname is not None:
        return ctx.live.is_live(net.name, r.container_id, r.ifname)
    if ctx.live.container_live(net.name, r.container_id):
        return True
    # A veth whose alias does not name its attachment might be this container's.
    return None if ctx.live.unidentified(net.name) else False


def _release(ctx: Context, store: DiskStore, net: PodnetNetwork, judged: Reservation) -> Callable[[], None]:
    def repair() -> None:
        with store.lock():
            now = next((r for r in store.reservations() if r.ip == judged.ip), None)
            if now is None:
                return  # released meanwhile
            if now != judged:
                raise Changed(f"{judged.ip} is now reserved for {now.owner()}; left alone")
            if _live_now(ctx, net, judged):
                raise Changed(f"the attachment holding {judged.ip} is live now; left alone")
            store.release(judged.ip)
    return repair


def _live_now(ctx: Context, net: PodnetNetwork, r: Reservation) -> bool:
    """Looked up again, under the IPAM lock, right before releasing (unsure counts as live)."""
    if not r.container_id:
        return False
    if r.ifname is not None:
        return still_live(ctx.netns, net.name, r.container_id, r.ifname)
    fresh = LiveAttachments.read_now(ctx.netns, [net.name])
    return fresh.container_live(net.name, r.container_id) or bool(fresh.unidentified(net.name))


def _orphan(ctx: Context, store: DiskStore, net: PodnetNetwork, r: Reservation) -> Finding:
    path = os.path.join(store.dir, str(r.ip))
    if not r.container_id:
        what = f"reservation of {r.ip} is unreadable (empty): a writer died before writing its owner"
        kind = "reservation-unreadable"
    else:
        what = f"{r.ip} is reserved for {r.owner()}, whose pod is gone (no host veth)"
        kind = "reservation-orphan"
    return Finding(kind, "problem", path, what,
                   "--fix releases the address under the network's IPAM lock", network=net.name,
                   attachment=(r.container_id, r.ifname) if r.container_id and r.ifname else None,
                   repair=_release(ctx, store, net, r))


def _missing(net: PodnetNetwork, container_id: str, ifname: str, link: str, where: str) -> Finding:
    return Finding(
        "reservation-missing", "problem", where,
        f"live attachment {net.name}/{container_id}/{ifname} (host veth {link}) has no address reservation: "
        "host-local may hand its address to another pod",
        "not fixed by doctor (a reservation cannot be invented safely): DEL and ADD that pod",
        network=net.name, attachment=(container_id, ifname))


def check_network(ctx: Context, net: PodnetNetwork) -> list[Finding]:
    store = _store(net)
    if store is None:
        return []
    with store.lock():
        held = store.reservations()
    out = []
    for r in held:
        path = os.path.join(store.dir, str(r.ip))
        if _live(ctx, net, r) is False and not ctx.fresh(path):
            out.append(_orphan(ctx, store, net, r))
    for veth in ctx.live.veths(net.name):
        if veth.attachment is not None and not select_owned(held, *veth.attachment):
            out.append(_missing(net, *veth.attachment, veth.link.name, store.dir))
    return out


def check(ctx: Context) -> list[Finding]:
    out: list[Finding] = []
    for net in ctx.scope.judged:
        out += check_network(ctx, net)
    return out
