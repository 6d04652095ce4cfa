"""An in-memory ``Store`` for unit tests. It refuses calls made without holding the lock, so tests
also prove that the allocator locks around everything it does."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from podnet.cni.result import IPAddress
from podnet.ipam.store import Reservation, select_owned


class LockNotHeld(AssertionError):
    """A store operation ran outside ``with store.lock()``."""


class FakeStore:
    def __init__(self) -> None:
        self.owners: dict[IPAddress, tuple[str, str | None]] = {}
        self.last: dict[int, IPAddress] = {}
        self.debris = 0
        self.locked = False
        self.lock_count = 0
        # Addresses whose reserve() reports "taken" although no reservation shows (a racing writer).
        self.refuse: set[IPAddress] = set()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        if self.locked:
            raise LockNotHeld("lock taken twice (flock is not re-entrant across descriptors)")
        self.locked = True
        self.lock_count += 1
        try:
            yield
        finally:
            self.locked = False

    def prepared(self, container_id: str, ifname: str, count: int) -> contextlib.AbstractContextManager[None]:
        if self.locked:
            raise LockNotHeld("prepared() belongs before the lock, not inside it")
        return contextlib.nullcontext()

    def _need_lock(self) -> None:
        if not self.locked:
            raise LockNotHeld("store used without holding its lock")

    def reserve(self, container_id: str, ifname: str, ip: IPAddress, range_id: int) -> bool:
        self._need_lock()
        if ip in self.owners or ip in self.refuse:
            return False
        self.owners[ip] = (container_id.strip(), ifname)
        self.last[range_id] = ip
        return True

    def last_reserved(self, range_id: int) -> IPAddress | None:
        self._need_lock()
        return self.last.get(range_id)

    def release(self, ip: IPAddress) -> None:
        self._need_lock()
        self.owners.pop(ip, None)

    def release_by_id(self, container_id: str, ifname: str) -> list[IPAddress]:
        released = self.get_by_id(container_id, ifname)
        for ip in released:
            self.release(ip)
        return released

    def get_by_id(self, container_id: str, ifname: str) -> list[IPAddress]:
        return [r.ip for r in select_owned(self.reservations(), container_id, ifname)]

    def reservations(self) -> list[Reservation]:
        self._need_lock()
        return [Reservation(ip, cid, ifn) for ip, (cid, ifn) in self.owners.items()]

    def clean_debris(self) -> int:
        self._need_lock()
        removed, self.debris = self.debris, 0
        return removed
