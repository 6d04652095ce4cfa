"""nftables transactions built as data: commands for one table, validated when added, rendered as an
``nft -f`` script, applied whole or not at all by a backend (the kernel commits an nft batch
atomically, and nft replays it by itself when another writer committed in between).

Commands stay data (:class:`Op`) so the fake backend applies exactly what the real one would.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from podnet.kernel.errors import InvalidArgument

Family = Literal["ip", "ip6", "inet", "arp", "bridge", "netdev"]
FAMILIES: tuple[str, ...] = ("ip", "ip6", "inet", "arp", "bridge", "netdev")
# nft refuses longer comments (NFTNL_UDATA_COMMENT_MAXLEN).
COMMENT_MAX = 128
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
# What may appear inside a double-quoted nft string: nft has no escape for '"' or newlines.
_COMMENT_BAD = re.compile(r'["\n\r\\\x00]')
# Element keys are values such as 10.1.0.5, fd00::/64, "10.1.0.5 . 10.1.0.0/24", ifname strings.
_KEY_BAD = re.compile(r"[{};#\n\r\x00]")
_RULE_BAD = re.compile(r"[\n\r;#\x00]")

Verb = Literal["add-table", "delete-table", "add-chain", "create-chain", "delete-chain", "flush-chain",
               "add-rule", "delete-rule", "add-set", "add-map", "delete-set", "flush-set",
               "add-element", "add-elements", "delete-element"]


def check_name(name: str, what: str = "name") -> str:
    if not _NAME.fullmatch(name):
        raise InvalidArgument(f"nftables {what} {name!r}: use letters, digits, '-' and '_' (max 64)")
    return name


def check_comment(comment: str) -> str:
    if _COMMENT_BAD.search(comment) or len(comment.encode()) >= COMMENT_MAX:
        raise InvalidArgument(f"nftables comment {comment!r}: no quotes, backslashes or newlines, "
                              f"shorter than {COMMENT_MAX} bytes")
    return comment


def check_key(key: str, what: str = "element") -> str:
    if not key.strip() or _KEY_BAD.search(key):
        raise InvalidArgument(f"nftables {what} {key!r}: not a plain value")
    return key


def check_rule(rule: str) -> str:
    if not rule.strip() or _RULE_BAD.search(rule):
        raise InvalidArgument(f"nftables rule {rule!r}: one non-empty command (no ';', '#', newlines)")
    return rule


def check_family(family: str) -> str:
    if family not in FAMILIES:
        raise InvalidArgument(f"nftables family {family!r}: expected one of {', '.join(FAMILIES)}")
    return family


def _comment(comment: str | None) -> str:
    return "" if comment is None else f' comment "{check_comment(comment)}"'


@dataclass(frozen=True)
class Op:
    """One command of a transaction (kept as data so the fake can apply it)."""

    verb: Verb
    name: str = ""  # chain, set or map name
    value: str = ""  # rule text, element key, or rule handle
    comment: str | None = None
    spec: tuple[tuple[str, str], ...] = ()  # chain base spec / set type, value type and flags
    data: str | None = None  # a map element's value
    items: tuple[tuple[str, str | None], ...] = ()  # add-elements: (key, map value or None)


def _types(type: str | Sequence[str]) -> str:
    types = tuple(type.split(" . ")) if isinstance(type, str) else tuple(type)
    if not types:
        raise InvalidArgument("nftables set type: empty")
    return " . ".join(check_name(t, "set type") for t in types)


@dataclass
class Transaction:
    """Commands for one table, applied together by :meth:`Nft.apply`."""

    family: Family
    table: str
    ops: list[Op] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_family(self.family)
        check_name(self.table, "table name")

    def _push(self, op: Op) -> Transaction:
        """Everything is validated when the command is added, so render() cannot fail."""
        if op.comment is not None:
            check_comment(op.comment)
        self.ops.append(op)
        return self

    def add_table(self, comment: str | None = None) -> Transaction:
        """Create the table if missing ("add" never fails for an existing object)."""
        return self._push(Op("add-table", comment=comment))

    def delete_table(self) -> Transaction:
        return self._push(Op("delete-table"))

    def add_chain(self, name: str, *, type: str | None = None, hook: str | None = None,
                  priority: str | int | None = None, policy: str | None = None,
                  comment: str | None = None) -> Transaction:
        """A regular chain, or a base chain when ``type``/``hook``/``priority`` are given."""
        return self._push(Op("add-chain", check_name(name, "chain name"), comment=comment,
                             spec=_chain_spec(name, type, hook, priority, policy)))

    def create_chain(self, name: str, *, type: str | None = None, hook: str | None = None,
                     priority: str | int | None = None, policy: str | None = None,
                     comment: str | None = None) -> Transaction:
        """Like :meth:`add_chain`, but the transaction fails (NftExists) if the chain exists:
        the first of several concurrent creators wins, and only it adds the chain's rules."""
        return self._push(Op("create-chain", check_name(name, "chain name"), comment=comment,
                             spec=_chain_spec(name, type, hook, priority, policy)))

    def delete_chain(self, name: str) -> Transaction:
        """Delete a chain: it must be empty and nothing may jump to it."""
        return self._push(Op("delete-chain", check_name(name, "chain name")))

    def flush_chain(self, name: str) -> Transaction:
        return self._push(Op("flush-chain", check_name(name, "chain name")))

    def add_rule(self, chain: str, rule: str, comment: str | None = None) -> Transaction:
        return self._push(Op("add-rule", check_name(chain, "chain name"), check_rule(rule), comment))

    def delete_rule(self, chain: str, handle: int) -> Transaction:
        if isinstance(handle, bool) or not isinstance(handle, int) or handle <= 0:
            raise InvalidArgument(f"nftables rule handle {handle!r}: a positive integer")
        return self._push(Op("delete-rule", check_name(chain, "chain name"), str(handle)))

    def add_set(self, name: str, type: str | Sequence[str], *, flags: Sequence[str] = (),
                comment: str | None = None) -> Transaction:
        spec: tuple[tuple[str, str], ...] = (("type", _types(type)),)
        if flags:
            spec += (("flags", ", ".join(check_name(f, "set flag") for f in flags)),)
        return self._push(Op("add-set", check_name(name, "set name"), comment=comment, spec=spec))

    def add_map(self, name: str, type: str | Sequence[str], value_type: str | Sequence[str], *,
                flags: Sequence[str] = (), comment: str | None = None) -> Transaction:
        """A map from ``type`` to ``value_type`` (``verdict`` for a verdict map; a concatenation,
        ``"ipv4_addr . inet_service"``, for a DNAT target)."""
        spec: tuple[tuple[str, str], ...] = (("type", _types(type)), ("value", _types(value_type)))
        if flags:
            spec += (("flags", ", ".join(check_name(f, "set flag") for f in flags)),)
        return self._push(Op("add-map", check_name(name, "map name"), comment=comment, spec=spec))

    def delete_set(self, name: str) -> Transaction:
        """Delete a set or a map (no rule may still refer to it)."""
        return self._push(Op("delete-set", check_name(name, "set name")))

    def flush_set(self, name: str) -> Transaction:
        """Remove every element of a set or map."""
        return self._push(Op("flush-set", check_name(name, "set name")))

    def add_element(self, set_name: str, key: str, comment: str | None = None, *,
                    value: str | None = None) -> Transaction:
        """Add an element (a map element when ``value`` is given); an existing equal element is left
        as it is (its comment too)."""
        data = None if value is None else check_key(value, "map value")
        return self._push(Op("add-element", check_name(set_name, "set name"), check_key(key), comment,
                             data=data))

    def add_elements(self, set_name: str, items: Iterable[tuple[str, str | None]]) -> Transaction:
        """Many elements (no comments) in one command: a whole set's worth is validated with one
        pattern search over all keys and values, not one per element."""
        items = tuple(items)
        if not items:
            return self
        keys = [k for k, _ in items]
        values = [v for _, v in items if v is not None]
        if _KEY_BAD.search("\x01".join(keys + values)) or not all(k.strip() for k in keys) or \
                not all(v.strip() for v in values):
            bad = next(k for k in keys + values if not k.strip() or _KEY_BAD.search(k))
            raise InvalidArgument(f"nftables element {bad!r}: not a plain value")
        return self._push(Op("add-elements", check_name(set_name, "set name"), items=items))

    def delete_element(self, set_name: str, key: str) -> Transaction:
        """Delete an element: the whole transaction fails (NftNotFound) if it is not there."""
        return self._push(Op("delete-element", check_name(set_name, "set name"), check_key(key)))

    def set_element(self, set_name: str, key: str, comment: str | None = None) -> Transaction:
        """The element, with exactly this comment, whether or not it existed.

        nft has no "replace element": add (no-op if present) + delete (now always succeeds) +
        add leaves one element carrying the new comment, all in this one transaction.
        """
        return (self.add_element(set_name, key).delete_element(set_name, key)
                .add_element(set_name, key, comment))

    def remove_element(self, set_name: str, key: str) -> Transaction:
        """Delete an element whether or not it still exists (a concurrent DEL may have won):
        the add makes the delete unable to fail."""
        return self.add_element(set_name, key).delete_element(set_name, key)

    def extend(self, other: Transaction) -> Transaction:
        """Append another transaction's commands (same table)."""
        if (other.family, other.table) != (self.family, self.table):
            raise InvalidArgument(f"nftables: cannot join {other.family} {other.table} into "
                                  f"{self.family} {self.table}")
        self.ops.extend(other.ops)
        return self

    def render(self) -> str:
        """The script. A run of element adds (or deletes) on one set becomes one command: nft parses
        and sends one command with many elements far faster than many commands."""
        lines = []
        for group in _element_runs(self.ops):
            if len(group) == 1:
                lines.append(render_op(self.family, self.table, group[0]))
            else:
                verb = "add" if group[0].verb == "add-element" else "delete"
                items = ", ".join(_element_item(op) for op in group)
                lines.append(f"{verb} element {self.family} {self.table} {group[0].name} {{ {items} }}")
        return "".join(f"{line}\n" for line in lines)

    def __bool__(self) -> bool:
        return bool(self.ops)


