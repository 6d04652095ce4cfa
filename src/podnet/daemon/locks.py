"""Per-network locking for the daemon's concurrent requests.

Each network has a readers-writer lock. ADD, DEL and CHECK hold it shared, plus an exclusive
lock on their attachment (network, container ID, ifname), so calls for different pods of one
network run in parallel while two calls for the same pod never overlap. GC holds the network
exclusively: it decides what is stale from a listing, and an ADD finishing in between would be
reclaimed under its feet. Idle entries are dropped, so the tables stay as small as the number of
requests in flight.

Nobody waits in a worker thread for a call that may never finish: a call whose attachment is
taken, or whose network a GC holds or waits for, raises :class:`Busy` at once (the daemon answers
CNI error 11, try again later; runtimes retry). So the retries of a pod whose first call hangs
each cost a moment, not a worker, and an unrelated pod is still served. Only a GC waits, for the
calls in flight on its network, and only until its deadline; while it waits, new calls on that
network are turned away, so a stream of ADDs cannot starve it.

This only orders requests inside the daemon. Across processes (a shim running in-process while
the daemon is down, Go's host-local sharing a data directory) the plugins' own file locks and
the kernel's atomic operations keep things consistent, as they do between plugin processes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class _NetState:
    readers: int = 0
    writer: bool = False
    waiting_writers: int = 0

    def idle(self) -> bool:
        return not (self.readers or self.writer or self.waiting_writers)


class Busy(Exception):
    """The lock is taken: try again later (CNI error 11) rather than hold a worker waiting."""


class NetworkLocks:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._nets: dict[str, _NetState] = {}
        self._attachments: set[tuple[str, str, str]] = set()

    @contextmanager
    def shared(self, network: str, attachment: tuple[str, str] | None = None) -> Iterator[None]:
        """The network shared; with ``attachment`` (container ID, ifname) that one exclusively."""
        key = None if attachment is None else (network, *attachment)
        with self._cond:
            state = self._nets.setdefault(network, _NetState())
            if state.writer or state.waiting_writers:
                raise Busy(f"network {network!r} is being garbage-collected")
            if key is not None and key in self._attachments:
                raise Busy(f"another call for container {key[1]!r} ifname {key[2]!r} is in progress")
            state.readers += 1
            if key is not None:
                self._attachments.add(key)
        try:
            yield
        finally:
            with self._cond:
                state.readers -= 1
                if key is not None:
                    self._attachments.discard(key)
                self._forget(network, state)
                self._cond.notify_all()

    @contextmanager
    def exclusive(self, network: str, deadline: float | None = None) -> Iterator[None]:
        """The network alone, once the calls in flight on it are done (by ``deadline``, a
        ``time.monotonic()`` value, or :class:`Busy`)."""
        with self._cond:
            state = self._nets.setdefault(network, _NetState())
            if state.writer or state.waiting_writers:
                raise Busy(f"another GC of network {network!r} is in progress")
            state.waiting_writers += 1
            try:
                while state.readers:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise Busy(f"calls in flight on network {network!r} did not finish in time for GC")
                    self._cond.wait(left)
            finally:
                state.waiting_writers -= 1
            state.writer = True
        try:
            yield
        finally:
            with self._cond:
                state.writer = False
                self._forget(network, state)
                self._cond.notify_all()

    def _forget(self, network: str, state: _NetState) -> None:
        if state.idle() and self._nets.get(network) is state:
            del self._nets[network]

    def busy(self) -> int:
        """Networks with a holder or a waiter (for tests and metrics)."""
        with self._cond:
            return len(self._nets)
