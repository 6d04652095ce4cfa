"""A table as the kernel holds it, parsed from ``nft -j list table`` (binary or libnftables).

Element keys and map values come back in the renderer's text form (``10.1.0.5 . 10.1.0.0/24``,
``"eth0"``, ``goto c``) so they compare with what was written. Rules come back as their handles
(unique in a table, never reused, new for every rule the kernel adds) and a canonical text of their
expression, which is enough to tell that a rule was added or deleted by someone else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from podnet.kernel.nft.errors import NftError


@dataclass(frozen=True)
class Element:
    key: str  # as the renderer writes it: "10.1.0.5", "10.1.0.5 . 10.1.0.0/24"
    comment: str | None = None
    value: str | None = None  # a map element's value ("accept", "goto c", "10.0.0.1")
    # Elements with their own timeout (dynamic sets the packet path fills): the timeout and the time
    # left, in milliseconds (nft -j gives whole seconds, cut down).
    timeout_ms: int | None = None
    expires_ms: int | None = None


@dataclass
class SetState:
    name: str
    type: str
    flags: tuple[str, ...] = ()
    elements: list[Element] = field(default_factory=list)
    value_type: str | None = None  # maps only


@dataclass
class ChainState:
    name: str
    spec: dict[str, str] = field(default_factory=dict)  # type, hook, priority, policy (base chains)
    rules: list[str] = field(default_factory=list)  # rule text (fake) or canonical expression (kernel)
    handles: list[int] = field(default_factory=list)


@dataclass
class TableState:
    family: str
    name: str
    chains: dict[str, list[str]] = field(default_factory=dict)  # name -> rules (see ChainState.rules)
    sets: dict[str, SetState] = field(default_factory=dict)
    chain_states: dict[str, ChainState] = field(default_factory=dict)

    def elements(self, set_name: str) -> list[Element]:
        found = self.sets.get(set_name)
        return list(found.elements) if found is not None else []

    def handles(self, chain: str) -> list[int]:
        found = self.chain_states.get(chain)
        return list(found.handles) if found is not None else []


# Set key types whose values nft writes as quoted strings in a script.
_STRING_TYPES = frozenset({"ifname", "string"})
_VERDICTS = ("accept", "drop", "continue", "return", "reject")


def _value(obj: Any, kind: str = "") -> str:
    """One element value from nft's JSON back into the renderer's text form (``kind``: the key type)."""
    if isinstance(obj, str):
        return f'"{obj}"' if kind in _STRING_TYPES else obj
    if isinstance(obj, int):
        return str(obj)
    if isinstance(obj, dict):
        if "concat" in obj:
            kinds = kind.split(" . ")
            kinds += [""] * (len(obj["concat"]) - len(kinds))
            return " . ".join(_value(x, k) for x, k in zip(obj["concat"], kinds, strict=False))
        if "prefix" in obj:
            return f"{_value(obj['prefix']['addr'])}/{obj['prefix']['len']}"
        if "range" in obj:
            low, high = obj["range"]
            return f"{_value(low, kind)}-{_value(high, kind)}"
        for verdict in _VERDICTS:
            if verdict in obj:
                return verdict
        for verb in ("goto", "jump"):
            if verb in obj and isinstance(obj[verb], dict):
                return f"{verb} {obj[verb]['target']}"
    raise NftError("nft -j: unexpected element value", json.dumps(obj)[:200])


def _millis(raw: Any) -> int | None:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    return int(raw * 1000)


def _element(obj: Any, kind: str, value_type: str | None) -> Element:
    value: str | None = None
    if value_type is not None and isinstance(obj, list) and len(obj) == 2:
        obj, raw = obj
        value = _value(raw, value_type)
    if isinstance(obj, dict) and "elem" in obj:
        inner = obj["elem"]
        comment = inner.get("comment")
        return Element(_value(inner["val"], kind), comment if isinstance(comment, str) else None, value,
                       _millis(inner.get("timeout")), _millis(inner.get("expires")))
    return Element(_value(obj, kind), None, value)


def _type_text(raw: Any) -> str:
    return " . ".join(str(t) for t in raw) if isinstance(raw, list) else str(raw)


def _set(raw: dict[str, Any]) -> SetState:
    kind = _type_text(raw.get("type", ""))
    value_type = _type_text(raw["map"]) if "map" in raw else None
    flags = raw.get("flags", [])
    return SetState(name=raw["name"], type=kind, value_type=value_type,
                    flags=tuple(flags) if isinstance(flags, list) else (str(flags),),
                    elements=[_element(e, kind, value_type) for e in raw.get("elem", [])])


def _chain(raw: dict[str, Any]) -> ChainState:
    spec = {k: str(raw[j]) for k, j in (("type", "type"), ("hook", "hook"), ("priority", "prio"),
                                        ("policy", "policy")) if j in raw}
    return ChainState(raw["name"], spec)


def _add_rule(state: TableState, raw: dict[str, Any]) -> None:
    chain = state.chain_states.setdefault(raw["chain"], ChainState(raw["chain"]))
    text = json.dumps({"expr": raw.get("expr", []), "comment": raw.get("comment")}, sort_keys=True)
    chain.rules.append(text)
    chain.handles.append(int(raw.get("handle", 0)))
    state.chains.setdefault(raw["chain"], []).append(text)


def parse_table_json(text: str, family: str, table: str) -> TableState:
    """Parse ``nft -j list table FAMILY TABLE`` output."""
    try:
        doc = json.loads(text)
        items = doc["nftables"]
        state = TableState(family, table)
        for item in items:
            if "chain" in item:
                chain = _chain(item["chain"])
                state.chain_states[chain.name] = chain
                state.chains.setdefault(chain.name, [])
            elif "set" in item or "map" in item:
                found = _set(item.get("set") or item["map"])
                state.sets[found.name] = found
            elif "rule" in item:
                _add_rule(state, item["rule"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise NftError(f"nft -j list table {family} {table}: unreadable output", str(exc)) from None
    return state
