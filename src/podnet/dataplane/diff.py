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

A chain is deleted only when no rule and no map element that stays jumps or goes to it: the kernel
refuses to delete a chain in use (EBUSY, and the whole transaction with it). Within one owner's
contribution a reference and the chain it names leave together, but across owners they need not: the
policy controller hands over one part per policy and then the shared part whose isolation chains
jump to the policy chains, and another controller's commit on the same writer can come in between.
A chain that no owner declares any more but that something still refers to is flushed (the union
gives it no rules) and kept; the commit that removes its last reference deletes it.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
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
        tx.add_set(decl.name, decl.type, flags=decl.flags, comment=decl.comment)
    else:
        tx.add_map(decl.name, decl.type, decl.value_type, flags=decl.flags, comment=decl.comment)


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


_CHAIN_REF = re.compile(r"(?<![A-Za-z0-9_-])(?:jump|goto)[ \t]+([A-Za-z0-9_-]+)")


def chain_refs(text: str | None) -> list[str]:
    """The chains a rule or a map value (``goto NAME``) jumps or goes to."""
    if not text or ("jump" not in text and "goto" not in text):
        return []  # most rules and every plain set element: no regex
    return _CHAIN_REF.findall(text)


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
    _keep_referenced(patch, union, image)
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


def _keep_referenced(patch: Patch, union: Union, image: Image) -> None:
    """Chains still referred to after the patch are emptied, not deleted; chains kept so earlier
    that lose a reference in this patch are deleted when none is left."""
    for name in _released(patch, image):
        if name in image.chains and name not in patch.chains and union.chain(name) is None:
            patch.chains[name] = None
            patch.rules[name] = None
    going = {name for name, chain in patch.chains.items() if chain is None}
    if not going:
        return
    for name in _referenced(going, patch, union, image):
        del patch.chains[name]
        if image.rules.get(name):
            patch.rules[name] = ()
        else:
            patch.rules.pop(name, None)


def _released(patch: Patch, image: Image) -> set[str]:
    """Chains that rules flushed or map elements deleted by the patch referred to."""
    out: set[str] = set()
    for name in patch.rules:
        for rule in image.rules.get(name, ()):
            out.update(chain_refs(rule))
    for set_name, key, _, _ in patch.elements:
        out.update(chain_refs(image.elements.get(set_name, {}).get(key)))
    for name in patch.sets:  # deleted or re-declared: all its elements go
        if name in image.sets and image.sets[name].value_type is not None:
            for value in image.elements.get(name, {}).values():
                out.update(chain_refs(value))
    return out


def _referenced(names: set[str], patch: Patch, union: Union, image: Image) -> set[str]:
    """Those of ``names`` that a rule or a map element refers to once the patch is applied."""

    def refs(texts: Iterable[str | None]) -> Counter[str]:
        return count_refs(names, "\n".join(filter(None, texts)))

    kept = (rules for name, rules in image.rules.items() if name not in patch.rules)
    found = set(refs(itertools.chain.from_iterable(kept)))
    found.update(refs(itertools.chain.from_iterable(rules or () for rules in patch.rules.values())))
    changed: dict[str, dict[str, Value]] = {}  # set -> key -> its value after the patch (None: gone)
    for set_name, key, present, value in patch.elements:
        changed.setdefault(set_name, {})[key] = value if present else None
    for name, decl in image.sets.items():
        if decl.value_type is None or name in patch.sets or not image.elements.get(name):
            continue
        elements = image.elements[name]
        counts = refs(elements.values())  # what the map refers to now, and how often
        if counts:  # less what the elements the patch deletes or changes referred to
            for key in changed.get(name, {}).keys() & elements.keys():
                counts.subtract(refs([elements[key]]))
        found.update(n for n, times in counts.items() if times > 0)
    for values in changed.values():
        found.update(refs(values.values()))
    for name in patch.whole_sets:
        found.update(refs(union.elements(name).values()))
    return found


_VERB_BEFORE = re.compile(r"(?:^|[^A-Za-z0-9_-])(?:jump|goto)[ \t]+$")


def count_refs(names: Iterable[str], text: str) -> Counter[str]:
    """How often ``text`` (rules or map values, one a line) jumps or goes to each of ``names``. A
    search for the name itself, then a look at the word before it: a large table's text is
    scanned in C, once per name (a pattern starting with ``jump|goto`` is tried at every offset)."""
    counts: Counter[str] = Counter()
    for name in names:
        if name not in text:
            continue
        for found in re.finditer(rf"{re.escape(name)}(?![A-Za-z0-9_-])", text):
            if _VERB_BEFORE.search(text[max(0, found.start() - 24):found.start()]):
                counts[name] += 1
    return counts


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
