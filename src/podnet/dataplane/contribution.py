"""What a controller or plugin hands the table writer: its part of one nftables table, as data.

A contribution is declarative and complete for its owner: the writer replaces the owner's previous
contribution with the new one and applies the difference of the union. Owners never see, copy or
restore anyone else's part, so none can remove another's (kube-router's lost ExternalIPs).

Union rules, enforced by the writer:
* a chain, set or map may be declared by several owners only with an identical declaration;
* a chain's rules belong to one owner: the owner declaring it with ``rules`` (others may declare it
  rule-less, to make sure it exists for their jumps). Two owners giving rules to one chain is a
  conflict;
* set elements are a union: an element stays while any owner contributes it;
* a map key has one value: two owners giving one key different values is a conflict.
A conflicting contribution is refused as a whole (``ContributionConflict``), and the previous one of
that owner stays in force.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


class ContributionConflict(ValueError):
    """The contribution contradicts another owner's (names both owners and the object)."""


@dataclass(frozen=True)
class Chain:
    """A chain; a base chain when ``hook`` is set (then ``type`` and ``priority`` too). ``rules`` are
    nft rule statements in order, without the ``add rule <table> <chain>`` prefix."""

    name: str
    type: str | None = None
    hook: str | None = None
    priority: int | str | None = None
    policy: str | None = None
    rules: tuple[str, ...] = ()


@dataclass(frozen=True)
class Set:
    """A set, or a map when ``value_type`` is given (``verdict`` for a verdict map). ``type`` may be
    a concatenation (``("ipv4_addr", "inet_service")``), and so may ``value_type``
    (``"ipv4_addr . inet_service"``)."""

    name: str
    type: tuple[str, ...]
    flags: tuple[str, ...] = ()
    value_type: str | None = None
    comment: str | None = None


# Element keys and values are nft syntax (``10.0.0.1``, ``10.0.0.0/24``, ``tcp . 80``,
# ``goto ingress-3f2a``); a set element's value is None.
Elements = Mapping[str, Mapping[str, str | None]]


@dataclass(frozen=True)
class Contribution:
    chains: tuple[Chain, ...] = ()
    sets: tuple[Set, ...] = ()
    elements: Elements = field(default_factory=dict)  # set/map name -> key -> value


EMPTY = Contribution()
