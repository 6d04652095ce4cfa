"""Deleting a link without waiting out the kernel's memory reclamation.

``RTM_DELLINK`` returns after ~15-25 ms on this kind of machine, and almost none of that is
work on the link itself. For each deleted device (a veth and its peer go in one batch) the
kernel, in order:

1. closes it (down: its routes are flushed);
2. takes it out of the namespace's device list (it no longer shows in any dump, its name is
   free) and waits for an expedited RCU grace period;
3. tells every subsystem it is going (``NETDEV_UNREGISTER``: addresses, neighbours, bridge
   port, ...) and then multicasts ``RTM_DELLINK`` to the namespace's ``RTMGRP_LINK`` listeners;
4. releases the rtnl lock and waits for all RCU callbacks (``rcu_barrier``) and for the last
   references before freeing the device: most of the time, and nothing anyone can observe.

:func:`unregister` has a helper thread make the request and returns as soon as the
``RTM_DELLINK`` notifications of the link and of its peer (in the peer's own namespace when
that is known) have arrived, i.e. after step 3: the pair is closed, gone from both namespaces,
without addresses or routes. The helper thread sits out step 4 on its own. If a notification
cannot be seen (no peer namespace given, notifications lost to a full socket buffer) it waits
for the helper's request to return, as a plain delete would.

The helpers are a few long-lived threads (:data:`HELPERS`, started as needed), not one per
delete: under a task limit (systemd's TasksMax) a thread per DEL is how a DEL fails. When no
helper is free and none can be started, the caller's own thread makes the request and waits
it out: slower, never a failure.
"""

from __future__ import annotations

import contextlib
import errno
import queue
import select
import socket
import threading

from podnet.kernel import model
from podnet.kernel.errors import KernelError
from podnet.kernel.netlink import Netlink
from podnet.kernel.netns import NetnsHandle, NetnsRef, socket_in_netns
from podnet.kernel.wire import messages

RTMGRP_LINK = 1
HELPERS = 16  # threads that sit out the kernel's reclamation (a burst of DELs keeps many busy at once)
_POLL_MS = 5  # how often the helper is checked while waiting for notifications


class _Departures:
    """RTM_DELLINK notifications in one namespace, for the link indices still expected there."""

    def __init__(self, netns: NetnsRef, indices: set[int]) -> None:
        self.sock = socket_in_netns(netns, socket.AF_NETLINK, socket.SOCK_RAW, 0)
        try:
            self.sock.bind((0, RTMGRP_LINK))
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        self.waiting = set(indices)
        self.reliable = True  # False once notifications were dropped (ENOBUFS)

    def read(self) -> None:
        while self.waiting and self.reliable:
            try:
                buf = self.sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.reliable = False
                return
            for hdr in messages(buf):
                if hdr.type == model.RTM_DELLINK:
                    self.waiting.discard(model.IFINFOMSG.unpack_from(buf, hdr.start)[2])


class _Job:
    """One delete request, made on its own socket; ``done`` once the kernel has finished it."""

    def __init__(self, netns: NetnsHandle, index: int) -> None:
        self.netns, self.index = netns, index
        self.error: KernelError | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            with Netlink(self.netns) as own:
                own.delete_link(self.index, missing_ok=True)
        except KernelError as exc:
            self.error = exc
        finally:
            self.netns.close()
            self.done.set()


class _Helpers:
    """Up to HELPERS daemon threads taking jobs from one queue (daemon threads: a plugin process
    exits without waiting out the kernel's reclamation)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0

    def submit(self, job: _Job) -> bool:
        """Queue ``job``; False when no helper is free and none can be started (run it yourself)."""
        with self._lock:
            if self._idle == 0:
                if self._threads >= HELPERS:
                    return False
                try:
                    threading.Thread(target=self._serve, name="podnet-unregister", daemon=True).start()
                except RuntimeError:  # "can't start new thread": a task limit
                    return False
                self._threads += 1
                self._idle += 1
            self._idle -= 1
        self._jobs.put(job)
        return True

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            job.run()
            with self._lock:
                self._idle += 1


_helpers = _Helpers()


def unregister(nl: Netlink, link: model.Link, peer_netns: NetnsRef | None = None) -> None:
    """Delete ``link`` (seen through ``nl``; a veth takes its peer along) and return once both
    are out of their namespaces. ``peer_netns``: where a veth's peer lives, when not in ``nl``'s
    namespace (without it, the whole deletion is waited for). A link already gone is fine."""
    with contextlib.ExitStack() as stack:
        watches = [_Departures(nl.netns, {link.index} | _same_netns_peer(link))]
        stack.callback(watches[0].sock.close)
        peer = _other_netns_peer(link, peer_netns)
        if peer is not None:
            watches.append(_Departures(peer[0], {peer[1]}))
            stack.callback(watches[-1].sock.close)
        job = _Job(nl.netns.dup(), link.index)
        if not _helpers.submit(job):
            job.run()
        _wait(job, watches, whole=link.link_netnsid is not None and peer is None)
        if job.done.is_set() and job.error is not None:
            raise job.error


def _same_netns_peer(link: model.Link) -> set[int]:
    same = link.kind == "veth" and link.peer_index and link.link_netnsid is None
    return {link.peer_index} if same and link.peer_index else set()


def _other_netns_peer(link: model.Link, peer_netns: NetnsRef | None) -> tuple[NetnsRef, int] | None:
    """(namespace, index) of a veth's peer, when ``peer_netns`` really holds it: its link at that
    index points back at ``link`` (otherwise a notification there would prove nothing)."""
    if link.kind != "veth" or not link.peer_index or link.link_netnsid is None or not peer_netns:
        return None
    with Netlink(peer_netns) as there:
        peer = there.find_link(link.peer_index)
    if peer is None or peer.peer_index != link.index:
        return None
    return peer_netns, link.peer_index


def _wait(helper: _Job, watches: list[_Departures], whole: bool) -> None:
    """Until every expected notification came, or the helper finished (``whole``: only that)."""
    poller = select.poll()
    for w in watches:
        poller.register(w.sock, select.POLLIN)
    while not helper.done.is_set():
        if not whole and all(not w.waiting for w in watches):
            return
        if any(not w.reliable for w in watches):
            whole = True
        poller.poll(_POLL_MS)
        for w in watches:
            w.read()


def open_netns(path: str) -> NetnsHandle | None:
    """The namespace at ``path`` if it can still be opened (None when it is gone or not given).
    A handle (the daemon's caller sent its namespace as a descriptor) is duplicated, never looked
    up again by path: the path is the caller's and may not exist in this mount namespace."""
    if not path:
        return None
    if isinstance(path, NetnsHandle):
        return path.dup()
    try:
        return NetnsHandle.open(path)
    except KernelError:
        return None


__all__ = ["open_netns", "unregister"]
