"""What a full rebuild keeps from the kernel: the elements the packet path put into dynamic sets.

A rebuild deletes the table and adds it again from the union, and the union holds none of what
packets add to dynamic sets (``update @ep-HASH-aff { ip saddr timeout 10800s }``: the clients a
``sessionAffinity: ClientIP`` service pins to an endpoint). Rebuilt empty, every client would lose its
endpoint on an agent restart, a drift repair or the commit after a failed one. So right before the
rebuild the writer reads those elements and re-adds them in the same transaction, with the time they
had left (``timeout T expires E``): a client pinned for 5 more seconds stays pinned 5 seconds, not
the set's full timeout.

Only sets the new image declares dynamic, exactly as the kernel's set and the last applied image
have them, are carried: elements of another key type, or of a set without timeouts now, could not
be added back (and would fail the whole rebuild). The table's own elements stay the union's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from podnet.dataplane.contribution import Set
from podnet.dataplane.image import Image
from podnet.kernel.nft import Family, Nft, NftError, SetState, Transaction

# nft -j (1.0.x) lists no "dynamic" flag: the kernel's flags are compared without it.
_UNLISTED_FLAGS = frozenset({"dynamic"})


@dataclass
class Carried:
    """Elements to re-add per set, as ``(key, map value)`` items for :meth:`Transaction.add_elements`
    (the key holds ``timeout``/``expires``), and why nothing could be read, if so."""

    elements: dict[str, list[tuple[str, str | None]]] = field(default_factory=dict)
    error: str | None = None

    def count(self) -> int:
        return sum(len(items) for items in self.elements.values())

    def add_to(self, tx: Transaction) -> None:
        """Append the elements to a rebuild (after its sets are declared, so at the end)."""
        for name in sorted(self.elements):
            tx.add_elements(name, self.elements[name])


def carried_sets(image: Image, previous: Image) -> dict[str, Set]:
    """The image's dynamic sets whose elements a rebuild may carry: declared as the last applied
    image had them (or new to this writer, which adopts the table: then the kernel decides)."""
    return {name: decl for name, decl in image.sets.items()
            if "dynamic" in decl.flags and previous.sets.get(name, decl) == decl}


def read(nft: Nft, family: Family, table: str, image: Image, previous: Image) -> Carried:
    """The elements to carry into a rebuild of ``image`` (``previous``: what was applied last).
    Reads the kernel only when the image has dynamic sets; a failed read carries nothing (the
    rebuild goes on: affinity lost is better than no table)."""
    wanted = carried_sets(image, previous)
    if not wanted:
        return Carried()
    start = time.monotonic()
    try:
        kernel = nft.list_table(family, table) if nft.has_table(family, table) else None
    except NftError as exc:
        return Carried(error=f"dynamic set elements not carried: {exc}")
    if kernel is None:
        return Carried()
    # The rebuild lands a little after the listing: take that time off what is left, so no
    # element comes back with more time than it had.
    elapsed_ms = int((time.monotonic() - start) * 1000) + 1
    out = Carried()
    for name, decl in sorted(wanted.items()):
        found = kernel.sets.get(name)
        if found is None or not same_declaration(found, decl):
            continue
        own = set(image.elements.get(name, {})) | set(previous.elements.get(name, {}))
        items = _items(found, "timeout" in decl.flags, own, elapsed_ms)
        if items:
            out.elements[name] = items
    return out


def same_declaration(found: SetState, decl: Set) -> bool:
    """The kernel's set has the key type, value type and flags ``decl`` declares."""
    return (found.type == " . ".join(decl.type) and found.value_type == decl.value_type
            and set(found.flags) - _UNLISTED_FLAGS == set(decl.flags) - _UNLISTED_FLAGS)


def _items(found: SetState, timeouts: bool, own: set[str], elapsed_ms: int) -> list[tuple[str, str | None]]:
    """Element texts to add back. Keys an owner contributes (or contributed: withdrawn ones must not
    come back) are the union's, not carried. In a set with timeouts only elements with time left
    are: one without its own timeout was added by hand or under an older declaration, and a
    rebuild is the moment to let it go."""
    items: list[tuple[str, str | None]] = []
    for e in found.elements:
        if e.key in own:
            continue
        if not timeouts:
            items.append((e.key, e.value))
            continue
        if e.timeout_ms is None or e.expires_ms is None:
            continue
        left = min(e.expires_ms, e.timeout_ms) - elapsed_ms
        if left > 0:
            items.append((f"{e.key} timeout {e.timeout_ms}ms expires {left}ms", e.value))
    return items
