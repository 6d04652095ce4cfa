"""Consistent netlink dumps. Every dump in podnet goes through :func:`consistent_dump`.

A dump bigger than one receive buffer is produced in parts: the kernel fills a buffer,
remembers where its walk stopped, and resumes there when the next buffer is read. Most
tables resume by *position* (the n-th neighbour of hash bucket h, the n-th rule, the n-th
IPv6 route after a tree change), so an object added or removed before that position
between two parts makes the dump repeat or miss an object that never changed. Within one
part the walk is not resumed and sees every object that stays in the table exactly once.

Some dumps are marked by the kernel when that happens: it sets NLM_F_DUMP_INTR on the
messages it sends after the change (including, when the change lands in the last part,
the final NLMSG_DONE). pyroute2 0.9.x ignores the flag (and never hands the NLMSG_DONE
message to its caller, so a flag set only there cannot even be checked by its users).
Which dumps carry the flag is the kernel's choice, per table and even per request: on
the kernels podnet runs on, link dumps and unfiltered address dumps do; address dumps
filtered to one link, route, neighbour and rule dumps never do (``tests/kernel/
test_interrupt.py`` checks this against the running kernel). Nor is the flag airtight
where it exists: dumps run under RCU, and a change racing with the making of a part can
shift that part's starting position without the part being flagged. So every attempt is
checked three ways, as far as its :class:`DumpRequest` asks:

* no header of any message, NLMSG_DONE included, carries NLM_F_DUMP_INTR;
* a reply in several parts is accepted only if no change notification of its table came
  while it was made (``watch``: the rtnetlink multicast groups, heard on a second socket
  that joins them for the length of the dump); a reply in one part was not resumed, so it
  cannot be torn;
* ``compare``: a reply in several parts must also have the same objects, in the same
  order, as the attempt before. Notifications cover every change made in the namespace;
  the neighbour hash table is shared by all namespaces, and a change in another one
  shifts a dump's position here without a word.

An attempt that fails its check is thrown away and the whole dump is repeated, within a
bounded budget with short jittered back-off. The result is a :class:`Snapshot` that
passed, or :class:`DumpInterrupted` carrying the number of attempts. Returning the last
(unchecked) snapshot instead is an explicit opt-in (``best_effort=True``). The cheap way
to stay consistent under churn is a small dump: ask the kernel to filter to one link or
table (strict checking, see :class:`RouteSocket`), so the answer fits in one part.

Why a raw socket and a struct parser rather than a netlink library such as pyroute2:

* the checks have to see raw headers (NLMSG_DONE included, which pyroute2 swallows),
  how the reply was split into receive buffers, and the notifications in between;
* speed: pyroute2 decodes every attribute of every message into dicts; decoding only
  what podnet uses, with ``struct`` on the received bytes, keeps a dump within a small
  factor of iproute2 (``bench/bench_netlink_dump.py`` measures it);
* the socket is opened in the target namespace by a thread (see ``netns``) instead of
  a forked helper.

Writes use the same socket (:func:`send_request`, requests encoded by ``requests.py``),
without the per-request event-loop machinery a library brings.
"""

from __future__ import annotations

import contextlib
import errno
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Generic, TypeVar, overload

from podnet.kernel.errors import DumpInterrupted, KernelError, Subject, from_errno, from_exception
from podnet.kernel.netns import NetnsRef, socket_in_netns
from podnet.kernel.wire import (
    NETLINK_CAP_ACK,
    NETLINK_EXT_ACK,
    NETLINK_GET_STRICT_CHK,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_NOOP,
    SOL_NETLINK,
    error_of,
    message,
    messages,
)

T = TypeVar("T")
NETLINK_ROUTE = 0
_RCVBUF = 1 << 20
_RECV_SIZE = 1 << 17  # > the kernel's 32 KiB dump chunk, so one recv is one chunk
# Errors that mean "this attempt saw a moving table" rather than "the request is wrong":
# EINTR from dumps that abort instead of flagging, EBUSY if an earlier dump still runs.
_RETRYABLE = frozenset({errno.EINTR, errno.EBUSY, errno.EAGAIN})
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_DROP_MEMBERSHIP = 2


