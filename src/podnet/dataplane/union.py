"""The union of every owner's contribution to one table, with the rules of
:mod:`podnet.dataplane.contribution` enforced, and a record of what changed since it was last taken.

Indexes are kept per object (who declares a chain or set, who gives a chain its rules, who
contributes each element), so replacing one owner's contribution costs the size of that
contribution, not the size of the table.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from podnet.dataplane.contribution import EMPTY, Chain, Contribution, ContributionConflict, Set
from podnet.kernel.errors import InvalidArgument
from podnet.kernel.nft import check_comment, check_key, check_name, check_rule

Value = str | None
T = TypeVar("T")


def declaration(chain: Chain) -> Chain:
    """A chain without its rules: what every declaring owner must agree on."""
    if not chain.rules:
        return chain
    return Chain(chain.name, chain.type, chain.hook, chain.priority, chain.policy)


@dataclass
class Dirty:
    """Objects whose desired state may differ from what was last applied."""

    chains: set[str] = field(default_factory=set)
    sets: set[str] = field(default_factory=set)
    keys: dict[str, set[str]] = field(default_factory=dict)  # set -> keys

    def __bool__(self) -> bool:
        return bool(self.chains or self.sets or self.keys)


class Union:
    """Every owner's current contribution, and the desired table they make together."""

    def __init__(self) -> None:
        self.contributions: dict[str, Contribution] = {}
        self.chain_decls: dict[str, dict[str, Chain]] = {}  # chain -> owner -> declaration
        self.rule_owner: dict[str, str] = {}  # chain -> the owner giving its rules
        self.set_decls: dict[str, dict[str, Set]] = {}  # set -> owner -> declaration
        self.element_owners: dict[str, dict[str, dict[str, Value]]] = {}  # set -> key -> owner -> value
        self.dirty = Dirty()

    # ---- desired state ----

    def chain(self, name: str) -> Chain | None:
        """The chain's declaration (no rules), None when no owner declares it."""
        decls = self.chain_decls.get(name)
        return declaration(next(iter(decls.values()))) if decls else None

    def rules(self, name: str) -> tuple[str, ...]:
        owner = self.rule_owner.get(name)
        if owner is None:
            return ()
        return next(c.rules for c in self.contributions[owner].chains if c.name == name)

    def set(self, name: str) -> Set | None:
        decls = self.set_decls.get(name)
        return next(iter(decls.values())) if decls else None

    def value(self, set_name: str, key: str) -> tuple[bool, Value]:
        """(whether any owner contributes the key, its value)."""
        owners = self.element_owners.get(set_name, {}).get(key)
        if not owners:
            return False, None
        return True, next(iter(owners.values()))

    def elements(self, set_name: str) -> dict[str, Value]:
        return {k: next(iter(o.values())) for k, o in self.element_owners.get(set_name, {}).items() if o}

    def chain_names(self) -> list[str]:
        return [n for n, d in self.chain_decls.items() if d]

    def set_names(self) -> list[str]:
        return [n for n, d in self.set_decls.items() if d]

    # ---- changes ----

    def replace(self, owner: str, new: Contribution) -> None:
        """Make ``new`` the owner's contribution; ContributionConflict (nothing changed) if it
        contradicts itself or another owner's. Costs the size of what changed in the owner's
        elements (the unchanged ones are compared as whole mappings, not one by one)."""
        old = self.contributions.get(owner, EMPTY)
        check_structure(owner, new, old)
        deltas = element_deltas(old, new)
        check_elements(owner, old, new, deltas)
        self._check_against_others(owner, new, deltas)
        self._unindex_structure(owner, old)
        if new == EMPTY:
            self.contributions.pop(owner, None)
        else:
            self.contributions[owner] = new
        self._index_structure(owner, new)
        self._index_elements(owner, deltas)
        self._mark(old, new, deltas)

    def _check_against_others(self, owner: str, new: Contribution, deltas: dict[str, Delta]) -> None:
        """Against one other owner per object: the others already agree with each other (a set
        many policies share has many declaring owners, each key of it many contributors)."""
        for chain in new.chains:
            other_chain = _another(self.chain_decls.get(chain.name), owner)
            if other_chain is not None and other_chain[1] != declaration(chain):
                raise _conflict(owner, other_chain[0], f"chain {chain.name}", "declare it differently")
            rules_by = self.rule_owner.get(chain.name)
            if chain.rules and rules_by not in (None, owner):
                raise _conflict(owner, str(rules_by), f"chain {chain.name}", "both give it rules")
        for decl in new.sets:
            other_set = _another(self.set_decls.get(decl.name), owner)
            if other_set is not None and other_set[1] != decl:
                raise _conflict(owner, other_set[0], f"set {decl.name}", "declare it differently")
        for set_name, delta in deltas.items():
            known = self.element_owners.get(set_name, {})
            for key, value in delta.given.items():
                other_value = _another(known.get(key), owner)
                if other_value is not None and other_value[1] != value:
                    raise _conflict(owner, other_value[0], f"{set_name} element {key}",
                                    f"give it the values {value!r} and {other_value[1]!r}")

    def _unindex_structure(self, owner: str, old: Contribution) -> None:
        for chain in old.chains:
            self.chain_decls.get(chain.name, {}).pop(owner, None)
            if self.rule_owner.get(chain.name) == owner:
                del self.rule_owner[chain.name]
        for decl in old.sets:
            self.set_decls.get(decl.name, {}).pop(owner, None)

    def _index_structure(self, owner: str, new: Contribution) -> None:
        for chain in new.chains:
            self.chain_decls.setdefault(chain.name, {})[owner] = declaration(chain)
            if chain.rules:
                self.rule_owner[chain.name] = owner
        for decl in new.sets:
            self.set_decls.setdefault(decl.name, {})[owner] = decl

    def _index_elements(self, owner: str, deltas: dict[str, Delta]) -> None:
        for set_name, delta in deltas.items():
            known = self.element_owners.setdefault(set_name, {})
            for key in delta.removed:
                owners = known.get(key)
                if owners is not None:
                    owners.pop(owner, None)
                    if not owners:
                        del known[key]
            for key, value in delta.given.items():
                known.setdefault(key, {})[owner] = value

    def _mark(self, old: Contribution, new: Contribution, deltas: dict[str, Delta]) -> None:
        old_chains, new_chains = {c.name: c for c in old.chains}, {c.name: c for c in new.chains}
        self.dirty.chains.update(_changed(old_chains, new_chains))
        old_sets, new_sets = {s.name: s for s in old.sets}, {s.name: s for s in new.sets}
        self.dirty.sets.update(_changed(old_sets, new_sets))
        for set_name, delta in deltas.items():
            keys = self.dirty.keys.setdefault(set_name, set())
            keys.update(delta.removed)
            keys.update(delta.given)

    def take_dirty(self) -> Dirty:
        dirty, self.dirty = self.dirty, Dirty()
        return dirty


