"""Transactions for the writer: the whole table from the union (resync), or only what changed since
the last applied image (commit).

An incremental transaction runs in this order, so that nothing is deleted while still in use and
nothing is used before it exists:

1. new chains and new sets are declared;
2. chains whose rules change, chains going away, and chains whose rules look up a set being
   re-declared are flushed;
3. elements going away (or changing value) are deleted;
4. sets going away or being re-declared are deleted, then chains going away;
5. re-declared sets come back with all their elements; new elements are added;
6. the flushed chains that stay get their new rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from podnet.dataplane.contribution import Chain, Set
from podnet.dataplane.image import Image
from podnet.dataplane.union import Dirty, Union, Value
from podnet.kernel.nft import Family, Transaction


def add_chain(tx: Transaction, chain: Chain) -> None:
    tx.add_chain(chain.name, type=chain.type, hook=chain.hook, priority=chain.priority, policy=chain.policy)


def add_set(tx: Transaction, decl: Set) -> None:
    if decl.value_type is None:
        tx.add_set(decl.name, decl.type, flags=decl.flags, comment=decl.comment, typeof=decl.typeof)
    else:
        tx.add_map(decl.name, decl.type, decl.value_type, flags=decl.flags, comment=decl.comment,
                   typeof=decl.typeof)


def add_elements(tx: Transaction, set_name: str, elements: Iterable[tuple[str, Value]]) -> None:
    tx.add_elements(set_name, elements)


def rebuild(family: Family, table: str, image: Image, comment: str | None) -> Transaction:
    """The whole table in one transaction: ``add`` (so the delete cannot fail), ``delete``, then
    everything again. The kernel swaps old for new in one step, so no packet sees a missing or
    half-built table, and nothing that was in the kernel survives unless the union has it."""
    tx = Transaction(family, table).add_table().delete_table().add_table(comment)
    for chain in image.chains.values():
        add_chain(tx, chain)
    for decl in image.sets.values():
        add_set(tx, decl)
        add_elements(tx, decl.name, image.elements.get(decl.name, {}).items())
    for name, rules in image.rules.items():
        for rule in rules:
            tx.add_rule(name, rule)
    return tx


def refers_to_set(rule: str, name: str) -> bool:
    return re.search(rf"@{re.escape(name)}(?![A-Za-z0-9_-])", rule) is not None


@dataclass
class Patch:
    """An incremental transaction and what it does to the applied image once it succeeded."""

    tx: Transaction
    chains: dict[str, Chain | None] = field(default_factory=dict)  # None: removed
    rules: dict[str, tuple[str, ...] | None] = field(default_factory=dict)
    sets: dict[str, Set | None] = field(default_factory=dict)
    whole_sets: set[str] = field(default_factory=set)  # sets whose elements were all (re)written
    elements: list[tuple[str, str, bool, Value]] = field(default_factory=list)  # set, key, present, value

    def rewritten(self) -> list[str]:
        """Chains that got new rules (their handles changed)."""
        return [n for n, r in self.rules.items() if r is not None]

    def apply_to(self, image: Image, union: Union) -> None:
        for name, chain in self.chains.items():
            if chain is None:
                image.chains.pop(name, None)
            else:
                image.chains[name] = chain
        for name, rules in self.rules.items():
            if rules is None:
                image.rules.pop(name, None)
            else:
                image.rules[name] = rules
        for name, decl in self.sets.items():
            if decl is None:
                image.sets.pop(name, None)
                image.elements.pop(name, None)
            else:
                image.sets[name] = decl
        for name in self.whole_sets:
            image.elements[name] = union.elements(name)
        for set_name, key, present, value in self.elements:
            if present:
                image.elements.setdefault(set_name, {})[key] = value
            else:
                image.elements.get(set_name, {}).pop(key, None)


def incremental(family: Family, table: str, union: Union, image: Image, dirty: Dirty) -> Patch | None:
    """The difference as one transaction; None when only a rebuild can do it (a chain's declaration
    changed: a base chain cannot be re-hooked in place, and a chain in use cannot be deleted)."""
    patch = Patch(Transaction(family, table))
    for name in sorted(dirty.chains):
        want, have = union.chain(name), image.chains.get(name)
        if want is not None and have is not None and want != have:
            return None
        if want != have:
            patch.chains[name] = want
        rules = union.rules(name) if want is not None else None
        if rules != image.rules.get(name, () if have is not None else None):
            patch.rules[name] = rules
    for name in sorted(dirty.sets):
        want_set, have_set = union.set(name), image.sets.get(name)
        if want_set != have_set:
            patch.sets[name] = want_set
            if want_set is not None:
                patch.whole_sets.add(name)
    redeclared = [n for n, d in patch.sets.items() if d is not None and n in image.sets]
    for name, rules in image.rules.items():
        if name not in patch.rules and any(refers_to_set(r, s) for r in rules for s in redeclared):
            patch.rules[name] = union.rules(name) if union.chain(name) is not None else None
    _element_changes(patch, union, image, dirty)
    _write(patch, image, union)
    return patch


def _element_changes(patch: Patch, union: Union, image: Image, dirty: Dirty) -> None:
    for set_name in sorted(dirty.keys):
        if set_name in patch.sets or set_name not in image.sets:
            continue  # written whole, gone, or not declared: nothing per element
        have_all = image.elements.get(set_name, {})
        for key in sorted(dirty.keys[set_name]):
            want = union.value(set_name, key)
            have = (key in have_all, have_all.get(key))
            if want != have:
                patch.elements.append((set_name, key, *want))


def _write(patch: Patch, image: Image, union: Union) -> None:
    tx = patch.tx
    for chain in patch.chains.values():
        if chain is not None:
            add_chain(tx, chain)
    for name, decl in patch.sets.items():
        if decl is not None and name not in image.sets:
            add_set(tx, decl)
    for name in patch.rules:
        if name in image.chains:
            tx.flush_chain(name)
    for set_name, key, _, _ in patch.elements:
        if key in image.elements.get(set_name, {}):
            tx.delete_element(set_name, key)
    for name in patch.sets:
        if name in image.sets:
            tx.delete_set(name)
    for name, chain in patch.chains.items():
        if chain is None:
            tx.delete_chain(name)
    for name, decl in patch.sets.items():
        if decl is not None and name in image.sets:
            add_set(tx, decl)
    for name in sorted(patch.whole_sets):
        add_elements(tx, name, union.elements(name).items())
    for set_name, key, present, value in patch.elements:
        if present:
            tx.add_element(set_name, key, value=value)
    for name, rules in patch.rules.items():
        for rule in rules or ():
            tx.add_rule(name, rule)
