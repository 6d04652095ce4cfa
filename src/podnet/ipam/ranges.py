"""host-local's address ranges and range sets, with look-ups that stay cheap for thousands of ranges.

A range set's ranges never overlap (the configuration parser refuses that), so sorted by start they
form a sequence of disjoint intervals: finding the range of an address is a binary search, and
whether any two ranges overlap shows between neighbours in that order (``overlapping_neighbours``).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from podnet.cni.result import IPAddress, IPNetwork

NAMED_RANGES = 8  # a range set with more ranges is named by its first three and a count


@dataclass(frozen=True)
class Range:
    """An inclusive address range inside a subnet; ``gateway`` defaults to the subnet's first address."""

    subnet: IPNetwork
    start: IPAddress
    end: IPAddress
    gateway: IPAddress

    @property
    def version(self) -> int:
        return self.subnet.version

    def contains(self, ip: IPAddress) -> bool:
        return ip.version == self.version and self.start <= ip <= self.end  # type: ignore[operator]

    def specials(self) -> tuple[IPAddress, ...]:
        """Never handed out: the gateway, and the subnet's network address (and IPv4 broadcast)."""
        if self.version == 4:
            return self.gateway, self.subnet.network_address, self.subnet.broadcast_address
        return self.gateway, self.subnet.network_address

    def is_special(self, ip: IPAddress) -> bool:
        return ip in self.specials()

    def __str__(self) -> str:
        return f"{self.start}-{self.end} in {self.subnet}"


def overlapping_neighbours(ranges: Sequence[Range]) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, of ranges that overlap and are neighbours when sorted by
    start. Empty exactly when no two ranges overlap: if ``a`` and ``c`` overlap and ``b`` starts
    between them, ``b`` starts inside ``a``, so some neighbours overlap too."""
    order = sorted(range(len(ranges)),
                   key=lambda k: (ranges[k].version, int(ranges[k].start), int(ranges[k].end)))
    pairs = []
    for a, b in itertools.pairwise(order):
        ra, rb = ranges[a], ranges[b]
        if ra.version == rb.version and int(rb.start) <= int(ra.end):
            pairs.append((min(a, b), max(a, b)))
    return pairs


@dataclass(frozen=True)
class RangeSet:
    """Ranges of one family from which one address is allocated; they never overlap."""

    ranges: tuple[Range, ...]

    @property
    def version(self) -> int:
        return self.ranges[0].version

    @cached_property
    def _by_start(self) -> tuple[list[int], list[Range]]:
        ordered = sorted(self.ranges, key=lambda r: int(r.start))
        return [int(r.start) for r in ordered], ordered

    @cached_property
    def _specials(self) -> frozenset[IPAddress]:
        return frozenset(s for r in self.ranges for s in r.specials())

    def range_for(self, ip: IPAddress) -> Range | None:
        if ip.version != self.version:
            return None
        starts, ordered = self._by_start
        k = bisect.bisect_right(starts, int(ip)) - 1
        return ordered[k] if k >= 0 and ordered[k].contains(ip) else None

    def contains(self, ip: IPAddress) -> bool:
        return self.range_for(ip) is not None

    def allocatable(self, ip: IPAddress) -> bool:
        """In one of the ranges, and neither a gateway nor a network/broadcast address of any range."""
        return ip not in self._specials and self.contains(ip)

    def capacity(self) -> int:
        """How many addresses the set can hand out (each special address lies in one range at most)."""
        size = sum(int(r.end) - int(r.start) + 1 for r in self.ranges)
        return size - sum(1 for s in self._specials if self.contains(s))

    def __str__(self) -> str:
        # Messages and metrics labels name a set by its ranges: the first few of a big one.
        if len(self.ranges) <= NAMED_RANGES:
            return ", ".join(str(r) for r in self.ranges)
        first = ", ".join(str(r) for r in self.ranges[:3])
        return f"{first} and {len(self.ranges) - 3} more ranges"
