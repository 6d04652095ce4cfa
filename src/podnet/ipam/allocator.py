"""Address allocation over a ``Store``: round robin per range set, requested addresses, release, GC.

Rules (those of the reference host-local unless marked):
- one address per range set for each attachment ``(containerID, ifname)``;
- round robin: the search starts after the range set's last reserved address and wraps once, so a
  crash-looping pod does not get the address it just released;
- a range's gateway is never handed out, nor (podnet) any range's network address or IPv4 broadcast
  address, even when ``rangeStart``/``rangeEnd`` include them;
- (podnet) ADD is idempotent: an attachment that already holds an address in a range set gets it again
  (the reference fails with "duplicate allocation");
- a failed ADD releases what it reserved, and only that (an earlier ADD's reservations stay).

Error codes: a requested address the configuration cannot give (outside every range set, a gateway,
two in one set) is ``InvalidNetworkConfig`` (7). A requested address held by another attachment and an
exhausted range set are what the reference reports as a generic failure (999); here they are
``AddressUnavailable`` and ``RangeExhausted``, still code 999, with messages naming the address, its
owner or the range set.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from podnet.cni.attachments import ValidAttachments
from podnet.cni.errors import INTERNAL, CNIError, InvalidNetworkConfig, UnknownContainer
from podnet.cni.result import IPAddress, IPConfig
from podnet.ipam.ranges import RangeSet
from podnet.ipam.store import Reservation, Store, select_owned


class AddressUnavailable(CNIError):
    """A requested address is reserved by another attachment."""

    code = INTERNAL


class RangeExhausted(CNIError):
    """A range set has no free address left."""

    code = INTERNAL


def assign_requested(range_sets: Sequence[RangeSet],
                     requested: Iterable[IPAddress]) -> list[IPAddress | None]:
    """Which requested address goes to which range set (at most one per set)."""
    plan: list[IPAddress | None] = [None] * len(range_sets)
    for ip in requested:
        idx = next((i for i, rs in enumerate(range_sets) if rs.contains(ip)), None)
        if idx is None:
            sets = "; ".join(f"{i}: {rs}" for i, rs in enumerate(range_sets))
            raise InvalidNetworkConfig(f"requested IP {ip} is in none of the range sets ({sets})")
        other = plan[idx]
        if other is not None:
            raise InvalidNetworkConfig(
                f"requested IPs {other} and {ip} are both in range set {idx}; "
                "one address is allocated per set")
        if not range_sets[idx].allocatable(ip):
            raise InvalidNetworkConfig(
                f"requested IP {ip} is a gateway, network or broadcast address of range set {idx}")
        plan[idx] = ip
    return plan


def round_robin(rs: RangeSet, last: IPAddress | None) -> Iterator[IPAddress]:
    """Every address of the set once, starting after ``last`` when the set holds it, else at the
    first range's start."""
    ranges = rs.ranges
    make = type(ranges[0].start)
    first, offset = 0, int(ranges[0].start)
    if last is not None:
        idx = next((i for i, r in enumerate(ranges) if r.contains(last)), None)
        if idx is not None:
            first, offset = idx, int(last) + 1
    spans = [(offset, int(ranges[first].end))]
    for k in range(1, len(ranges)):
        r = ranges[(first + k) % len(ranges)]
        spans.append((int(r.start), int(r.end)))
    spans.append((int(ranges[first].start), offset - 1))
    for lo, hi in spans:
        for value in range(lo, hi + 1):
            yield make(value)


def in_use(rs: RangeSet, taken: Iterable[IPAddress]) -> int:
    return sum(1 for ip in taken if rs.allocatable(ip))


@dataclass
class _Attempt:
    """One ADD's view of the store while it holds the lock."""

    store: Store
    container_id: str
    ifname: str
    taken: dict[IPAddress, Reservation] = field(default_factory=dict)
    held: list[IPAddress] = field(default_factory=list)
    new: list[IPAddress] = field(default_factory=list)
    done: bool = False  # every range set got its address (what fails after this is the lock's exit)

    def take(self, ip: IPAddress, range_id: int) -> bool:
        if not self.store.reserve(self.container_id, self.ifname, ip, range_id):
            return False
        self.new.append(ip)
        self.taken[ip] = Reservation(ip, self.container_id, self.ifname)
        return True

    def give_back(self) -> None:
        """Release what this attempt reserved (and only that); the caller holds the lock."""
        for ip in self.new:
            with contextlib.suppress(CNIError, OSError):
                self.store.release(ip)


def _take_requested(att: _Attempt, idx: int, ip: IPAddress) -> IPAddress:
    owner = att.taken.get(ip)
    if owner is not None or not att.take(ip, idx):
        who = owner.owner() if owner is not None else "another attachment"
        raise AddressUnavailable(f"requested IP {ip} is already reserved by {who}")
    return ip


