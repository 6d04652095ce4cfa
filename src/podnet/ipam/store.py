"""Where reservations live: the ``Store`` protocol and the reservation record both stores share.

A reservation is one IP address held by one attachment, ``(containerID, ifname)``. Reference
host-local writes the owner as ``<containerID>\\r\\n<ifname>``; versions before 0.7 wrote only the
container ID ("legacy" reservations: ``ifname`` is None and they match any interface of that container).

Callers hold ``lock()`` around every sequence of calls; the store methods themselves do not lock.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from podnet.cni.result import IPAddress

# The separator the reference host-local writes between container ID and interface name.
OWNER_SEPARATOR = "\r\n"


@dataclass(frozen=True)
class Reservation:
    ip: IPAddress
    container_id: str  # "" when the owner is unreadable (an empty file left by a crashed writer)
    ifname: str | None  # None for a legacy reservation that records the container only

    def matches(self, container_id: str, ifname: str) -> bool:
        return self.container_id == container_id and self.ifname == ifname

    def owner(self) -> str:
        if not self.container_id:
            return "nobody (unreadable reservation)"
        if self.ifname is None:
            return f"container {self.container_id}"
        return f"container {self.container_id} interface {self.ifname}"


def format_owner(container_id: str, ifname: str) -> bytes:
    return (container_id.strip() + OWNER_SEPARATOR + ifname).encode()


def parse_owner(data: bytes) -> tuple[str, str | None]:
    """``(containerID, ifname)`` from a reservation file; ``("", None)`` when it is empty."""
    text = data.decode(errors="replace").strip()
    for sep in (OWNER_SEPARATOR, "\n"):
        if sep in text:
            container_id, _, ifname = text.partition(sep)
            return container_id.strip(), ifname.strip()
    return text, None


def select_owned(reservations: Iterable[Reservation], container_id: str, ifname: str) -> list[Reservation]:
    """The reservations of one attachment: exact matches, else the container's legacy reservations
    (the same rule the reference uses, so an upgrade does not orphan old files)."""
    items = list(reservations)
    exact = [r for r in items if r.matches(container_id, ifname)]
    if exact:
        return exact
    wanted = container_id.strip()
    return [r for r in items if r.ifname is None and r.container_id and r.container_id == wanted]


class Store(Protocol):
    """A network's reservations. One store per network (host-local's ``<dataDir>/<network>``)."""

    def lock(self) -> AbstractContextManager[None]:
        """Exclusive access to the network for a whole allocation, release or GC."""
        ...

    def prepared(self, container_id: str, ifname: str, count: int) -> AbstractContextManager[None]:
        """Entered before ``lock()`` when up to ``count`` reservations for the attachment may follow:
        the store can do slow work (writing and syncing the files' content) while nobody waits for
        the lock. Whatever was prepared and not used is discarded on exit."""
        ...

    def reserve(self, container_id: str, ifname: str, ip: IPAddress, range_id: int) -> bool:
        """Take ``ip`` for the attachment and remember it as range set ``range_id``'s last
        reservation. False when the address is already taken."""
        ...

    def last_reserved(self, range_id: int) -> IPAddress | None: ...

    def release(self, ip: IPAddress) -> None:
        """Drop one reservation; a missing one is fine."""
        ...

    def release_by_id(self, container_id: str, ifname: str) -> list[IPAddress]:
        """Drop the attachment's reservations (see ``select_owned``); returns what was released."""
        ...

    def get_by_id(self, container_id: str, ifname: str) -> list[IPAddress]: ...

    def reservations(self) -> list[Reservation]:
        """Every reservation of the network, including unreadable ones (for GC)."""
        ...

    def clean_debris(self) -> int:
        """Remove what an interrupted writer left (temporary files); returns how many."""
        ...
