"""An incremental transaction cut into up to three, applied one after the other: make, switch, break.

One nf_tables transaction is atomic for the ruleset, not for a packet that is inside the table while
it commits. A packet takes every rule it runs from the generation that was current when it entered
the base chain (chains it jumps or goes to included), but each set or map lookup reads the
generation current at that lookup. A connection's first packet that enters just before a commit and
looks up a map just after it therefore follows new map elements with old rules:

* a new element naming a chain created in the same transaction leads to that chain's rules of the
  old generation: none, so the packet falls through it (a Service's SYN not DNATed, routed
  untranslated: the client gets "network unreachable");
* an old element leads to a chain deleted in the same transaction, whose rules' anonymous maps are
  gone in the new generation (``numgen ... vmap { ... }`` matches nothing);
* an old element leads to a rule that looks up a data map (an endpoint slot) whose element the same
  transaction deletes.

Applied in three steps, no packet sees a path that is not whole: first what nothing uses yet (new
chains with their rules, new sets with their elements), then everything else (the switch), last
what nothing uses any more (chains and sets going away, and data map elements going away, which
rules reach only through a verdict the switch has changed). Each step is one atomic transaction
and each state between them is a working table. Element deletions in sets and verdict maps stay
with the switch: deferring them would leave both the old and the new decision in force for a
moment (an address in two policies' sets).
"""

from __future__ import annotations

from collections.abc import Mapping

from podnet.dataplane.contribution import Set
from podnet.kernel.nft import Transaction
from podnet.kernel.nft.transaction import Op

_KNOWN = frozenset({"add-chain", "add-set", "add-map", "flush-chain", "delete-element", "delete-set",
                    "delete-chain", "add-elements", "add-element", "add-rule"})


def phases(tx: Transaction, sets: Mapping[str, Set]) -> list[Transaction]:
    """``tx`` (an incremental transaction of the writer, over a table whose sets are ``sets``) as
    make, switch and break transactions; empty ones left out. ``[tx]`` unchanged when it holds a
    command this does not know or re-declares a set (the old set's rules must go first)."""
    ops = tx.ops
    if any(op.verb not in _KNOWN for op in ops):
        return [tx]
    new_chains = {op.name for op in ops if op.verb == "add-chain"}
    gone_chains = {op.name for op in ops if op.verb == "delete-chain"}
    declared = {op.name for op in ops if op.verb in ("add-set", "add-map")}
    gone_sets = {op.name for op in ops if op.verb == "delete-set"}
    if declared & gone_sets:
        return [tx]
    added = {(op.name, key) for op in ops for key in _keys(op)}
    make, switch, later = [], [], []
    for op in ops:
        if op.verb in ("add-chain", "add-set", "add-map") or (
                op.name in new_chains and op.verb == "add-rule") or (
                op.name in declared and op.verb in ("add-element", "add-elements")):
            make.append(op)
        elif op.name in gone_chains or op.verb == "delete-set" or (
                op.verb == "delete-element" and (op.name, op.value) not in added
                and _data_map(sets.get(op.name))):
            later.append(op)
        else:
            switch.append(op)
    parts = [Transaction(tx.family, tx.table, part) for part in (make, switch, later) if part]
    return parts if len(parts) > 1 else [tx]


def _keys(op: Op) -> list[str]:
    if op.verb == "add-element":
        return [op.value]
    if op.verb == "add-elements":
        return [key for key, _ in op.items]
    return []


def _data_map(decl: Set | None) -> bool:
    """A map whose values are data (an endpoint's address and port), looked up by a rule that only
    a verdict leads to."""
    return decl is not None and decl.value_type not in (None, "verdict")
