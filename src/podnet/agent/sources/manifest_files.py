"""One manifest file -> model values: YAML (multi-document) or JSON, ``kind: List`` unwrapped,
each object checked by ``agent.objects`` and against the Kubernetes OpenAPI schema (``schemas``).

A file that cannot be read or parsed as a whole raises :class:`Unreadable`: the caller keeps the
file's previous objects in force. Within a file that parses, a bad Pod, Namespace, EndpointSlice
or Node is reported and skipped, a bad NetworkPolicy is kept as a fail-closed one, a bad Service
is kept with its error (reported, not proxied), and kinds the agent does not read (Deployments,
ConfigMaps...) are ignored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml  # type: ignore[import-untyped]

from podnet.agent import objects
from podnet.agent.model import NetworkPolicy, Service
from podnet.agent.objects import Object, ObjectError, UnsupportedKind
from podnet.agent.sources import schemas

SUFFIXES = (".yaml", ".yml", ".json")
_MAX_BYTES = 64 << 20


class Unreadable(Exception):
    """The file as a whole cannot be used now (I/O, syntax, half-written): retry later."""


@dataclass
class Loaded:
    objects: list[Object] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def signature(st: os.stat_result) -> tuple[int, int, int, int]:
    """What changes whenever a file's content may have changed."""
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read_stable(path: str) -> tuple[bytes, tuple[int, int, int, int]]:
    """The file's bytes, only if it did not change while being read (a writer still at work
    would otherwise hand us a prefix that may well parse)."""
    try:
        with open(path, "rb") as fh:
            before = signature(os.fstat(fh.fileno()))
            data = fh.read(_MAX_BYTES + 1)
        after = signature(os.stat(path))
    except OSError as exc:
        raise Unreadable(f"cannot read: {exc.strerror or exc}") from None
    if len(data) > _MAX_BYTES:
        raise Unreadable(f"larger than {_MAX_BYTES} bytes")
    if before != after:
        raise Unreadable("changed while being read (still being written?)")
    return data, after


def _documents(path: str, data: bytes) -> list[Any]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unreadable(f"not UTF-8 text (byte {exc.start})") from None
    try:
        if path.endswith(".json"):
            return [json.loads(text)] if text.strip() else []
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except json.JSONDecodeError as exc:
        raise Unreadable(f"JSON syntax error at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise Unreadable(f"YAML syntax error{where}: {problem}") from None
    except RecursionError:
        raise Unreadable("nested too deeply") from None


def _flatten(docs: list[Any]) -> Iterator[tuple[str, Any]]:
    """(position, raw object) for every object, ``kind: List`` (and ``*List``) unwrapped."""
    for i, doc in enumerate(docs):
        kind = doc.get("kind") if isinstance(doc, Mapping) else None
        if isinstance(kind, str) and kind.endswith("List") and "items" in doc:
            items = doc["items"]
            if not isinstance(items, list):
                raise Unreadable(f"document {i + 1}: items of a {kind} must be a list")
            for j, item in enumerate(items):
                yield f"document {i + 1} item {j + 1}", item
        else:
            yield f"document {i + 1}", doc


def _label(raw: Mapping[str, Any]) -> str:
    meta = raw.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    ns = meta.get("namespace") if isinstance(meta, Mapping) else None
    prefix = f"{ns}/" if isinstance(ns, str) else ""
    return f"{raw.get('kind')} {prefix}{name if isinstance(name, str) else '?'}"


def _one(where: str, raw: Any, loaded: Loaded, kinds: Collection[objects.Kind] | None) -> None:
    if kinds is not None and isinstance(raw, Mapping) and objects.kind_named(raw) not in kinds:
        return  # a kind this source does not feed: neither parsed nor reported
    try:
        obj = objects.parse_object(raw)
    except UnsupportedKind:
        return
    except ObjectError as exc:
        loaded.errors.append(f"{where}: {exc}")
        return
    assert isinstance(raw, Mapping)  # parse_object accepted it
    problem = schemas.schema_error(raw)
    if problem is None:
        loaded.objects.append(obj)
        error = obj.error if isinstance(obj, NetworkPolicy | Service) else None
        if error:
            loaded.errors.append(f"{where}: {_label(raw)}: {error}{_consequence(obj)}")
        return
    stand_in = objects.failed_object(objects.kind_of(obj), raw, problem)
    loaded.errors.append(f"{where}: {_label(raw)}: {problem}"
                         + (_consequence(stand_in) if stand_in is not None else " (skipped)"))
    if stand_in is not None:
        loaded.objects.append(stand_in)


def _consequence(obj: Object) -> str:
    return " (enforced fail-closed)" if isinstance(obj, NetworkPolicy) else " (not proxied)"


def load(path: str,
         kinds: Collection[objects.Kind] | None = None) -> tuple[Loaded, tuple[int, int, int, int]]:
    """The objects of one file (of ``kinds`` only, when given) and the signature of the content
    they came from."""
    data, sig = _read_stable(path)
    loaded = Loaded()
    for where, raw in _flatten(_documents(path, data)):
        _one(where, raw, loaded, kinds)
    return loaded, sig