def _element_runs(ops: list[Op]) -> list[list[Op]]:
    runs: list[list[Op]] = []
    keys: set[str] = set()
    for op in ops:
        last = runs[-1][-1] if runs else None
        joins = (last is not None and op.verb in ("add-element", "delete-element")
                 and (op.verb, op.name) == (last.verb, last.name) and op.value not in keys)
        if joins:
            runs[-1].append(op)
        else:
            runs.append([op])
            keys = set()
        keys.add(op.value)
    return runs


def _element_item(op: Op) -> str:
    value = "" if op.data is None else f" : {op.data}"
    return f"{op.value}{_comment(op.comment)}{value}"


def _chain_spec(name: str, type: str | None, hook: str | None, priority: str | int | None,
                policy: str | None) -> tuple[tuple[str, str], ...]:
    base = (type, hook, priority)
    if any(x is not None for x in base) and not all(x is not None for x in base):
        raise InvalidArgument(f"nftables chain {name}: a base chain needs type, hook and priority")
    spec = tuple((k, str(v)) for k, v in (("type", type), ("hook", hook), ("priority", priority),
                                          ("policy", policy)) if v is not None)
    for _, v in spec:
        check_key(v, "chain property")
    return spec


def render_op(family: str, table: str, op: Op) -> str:
    where = f"{family} {table}"
    simple = {"delete-table": f"delete table {where}", "delete-chain": f"delete chain {where} {op.name}",
              "flush-chain": f"flush chain {where} {op.name}", "flush-set": f"flush set {where} {op.name}",
              "delete-set": f"delete set {where} {op.name}",
              "delete-rule": f"delete rule {where} {op.name} handle {op.value}",
              "delete-element": f"delete element {where} {op.name} {{ {op.value} }}"}
    if op.verb in simple:
        return simple[op.verb]
    if op.verb == "add-elements":
        items = ", ".join(k if v is None else f"{k} : {v}" for k, v in op.items)
        return f"add element {where} {op.name} {{ {items} }}"
    if op.verb == "add-table":
        body = f" {{{_comment(op.comment)}; }}" if op.comment is not None else ""
        return f"add table {where}{body}"
    if op.verb in ("add-chain", "create-chain"):
        return f"{op.verb.split('-')[0]} chain {where} {op.name}{_chain_body(op)}"
    if op.verb == "add-rule":
        return f"add rule {where} {op.name} {op.value}{_comment(op.comment)}"
    if op.verb in ("add-set", "add-map"):
        return f"add {op.verb[4:]} {where} {op.name} {{ {_set_body(op)} }}"
    return f"add element {where} {op.name} {{ {_element_item(op)} }}"


def _set_body(op: Op) -> str:
    spec = dict(op.spec)
    kind = spec["type"] if "value" not in spec else f"{spec['type']} : {spec['value']}"
    lines = [f"type {kind};"]
    if "flags" in spec:
        lines.append(f"flags {spec['flags']};")
    if op.comment is not None:
        lines.append(f"{_comment(op.comment).strip()};")
    return " ".join(lines)


def _chain_body(op: Op) -> str:
    spec = dict(op.spec)
    parts = []
    if "type" in spec:
        parts.append(f"type {spec['type']} hook {spec['hook']} priority {spec['priority']};")
    if "policy" in spec:
        parts.append(f"policy {spec['policy']};")
    if op.comment is not None:
        parts.append(f"{_comment(op.comment).strip()};")
    return f" {{ {' '.join(parts)} }}" if parts else ""
