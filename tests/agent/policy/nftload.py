"""TEST-ONLY: a whole contribution rendered as one ``nft -f`` script that replaces the table.

The compile tests (``test_compile_unit``, ``test_compile_oracle``) check that what the compiler
emits loads into a kernel, with no agent and no table writer in between: ``add table``, ``delete
table``, then the table with everything in it, in one transaction. The e2e tests go through the
real agent and its writer instead.
"""

from __future__ import annotations

from podnet.agent.policy import FAMILY, TABLE
from podnet.dataplane.contribution import Chain, Contribution, Set


def _chain(chain: Chain) -> list[str]:
    lines = [f"  chain {chain.name} {{"]
    if chain.hook:
        lines.append(f"    type {chain.type} hook {chain.hook} priority {chain.priority}; "
                     f"policy {chain.policy or 'accept'};")
    lines += [f"    {rule}" for rule in chain.rules]
    return [*lines, "  }"]


def _set(decl: Set, elements: dict[str, str | None]) -> list[str]:
    kind = "map" if decl.value_type else "set"
    typ = " . ".join(decl.type) + (f" : {decl.value_type}" if decl.value_type else "")
    lines = [f"  {kind} {decl.name} {{", f"    type {typ}"]
    if decl.flags:
        lines.append(f"    flags {', '.join(decl.flags)}")
    if decl.comment:
        lines.append(f'    comment "{decl.comment}"')
    if elements:
        items = [k if v is None else f"{k} : {v}" for k, v in elements.items()]
        lines.append(f"    elements = {{ {', '.join(items)} }}")
    return [*lines, "  }"]


def render(contribution: Contribution) -> str:
    lines = [f"add table {FAMILY} {TABLE}", f"delete table {FAMILY} {TABLE}", f"table {FAMILY} {TABLE} {{"]
    for decl in contribution.sets:
        lines += _set(decl, dict(contribution.elements.get(decl.name, {})))
    for chain in contribution.chains:
        lines += _chain(chain)
    return "\n".join([*lines, "}", ""])


def rule_count(contribution: Contribution) -> int:
    return sum(len(c.rules) for c in contribution.chains)


def element_count(contribution: Contribution) -> int:
    return sum(len(e) for e in contribution.elements.values())
