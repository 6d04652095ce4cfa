"""Conntrack entries of one namespace, listed and deleted over ctnetlink with podnet's own codec.

What the service proxy needs, as kube-proxy does it: when a UDP endpoint goes away, the entries
whose reply comes from it (reply source = the endpoint) are deleted, so the client's next packet
is a new entry and goes through DNAT again to a live endpoint; when a UDP service that had no
endpoints gets some, the entries to its address and port (original destination) are deleted, since
they were made before any DNAT rule could apply. TCP entries are never deleted by a sync.

A conntrack table is live: traffic adds and removes entries all the time, so no dump is a
snapshot of one instant; an entry made or deleted during a dump may or may not be in it. What a
dump here promises is that every entry present for the whole dump is reported exactly once. The
kernel writes a big dump in parts and resumes each part after the entry it could not fit (it
holds on to that entry, not to a position, so entries added or removed elsewhere do not shift
it). If that entry was deleted in between, the kernel walks its hash bucket again from the
start and repeats the entries before it; it never flags a conntrack dump with NLM_F_DUMP_INTR.
So every dump goes through :func:`podnet.kernel.dump.consistent_dump` (the flag is still
checked, for kernels that set it), and a reply that names an entry twice is thrown away and the
dump repeated, a few times, then refused with :class:`DumpInterrupted`. (Not covered: a resize of
the kernel's hash table during a dump, which only an administrator's write of
``nf_conntrack_buckets`` in the initial namespace does; it can make a dump miss entries.)
``tests/kernel/test_conntrack.py`` dumps while entries are made and deleted by the thousand and
checks that every entry present throughout comes back exactly once. Notifications and comparing
two attempts (what rtnetlink dumps use) would refuse nearly every big dump of a busy table while
adding nothing: entries made before a listener joined announce no deletion.

A filter the kernel applies while dumping (CTA_FILTER, Linux 5.10+) keeps the proxy's questions
cheap: the reply holds only the matching entries (the kernel still walks its whole table).

Deletes name each entry by its reply tuple and its id, so both its tuples must still match (see
``conntrack_wire.delete_request``): when the listed entry went and the client's next datagram
made a new one, DNATed to a live endpoint, the delete misses it (ENOENT) instead of cutting the
client off again. ENOENT means the entry listed is gone already, which is what was wanted.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

from podnet.kernel import conntrack_wire as ct
from podnet.kernel.conntrack_wire import Flow, FlowFilter
from podnet.kernel.dump import (
    DEFAULT_RETRY,
    DumpRequest,
    RetryPolicy,
    RouteSocket,
    Snapshot,
    consistent_dump,
    send_request,
)
from podnet.kernel.errors import DumpInterrupted, InvalidArgument, NotFound, NotSupported
from podnet.kernel.netns import NetnsHandle, NetnsRef, socket_in_netns
from podnet.kernel.wire import NLM_F_ACK, NLM_F_REQUEST

# Whole dumps repeated when a reply that passed the other checks still names an entry twice.
_DUPLICATE_RETRIES = 3


class ConntrackSocket(RouteSocket):
    """A NETLINK_NETFILTER socket, opened inside the namespace and bound to it for its whole life
    (the dump and request machinery is RouteSocket's; only the protocol differs)."""

    @classmethod
    def open(cls, netns: NetnsRef | None = None, timeout: float = 10.0) -> ConntrackSocket:
        return cls(socket_in_netns(netns, socket.AF_NETLINK, socket.SOCK_RAW, ct.NETLINK_NETFILTER), timeout)


class Conntrack:
    """The conntrack table of one namespace (None: the caller's, at creation time)."""

    def __init__(self, netns: NetnsRef | None = None, *, retry: RetryPolicy = DEFAULT_RETRY,
                 timeout: float = 10.0) -> None:
        if isinstance(netns, NetnsHandle):
            self.netns = netns.dup()
        elif netns is None:
            self.netns = NetnsHandle.current()
        else:
            self.netns = NetnsHandle.open(netns)
        self.retry = retry
        # False once the kernel refused CTA_FILTER (before Linux 5.10): filter in Python only.
        self.kernel_filter = True
        self.scanned = 0  # entries the kernel sent in the last dump, before filtering here
        try:
            self._sock = ConntrackSocket.open(self.netns, timeout)
        except BaseException:
            self.netns.close()
            raise

    def close(self) -> None:
        self._sock.close()
        self.netns.close()

    def __enter__(self) -> Conntrack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def list_flows(self, flt: FlowFilter | None = None, *, best_effort: bool = False,
                   **filters: Any) -> Snapshot[Flow]:
        """Entries matching the filter (a :class:`FlowFilter`, or its fields as keywords, see
        :meth:`FlowFilter.of`). Raises :class:`DumpInterrupted` when no attempt passed the checks
        (unless ``best_effort``: the last attempt, ``consistent=False``)."""
        flt = _filter(flt, filters)
        snap = self._dump(flt, best_effort)
        return Snapshot([f for f in snap if flt.matches(f)], snap.attempts, snap.consistent)

    def delete(self, flow: Flow) -> bool:
        """Delete this entry: True if it was deleted, False if it was gone already."""
        # Errors map as for any object that is not a link or a namespace (ENOENT: NotFound);
        # errors.Subject has no conntrack member, "dump" maps the same way.
        try:
            send_request(self._sock, ct.msg_type(ct.IPCTNL_MSG_CT_DELETE), NLM_F_REQUEST | NLM_F_ACK,
                         ct.delete_request(flow), "dump", f"conntrack entry {_show(flow)}")
        except NotFound:
            return False
        return True

    def delete_flows(self, flt: FlowFilter | None = None, **filters: Any) -> int:
        """Delete every entry matching the filter; returns how many this call deleted.

        An empty filter would delete the whole table; that is refused (ask for it by naming a
        family or a protocol)."""
        flt = _filter(flt, filters)
        if flt == FlowFilter():
            raise InvalidArgument("conntrack delete: an empty filter matches every entry",
                                  "name at least a family or a protocol")
        return self.delete_all(self.list_flows(flt))

    def delete_all(self, flows: Iterable[Flow]) -> int:
        return sum(1 for flow in flows if self.delete(flow))

    def _dump(self, flt: FlowFilter, best_effort: bool) -> Snapshot[Flow]:
        for _ in range(_DUPLICATE_RETRIES):
            try:
                snap = self._dump_once(flt, best_effort)
            except (NotSupported, InvalidArgument):
                if not self.kernel_filter or ct.dump_request(flt) == ct.dump_request(flt, False):
                    raise
                self.kernel_filter = False  # a kernel without CTA_FILTER: filter here only
                snap = self._dump_once(flt, best_effort)
            self.scanned = len(snap)
            if len({flow.key() for flow in snap}) == len(snap) or not snap.consistent:
                return snap
        if best_effort:
            return Snapshot(list(snap), snap.attempts, False)
        raise DumpInterrupted("dump of conntrack entries: an entry came twice (the table changed)",
                              f"on {_DUPLICATE_RETRIES} dumps that passed the other checks",
                              attempts=_DUPLICATE_RETRIES)

    def _dump_once(self, flt: FlowFilter, best_effort: bool) -> Snapshot[Flow]:
        request = DumpRequest("conntrack entries", ct.msg_type(ct.IPCTNL_MSG_CT_GET),
                              ct.dump_request(flt, self.kernel_filter), ct.parse_flow)
        return consistent_dump(self._sock, request, retry=self.retry, best_effort=best_effort)


def _filter(flt: FlowFilter | None, filters: dict[str, Any]) -> FlowFilter:
    if flt is not None and filters:
        raise InvalidArgument("conntrack filter: give a FlowFilter or keywords, not both",
                              str(sorted(filters)))
    if flt is not None:
        return flt
    try:
        return FlowFilter.of(**filters)
    except TypeError as exc:  # an unknown keyword
        raise InvalidArgument("conntrack filter: unknown field", str(exc)) from None


def _show(flow: Flow) -> str:
    return f"proto {flow.protocol} {flow.orig_src}:{flow.orig_sport} -> {flow.orig_dst}:{flow.orig_dport}"


def list_flows(netns: NetnsRef | None = None, **filters: Any) -> list[Flow]:
    """One-shot :meth:`Conntrack.list_flows` in a namespace."""
    with Conntrack(netns) as table:
        return list(table.list_flows(**filters))


def delete_flows(netns: NetnsRef | None = None, **filters: Any) -> int:
    """One-shot :meth:`Conntrack.delete_flows` in a namespace."""
    with Conntrack(netns) as table:
        return table.delete_flows(**filters)


__all__ = ["Conntrack", "ConntrackSocket", "Flow", "FlowFilter", "delete_flows", "list_flows"]
