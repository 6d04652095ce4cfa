"""Strict JSON decoding for everything podnet reads from callers and plugins.

Python's json accepts NaN/Infinity (not JSON; Go plugins reject them) and raises RecursionError on
deeply nested input; both become a decoding error (code 6) naming what was being read.

Bytes must be UTF-8, as the CNI spec says: ``json.loads`` on bytes would guess UTF-16 or UTF-32
from the NUL bytes and strip a UTF-8 byte order mark. A UTF-8 BOM is refused too: RFC 8259 forbids
sending one and Go's encoding/json (libcni and the Go plugins) rejects it, so a config podnet took
would fail in a Go plugin of the same chain.
"""

from __future__ import annotations

import codecs
import json
from typing import Any

from podnet.cni.errors import DecodingFailure

# Longest first: a UTF-32LE BOM starts with the UTF-16LE one.
_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"), (codecs.BOM_UTF16_LE, "UTF-16"),
         (codecs.BOM_UTF16_BE, "UTF-16"), (codecs.BOM_UTF8, "UTF-8 with a byte order mark"))


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _wide_encoding(data: bytes) -> str | None:
    """UTF-16/32 by its BOM or its NUL bytes (JSON text never holds a raw NUL in UTF-8)."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            return name
    if b"\0" not in data:
        return None
    head = data[:4].ljust(4, b"\1")
    if head[0] == 0:
        return "UTF-32BE" if head[1] == 0 else "UTF-16BE"
    if head[1] == 0:
        return "UTF-32LE" if head[2] == 0 and head[3] == 0 else "UTF-16LE"
    return "not text (it holds NUL bytes)"


def utf8_text(data: bytes, what: str) -> str:
    """``data`` as text, or code 6 saying why it is not UTF-8 JSON."""
    found = _wide_encoding(data)
    if found is not None:
        raise DecodingFailure(f"cannot parse {what}: it must be UTF-8 without a byte order mark",
                              f"found {found}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodingFailure(f"cannot parse {what}", f"not valid UTF-8: {exc}") from None


def load_json(data: bytes | str, what: str) -> Any:
    text = utf8_text(data, what) if isinstance(data, bytes) else data
    try:
        return json.loads(text, parse_constant=_no_constants)
    except ValueError as exc:
        raise DecodingFailure(f"cannot parse {what}", str(exc)) from None
    except RecursionError:
        raise DecodingFailure(f"cannot parse {what}", "nested too deeply") from None
