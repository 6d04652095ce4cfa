"""The service contribution in parts: the fixed part and one part per service, joined into the one
contribution the writer takes, and kept joined between syncs so a change costs what it touches."""

from __future__ import annotations

from collections.abc import Mapping

from podnet.agent.services.endpoints import Target
from podnet.dataplane.contribution import Chain, Contribution, Set


class Part:
    """One part of the contribution: the fixed part, or one service's."""

    def __init__(self) -> None:
        self.chains: dict[str, Chain] = {}
        self.sets: list[Set] = []
        self.elements: dict[str, dict[str, str | None]] = {}
        self.targets: frozenset[Target] = frozenset()  # the endpoints this part DNATs to

    def add_set(self, decl: Set, elements: dict[str, str | None] | None = None) -> None:
        self.sets.append(decl)
        self.elements[decl.name] = {} if elements is None else elements

    def add_chain(self, chain: Chain) -> None:
        self.chains[chain.name] = chain

    def put(self, set_name: str) -> dict[str, str | None]:
        return self.elements.setdefault(set_name, {})


PartKey = tuple[str, str]
FIXED_PART: PartKey = ("", "")  # sorts before every service: a service's value wins a shared key


class Assembly:
    """The contribution joined from its parts, kept between syncs: a sync that changed a few parts
    costs those parts plus copies of the mappings they touch. Mappings handed over are never
    changed afterwards (the writer compares them with the next ones). A key given by several parts
    (an ExternalIP of two services) stays while any gives it; its value is that of the last part
    in key order, as a compile from scratch would have it."""

    def __init__(self) -> None:
        self.parts: dict[PartKey, Part] = {}
        self.chains: dict[str, Chain] = {}
        self.sets: dict[str, Set] = {}
        # Chains and sets many parts declare alike (the shared pick chains) stay while any does.
        self.declared_by: dict[str, set[PartKey]] = {}  # chain or set name -> parts declaring it
        self.elements: dict[str, dict[str, str | None]] = {}
        self.givers: dict[str, dict[str, dict[PartKey, str | None]]] = {}  # set -> key -> part -> value
        self.result = Contribution()

    def replace(self, changes: Mapping[PartKey, Part | None]) -> Contribution:
        """The contribution with these parts replaced (None: the part is gone); the others stay."""
        changed = sorted(k for k, part in changes.items() if self.parts.get(k) is not part)
        if not changed:
            return self.result
        touched: dict[str, dict[str, str | None]] = {}
        for key in changed:
            if key in self.parts:
                self._remove(key, self.parts.pop(key), touched)
        for key in changed:
            part = changes[key]
            if part is not None:
                self.parts[key] = part
                self._add(key, part, touched)
        elements = {**self.elements, **touched}
        self.elements = {n: e for n, e in elements.items() if e or n in self.sets}  # a set gone goes
        self.result = Contribution(tuple(self.chains.values()), tuple(self.sets.values()), self.elements)
        return self.result

    def _undeclare(self, name: str, key: PartKey) -> bool:
        """Whether the last part declaring ``name`` has just let it go."""
        parts = self.declared_by.get(name, set())
        parts.discard(key)
        if parts:
            return False
        self.declared_by.pop(name, None)
        return True

    def _table(self, name: str, touched: dict[str, dict[str, str | None]]) -> dict[str, str | None]:
        if name not in touched:
            touched[name] = dict(self.elements.get(name, {}))
        return touched[name]

    def _remove(self, key: PartKey, part: Part, touched: dict[str, dict[str, str | None]]) -> None:
        for name in part.chains:
            if self._undeclare(name, key):
                self.chains.pop(name, None)
        for decl in part.sets:
            if self._undeclare(decl.name, key):
                self.sets.pop(decl.name, None)
        for set_name, items in part.elements.items():
            table, givers = self._table(set_name, touched), self.givers[set_name]
            for element in items:
                mine = givers[element]
                del mine[key]
                if mine:
                    table[element] = mine[max(mine)]
                else:
                    del givers[element], table[element]

    def _add(self, key: PartKey, part: Part, touched: dict[str, dict[str, str | None]]) -> None:
        self.chains.update(part.chains)
        self.sets.update((d.name, d) for d in part.sets)
        for name in (*part.chains, *(d.name for d in part.sets)):
            self.declared_by.setdefault(name, set()).add(key)
        for set_name, items in part.elements.items():
            table, givers = self._table(set_name, touched), self.givers.setdefault(set_name, {})
            for element, value in items.items():
                mine = givers.setdefault(element, {})
                mine[key] = value
                table[element] = mine[max(mine)]
