"""Strict JSON decoding for everything podnet reads from callers and plugins.

Python's json accepts NaN/Infinity (not JSON; Go plugins reject them) and raises RecursionError on
deeply nested input; both become a decoding error (code 6) naming what was being read.
"""

from __future__ import annotations

import json
from typing import Any

from podnet.cni.errors import DecodingFailure


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def load_json(data: bytes | str, what: str) -> Any:
    try:
        return json.loads(data, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodingFailure(f"cannot parse {what}", str(exc)) from None
    except RecursionError:
        raise DecodingFailure(f"cannot parse {what}", "nested too deeply") from None