def _take_next(att: _Attempt, idx: int, rs: RangeSet) -> IPAddress:
    capacity = rs.capacity()
    # Counting the set's own reservations costs ~6 us each; fewer reservations in all than the set
    # can hold already says it is not full.
    if len(att.taken) < capacity or in_use(rs, att.taken) < capacity:
        for ip in round_robin(rs, att.store.last_reserved(idx)):
            if ip not in att.taken and rs.allocatable(ip) and att.take(ip, idx):
                return ip
    raise RangeExhausted(
        f"no free IP address in range set {idx} ({rs}): all {capacity} addresses are reserved")


def _allocate_in_set(att: _Attempt, idx: int, rs: RangeSet, wanted: IPAddress | None) -> IPConfig:
    mine = sorted(ip for ip in att.held if rs.contains(ip))
    if mine:
        ip = mine[0]
        if wanted is not None and wanted != ip:
            raise InvalidNetworkConfig(
                f"container {att.container_id} interface {att.ifname} already holds {ip} in range set "
                f"{idx}; it cannot also take requested IP {wanted}")
    elif wanted is not None:
        ip = _take_requested(att, idx, wanted)
    else:
        ip = _take_next(att, idx, rs)
    r = rs.range_for(ip)
    assert r is not None
    return IPConfig(address=ipaddress.ip_interface((ip, r.subnet.prefixlen)), gateway=r.gateway)


def _allocate_locked(att: _Attempt, range_sets: Sequence[RangeSet],
                     plan: Sequence[IPAddress | None]) -> list[IPConfig]:
    store = att.store
    store.clean_debris()
    att.taken = {r.ip: r for r in store.reservations()}
    att.held = [r.ip for r in select_owned(att.taken.values(), att.container_id, att.ifname)]
    try:
        ips = [_allocate_in_set(att, idx, rs, plan[idx]) for idx, rs in enumerate(range_sets)]
    except BaseException:
        att.give_back()
        raise
    att.done = True
    return ips


def _give_back_after_failed_sync(att: _Attempt) -> None:
    """The new reservations were made under the lock, but the lock's exit (making them durable)
    failed: ADD reports the failure, so nobody will ever DEL them. Release those still ours."""
    with contextlib.suppress(CNIError, OSError), att.store.lock():
        mine = {r.ip for r in att.store.reservations() if r.matches(att.container_id, att.ifname)}
        att.new = [ip for ip in att.new if ip in mine]
        att.give_back()


def allocate(store: Store, range_sets: Sequence[RangeSet], container_id: str, ifname: str,
             requested: Iterable[IPAddress] = ()) -> list[IPConfig]:
    """One address per range set for the attachment, all under one lock; all or nothing."""
    plan = assign_requested(range_sets, requested)
    att = _Attempt(store, container_id, ifname)
    with store.prepared(container_id, ifname, len(range_sets)):
        try:
            with store.lock():
                return _allocate_locked(att, range_sets, plan)
        except BaseException as exc:
            if not att.done:
                raise
            _give_back_after_failed_sync(att)
            if not isinstance(exc, CNIError):
                raise
            released = ", ".join(map(str, att.new)) or "nothing new"
            raise type(exc)(f"{exc.msg}; this ADD's reservations were released ({released})",
                            exc.details, code=exc.code) from None


def release(store: Store, container_id: str, ifname: str) -> list[IPAddress]:
    """Release the attachment's reservations (and sweep a crash's debris while holding the lock)."""
    with store.lock():
        store.clean_debris()
        return store.release_by_id(container_id, ifname)


def gc(store: Store, valid: ValidAttachments) -> list[IPAddress]:
    """Release every reservation whose attachment ``valid`` does not keep, and a crash's debris."""
    with store.lock():
        store.clean_debris()
        found = store.reservations()
        # Two files can name one address (its IPv4 and IPv4-mapped forms); a kept one keeps it.
        kept = {r.ip for r in found if valid.keeps(r.container_id, r.ifname)}
        stale = list(dict.fromkeys(r.ip for r in found if r.ip not in kept))
        for ip in stale:
            store.release(ip)
    return stale


def check(store: Store, range_sets: Sequence[RangeSet], container_id: str, ifname: str,
          expected: Iterable[IPAddress] = ()) -> list[IPAddress]:
    """The attachment holds an address in every range set, and every ``expected`` address of ours."""
    with store.lock():
        held = store.get_by_id(container_id, ifname)
    who = f"container {container_id} interface {ifname}"
    for idx, rs in enumerate(range_sets):
        if not any(rs.contains(ip) for ip in held):
            raise UnknownContainer(f"no address is reserved for {who} in range set {idx} ({rs})")
    for ip in expected:
        if any(rs.contains(ip) for rs in range_sets) and ip not in held:
            raise UnknownContainer(f"{ip} of the previous result is not reserved for {who}")
    return held


def usage(store: Store, range_sets: Sequence[RangeSet]) -> list[tuple[int, int]]:
    """``(in use, capacity)`` of every range set."""
    with store.lock():
        taken = [r.ip for r in store.reservations()]
    return [(in_use(rs, taken), rs.capacity()) for rs in range_sets]