def _another(by_owner: Mapping[str, T] | None, owner: str) -> tuple[str, T] | None:
    """Some owner other than ``owner`` and what it gives (None: no other)."""
    for other, given in (by_owner or {}).items():
        if other != owner:
            return other, given
    return None


def _changed(old: Mapping[str, object], new: Mapping[str, object]) -> Iterable[str]:
    return [n for n in set(old) | set(new) if old.get(n) != new.get(n)]


def _conflict(owner: str, other: str, what: str, how: str) -> ContributionConflict:
    return ContributionConflict(f"{owner!r} and {other!r} conflict on {what}: they {how}")


@dataclass
class Delta:
    """What changed in one owner's elements of one set."""

    removed: set[str]  # keys no longer given
    given: dict[str, Value]  # keys new, or given a new value


def element_deltas(old: Contribution, new: Contribution) -> dict[str, Delta]:
    """Per set, the owner's changed elements. Unchanged mappings cost one comparison in C; the
    differences are taken with set operations on the mappings' views."""
    out = {}
    for set_name in old.elements.keys() | new.elements.keys():
        before, after = old.elements.get(set_name, {}), new.elements.get(set_name, {})
        if before == after:
            continue
        out[set_name] = Delta(set(before.keys() - after.keys()), dict(after.items() - before.items()))
    return out


def check_structure(owner: str, c: Contribution, old: Contribution = EMPTY) -> None:
    """Names and rules that the renderer takes, each chain and set declared once in ``c``
    (ContributionConflict, naming what is wrong). Chains and sets the owner's ``old`` contribution
    held as they are passed before and are not looked at again."""
    try:
        _check_parts(c, old)
    except (ValueError, InvalidArgument) as exc:
        raise ContributionConflict(f"contribution of {owner!r}: {exc}") from None
    for what, names in (("chain", [ch.name for ch in c.chains]), ("set", [s.name for s in c.sets])):
        dupes = sorted(n for n, times in Counter(names).items() if times > 1)
        if dupes:
            raise ContributionConflict(f"contribution of {owner!r}: {what} {dupes[0]} declared twice")


def check_elements(owner: str, old: Contribution, c: Contribution, deltas: dict[str, Delta]) -> None:
    """The changed elements: keys and values the renderer takes, a value exactly for elements of the
    maps ``c`` declares. All of a set's elements are looked at when its declaration is new or changed
    here; otherwise only the changed ones (the others passed before)."""
    decls, old_decls = {s.name: s for s in c.sets}, {s.name: s for s in old.sets}
    redeclared = {n for n, d in decls.items() if old_decls.get(n) != d}
    for set_name in deltas.keys() | redeclared:
        if set_name in redeclared or set_name not in deltas:
            elements: Mapping[str, Value] = c.elements.get(set_name, {})
        else:
            elements = deltas[set_name].given
        try:
            _check_elements(set_name, elements, decls.get(set_name))
        except (ValueError, InvalidArgument) as exc:
            raise ContributionConflict(f"contribution of {owner!r}: {exc}") from None


def _check_elements(set_name: str, elements: Mapping[str, Value], decl: Set | None) -> None:
    check_name(set_name, "set name")
    for key, value in elements.items():
        check_key(key)
        if value is not None:
            check_key(value, "map value")
        if decl is not None and (value is None) != (decl.value_type is None):
            kind = "a map needs" if decl.value_type else "a set takes no"
            raise ValueError(f"{set_name} element {key}: {kind} value")


def _check_parts(c: Contribution, old: Contribution) -> None:
    seen_chains, seen_sets = set(old.chains), set(old.sets)
    for chain in c.chains:
        if chain in seen_chains:
            continue
        check_name(chain.name, "chain name")
        base = (chain.type, chain.hook, chain.priority)
        if any(x is not None for x in base) and not all(x is not None for x in base):
            raise ValueError(f"chain {chain.name}: a base chain needs type, hook and priority")
        for rule in chain.rules:
            check_rule(rule)
    for decl in c.sets:
        if decl in seen_sets:
            continue
        check_name(decl.name, "set name")
        if not decl.type:
            raise ValueError(f"set {decl.name}: no type")
        values = () if decl.value_type is None else tuple(decl.value_type.split(" . "))
        for part in (*decl.type, *decl.flags, *values):
            check_name(part, "set type or flag")
        if decl.comment is not None:
            check_comment(decl.comment)
