"""In-memory tables with the kernel's semantics for every command :class:`Transaction` has: a batch
lands whole or not at all, a missing object is NftNotFound, a chain or set still in use cannot be
deleted, rules get fresh handles. Unit tests run the real logic against it."""

from __future__ import annotations

import copy
import itertools
import re

from podnet.kernel.nft.errors import NftError, NftExists, NftNotFound
from podnet.kernel.nft.state import ChainState, Element, SetState, TableState
from podnet.kernel.nft.transaction import Family, Op, Transaction

_SET_REF = re.compile(r"@([A-Za-z][A-Za-z0-9_-]*)")
_CHAIN_REF = re.compile(r"\b(?:jump|goto)\s+([A-Za-z][A-Za-z0-9_-]*)")


class FakeNft:
    """In-memory tables with nft's semantics for the operations :class:`Transaction` has."""

    def __init__(self) -> None:
        self.tables: dict[tuple[str, str], TableState] = {}
        self.applied: list[str] = []  # rendered scripts, in order
        self.fail_next: NftError | None = None  # injected failure for the next apply
        self._handles = itertools.count(1)

    def apply(self, tx: Transaction) -> None:
        if self.fail_next is not None:
            err, self.fail_next = self.fail_next, None
            raise err
        tables = copy.deepcopy(self.tables)
        for op in tx.ops:
            _FakeOp(tables, tx.family, tx.table, op, self._handles).run()
        self.tables = tables  # all or nothing, like the kernel's batch
        self.applied.append(tx.render())

    def list_table(self, family: Family, table: str, *, elements: bool = True) -> TableState | None:
        found = copy.deepcopy(self.tables.get((family, table)))
        if found is not None and not elements:
            for s in found.sets.values():
                s.elements = []
        return found

    def has_table(self, family: Family, table: str) -> bool:
        return (family, table) in self.tables


class _FakeOp:
    def __init__(self, tables: dict[tuple[str, str], TableState], family: str, table: str, op: Op,
                 handles: itertools.count[int]) -> None:
        self.tables, self.key, self.op, self.handles = tables, (family, table), op, handles

    def fail(self, klass: type[NftError] = NftNotFound, why: str = "no such file or directory") -> NftError:
        return klass(f"nft: {self.op.verb} {self.op.name or self.key[1]}: {why}")

    def run(self) -> None:
        op = self.op
        if op.verb == "add-table":
            self.tables.setdefault(self.key, TableState(*self.key))
            return
        state = self.tables.get(self.key)
        if state is None:
            raise self.fail()
        if op.verb == "delete-table":
            del self.tables[self.key]
        elif op.verb in ("add-chain", "create-chain", "delete-chain", "flush-chain"):
            self.chain(state)
        elif op.verb in ("add-rule", "delete-rule"):
            self.rule(state)
        elif op.verb in ("add-set", "add-map", "delete-set", "flush-set"):
            self.set(state)
        else:
            self.element(state)

    def chain(self, state: TableState) -> None:
        op, exists = self.op, self.op.name in state.chains
        if op.verb == "create-chain" and exists:
            raise self.fail(NftExists, "file exists")
        if op.verb in ("add-chain", "create-chain"):
            if not exists:
                state.chains[op.name] = []
                state.chain_states[op.name] = ChainState(op.name, dict(op.spec))
            return
        if not exists:
            raise self.fail()
        if op.verb == "flush-chain":
            state.chains[op.name] = []
            state.chain_states[op.name].rules, state.chain_states[op.name].handles = [], []
            return
        if state.chains[op.name] or _chain_used(state, op.name):
            raise self.fail(NftError, "device or resource busy")
        del state.chains[op.name], state.chain_states[op.name]

    def rule(self, state: TableState) -> None:
        op = self.op
        chain = state.chain_states.get(op.name)
        if chain is None:
            raise self.fail()
        if op.verb == "delete-rule":
            if int(op.value) not in chain.handles:
                raise self.fail()
            index = chain.handles.index(int(op.value))
            del chain.rules[index], chain.handles[index]
        else:
            missing = [s for s in _SET_REF.findall(op.value) if s not in state.sets]
            missing += [c for c in _CHAIN_REF.findall(op.value) if c not in state.chains]
            if missing:
                raise self.fail(why=f"no such file or directory ({', '.join(missing)})")
            chain.rules.append(op.value)
            chain.handles.append(next(self.handles))
        state.chains[op.name] = list(chain.rules)

    def set(self, state: TableState) -> None:
        op = self.op
        if op.verb in ("add-set", "add-map"):
            spec = dict(op.spec)
            flags = tuple(f.strip() for f in spec.get("flags", "").split(",") if f.strip())
            found = SetState(op.name, spec["type"], flags, value_type=spec.get("value"))
            state.sets.setdefault(op.name, found)
            return
        if op.name not in state.sets:
            raise self.fail()
        if op.verb == "flush-set":
            state.sets[op.name].elements = []
        elif any(op.name in _SET_REF.findall(rule) for rules in state.chains.values() for rule in rules):
            raise self.fail(NftError, "device or resource busy")
        else:
            del state.sets[op.name]

    def element(self, state: TableState) -> None:
        if self.op.verb != "add-elements":
            self.one_element(state, self.op)
            return
        for key, value in self.op.items:
            self.one_element(state, Op("add-element", self.op.name, key, data=value))

    def one_element(self, state: TableState, op: Op) -> None:
        target = state.sets.get(op.name)
        if target is None:
            raise self.fail()
        index = next((i for i, e in enumerate(target.elements) if e.key == op.value), None)
        if op.verb == "delete-element":
            if index is None:
                raise self.fail()
            del target.elements[index]
            return
        if (op.data is None) != (target.value_type is None):
            raise self.fail(NftError, "map elements need a value, set elements none")
        if op.data is not None and any(c not in state.chains for c in _CHAIN_REF.findall(op.data)):
            raise self.fail()
        if index is None:
            target.elements.append(Element(op.value, op.comment, op.data))
        elif target.elements[index].value != op.data:
            raise self.fail(NftError, "device or resource busy")  # the kernel's answer to a clash


def _chain_used(state: TableState, name: str) -> bool:
    jumps = any(name in _CHAIN_REF.findall(rule) for rules in state.chains.values() for rule in rules)
    return jumps or any(e.value is not None and name in _CHAIN_REF.findall(e.value)
                        for s in state.sets.values() for e in s.elements)