@dataclass
class DumpStats:
    """Process-wide dump counters, for a daemon to export as metrics."""

    dumps: int = 0  # dump calls that returned a consistent snapshot
    attempts: int = 0  # dump requests sent to the kernel
    interrupted: int = 0  # attempts that came back flagged, EINTR/EBUSY, or disagreeing with the last
    retries: int = 0  # attempts beyond the fewest that could have succeeded
    gave_up: int = 0  # dump calls whose every attempt was interrupted
    inconsistent_returned: int = 0  # of those, returned anyway because best_effort was asked

    def as_dict(self) -> dict[str, int]:
        with _STATS_LOCK:
            return asdict(self)

    def reset(self) -> None:
        with _STATS_LOCK:
            for name in asdict(self):
                setattr(self, name, 0)

    def add(self, **counts: int) -> None:
        with _STATS_LOCK:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)


_STATS_LOCK = threading.Lock()
STATS = DumpStats()


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try for a consistent dump: ``attempts`` in total, sleeping
    ``backoff`` doubled per retry (capped at ``max_backoff``, jittered down to half)
    so a retry does not fall into step with a periodic writer."""

    attempts: int = 8
    backoff: float = 0.001
    max_backoff: float = 0.025

    def delay(self, attempt: int) -> float:
        base: float = min(self.max_backoff, self.backoff * 2.0 ** (attempt - 1))
        return base * random.uniform(0.5, 1.0)


DEFAULT_RETRY = RetryPolicy()


class Snapshot(Sequence[T]):
    """The objects of one dump; ``consistent`` is False only for a best-effort result."""

    __slots__ = ("_items", "attempts", "consistent")

    def __init__(self, items: list[T], attempts: int, consistent: bool) -> None:
        self._items = items
        self.attempts = attempts
        self.consistent = consistent

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> list[T]: ...
    def __getitem__(self, index: int | slice) -> T | list[T]:
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    def __repr__(self) -> str:
        state = "consistent" if self.consistent else "INCONSISTENT"
        return f"<Snapshot {len(self._items)} items, {state}, {self.attempts} attempt(s)>"


@dataclass(frozen=True)
class DumpRequest(Generic[T]):
    """What to dump: message type, fixed request body, the decoder for replies, and how a
    reply in several parts is checked (see the module docstring).

    ``flags_interrupts``: the kernel sets NLM_F_DUMP_INTR on this dump (the flag is checked on
    every dump; this says whether it can be the only check). ``watch``: the RTNLGRP_* groups
    that announce changes to the table. ``compare``: also require agreement with the attempt
    before.
    """

    what: str  # "links", "addresses", ... for messages
    msg_type: int
    body: bytes
    parse: Callable[[bytes, int, int], T | None]
    flags_interrupts: bool = False
    watch: tuple[int, ...] = ()
    compare: bool = False


class RouteSocket:
    """A raw NETLINK_ROUTE socket owned by podnet, used for dumps and single gets.

    One request at a time (a lock serialises callers); bound to the namespace it was
    opened in for its whole life.
    """

    def __init__(self, sock: socket.socket, timeout: float = 10.0) -> None:
        self._sock = sock
        self._seq = int(time.time()) & 0x7FFFFFFF
        self._pending: int | None = None  # seq of a request whose answer was not read to the end
        self._open_watcher: Callable[[], socket.socket] | None = None
        self._watcher: socket.socket | None = None
        self.lock = threading.Lock()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        # CAP_ACK: errors do not echo our request back; EXT_ACK: the kernel says why.
        # Strict checking makes the kernel honour the ifindex filters in dump requests.
        # All three are optional (kernels before 4.20 lack strict checking): callers
        # filter again, and errors still carry their errno.
        for option in (NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK):
            with contextlib.suppress(OSError):
                sock.setsockopt(SOL_NETLINK, option, 1)
        sock.bind((0, 0))
        sock.settimeout(timeout)

    @classmethod
    def open(cls, netns: NetnsRef | None = None, timeout: float = 10.0) -> RouteSocket:
        def open_socket() -> socket.socket:
            return socket_in_netns(netns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)

        route = cls(open_socket(), timeout)
        route._open_watcher = open_socket  # the namespace stays open as long as its session
        return route

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.close()
        self._sock.close()

    def fileno(self) -> int:
        return self._sock.fileno()

    def send(self, msg_type: int, flags: int, body: bytes) -> int:
        """Send one request; returns its sequence number."""
        if self._pending is not None:
            self._drain(self._pending)
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        self._sock.send(message(msg_type, flags, self._seq, body))
        self._pending = self._seq
        return self._seq

    def recv(self) -> bytes:
        try:
            data, _anc, flags, _addr = self._sock.recvmsg(_RECV_SIZE)
        except TimeoutError:
            waited = self._sock.gettimeout()
            raise KernelError("netlink: no answer from the kernel", f"after {waited}s") from None
        except OSError as exc:
            raise from_exception(exc, "dump", "netlink receive") from None
        if flags & socket.MSG_TRUNC:
            raise KernelError("netlink: message larger than the receive buffer", str(len(data)))
        return data

    @contextlib.contextmanager
    def watching(self, groups: Sequence[int]) -> Iterator[Callable[[], bool]]:
        """For the duration, hear the change notifications of ``groups`` (RTNLGRP_*); yields a
        function that says whether any came (or were lost: ENOBUFS) so far.

        A second socket hears them, so that a flood of notifications never fills the dump
        socket: the kernel makes the next part of a dump only while its receive queue has room,
        and one stalled behind notifications that stop coming would never finish. A RouteSocket
        made from a bare socket (no namespace to open a second one in) hears nothing.
        """
        if not groups or self._open_watcher is None:
            yield lambda: False
            return
        if self._watcher is None:
            self._watcher = self._open_watcher()
            # Bound to get a port id: the kernel's broadcasts skip sockets whose id (0 while
            # unbound) equals the excluded sender's, which is 0 for most notifications.
            self._watcher.bind((0, 0))
            self._watcher.setblocking(False)
        watcher = self._watcher
        _pending_notifications(watcher)  # from an earlier dump: older than this one
        for group in groups:
            watcher.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
        try:
            yield lambda: _pending_notifications(watcher)
        finally:
            for group in groups:
                watcher.setsockopt(SOL_NETLINK, NETLINK_DROP_MEMBERSHIP, group)

    def finished(self, seq: int) -> None:
        """The answer to ``seq`` has been read to its end."""
        if self._pending == seq:
            self._pending = None

    def _drain(self, seq: int) -> None:
        # An earlier caller gave up half-way (exception, timeout): read its answer to
        # the end so the kernel ends that dump and the next request is not refused.
        self._pending = None
        while True:
            for hdr in messages(self.recv()):
                if hdr.seq == seq and hdr.type in (NLMSG_DONE, NLMSG_ERROR):
                    return


def _pending_notifications(sock: socket.socket) -> bool:
    """Read (and drop) what a non-blocking watcher socket holds: True if there was anything."""
    heard = False
    while True:
        try:
            sock.recv(_RECV_SIZE)
        except BlockingIOError:
            return heard
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise from_exception(exc, "dump", "netlink notifications") from None
        heard = True


def consistent_dump(
    sock: RouteSocket,
    request: DumpRequest[T],
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
    best_effort: bool = False,
    on_interrupt: Callable[[int], None] | None = None,
) -> Snapshot[T]:
    """Dump until an attempt passes the check its kind allows (see the module docstring).

    ``on_interrupt(attempt)`` is called after each failed attempt (tests use it to stop the
    writer). Raises :class:`DumpInterrupted` when the budget is spent, unless ``best_effort``,
    which returns the last snapshot with ``consistent=False``. A dump checked by comparison
    gets at least two attempts whatever the policy says.
    """
    budget = max(2, retry.attempts) if request.compare else retry.attempts
    with sock.lock:
        items: list[T] = []
        previous: list[T] | None = None  # the last whole attempt, for a dump checked by comparison
        for attempt in range(1, budget + 1):
            last = attempt == budget
            with sock.watching(request.watch) as changes:
                items, parts, interrupted = _dump_once(sock, request, best_effort and last)
                changed = changes()
            STATS.add(attempts=1)
            alone = parts <= 1 or not request.compare  # needs no attempt to compare with
            if not interrupted and (parts <= 1 or (not changed and (alone or items == previous))):
                STATS.add(dumps=1, retries=attempt - (1 if alone else 2))
                return Snapshot(items, attempt, True)
            failed = interrupted or changed or previous is not None
            # The baseline for the next comparison: a whole reply, even one made while the table
            # changed (if the next one agrees without a change, that one is right, and so is it).
            previous = None if interrupted else items
            if not failed:
                continue  # a first reply in several parts: compare it with a second, at once
            STATS.add(interrupted=1)
            if on_interrupt is not None:
                on_interrupt(attempt)
            if not last:
                time.sleep(retry.delay(attempt))
        STATS.add(gave_up=1, retries=budget - 1)
        if best_effort:
            STATS.add(inconsistent_returned=1)
            return Snapshot(items, budget, False)
        check = "NLM_F_DUMP_INTR, changes announced or disagreement"
        raise DumpInterrupted(
            f"dump of {request.what}: interrupted by concurrent changes",
            f"{check} on all {budget} attempts",
            attempts=budget,
        )


def _dump_once(sock: RouteSocket, request: DumpRequest[T],
               keep_interrupted: bool) -> tuple[list[T], int, bool]:
    """One dump attempt, read to its NLMSG_DONE: (objects, receive buffers that held objects,
    interrupted)."""
    seq = sock.send(request.msg_type, NLM_F_REQUEST | NLM_F_DUMP, request.body)
    parse = request.parse
    items: list[T] = []
    parts = 0
    interrupted = False
    while True:
        buf = sock.recv()
        counted = False
        for hdr in messages(buf):
            if hdr.seq != seq:
                continue
            if hdr.flags & NLM_F_DUMP_INTR:
                interrupted = True
            mtype = hdr.type
            if mtype in (NLMSG_DONE, NLMSG_ERROR):
                sock.finished(seq)
                err, reason = error_of(buf, hdr)
                if err in _RETRYABLE:
                    return items, parts, True
                if err:
                    raise from_errno(err, "dump", f"dump of {request.what}", reason)
                if mtype == NLMSG_DONE:
                    return items, parts, interrupted
                continue  # an ACK (error 0): not expected for a dump, harmless
            if mtype == NLMSG_NOOP:
                continue
            if not counted:
                parts, counted = parts + 1, True
            if interrupted and not keep_interrupted:
                continue  # a doomed attempt is drained, not decoded
            item = parse(buf, hdr.start, hdr.end)
            if item is not None:
                items.append(item)


def get(sock: RouteSocket, request: DumpRequest[T], subject: Subject) -> list[T]:
    """A single (non-dump) request such as RTM_GETLINK by name: its decoded reply."""
    with sock.lock:
        seq = sock.send(request.msg_type, NLM_F_REQUEST, request.body)
        while True:
            buf = sock.recv()
            for hdr in messages(buf):
                if hdr.seq != seq:
                    continue
                sock.finished(seq)
                if hdr.type == NLMSG_ERROR:
                    err, reason = error_of(buf, hdr)
                    if err:
                        raise from_errno(err, subject, request.what, reason)
                    return []
                item = request.parse(buf, hdr.start, hdr.end)
                return [] if item is None else [item]


def send_request(sock: RouteSocket, msg_type: int, flags: int, body: bytes, subject: Subject,
                 what: str) -> None:
    """A write request (``flags`` must ask for NLM_F_ACK): returns when the kernel acknowledged
    it, raises the typed error for its errno otherwise."""
    with sock.lock:
        seq = sock.send(msg_type, flags, body)
        while True:
            buf = sock.recv()
            for hdr in messages(buf):
                if hdr.seq != seq or hdr.type != NLMSG_ERROR:
                    continue
                sock.finished(seq)
                err, reason = error_of(buf, hdr)
                if err:
                    raise from_errno(err, subject, what, reason)
                return


__all__ = [
    "DEFAULT_RETRY",
    "STATS",
    "DumpRequest",
    "DumpStats",
    "RetryPolicy",
    "RouteSocket",
    "Snapshot",
    "consistent_dump",
    "get",
    "send_request",
]
