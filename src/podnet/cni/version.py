"""CNI spec versions: parsing, comparison and the feature gates that depend on them."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from podnet.cni.errors import DecodingFailure, IncompatibleVersion
from podnet.cni.spec_versions import CURRENT, IMPLICIT, SUPPORTED

__all__ = ["CURRENT", "IMPLICIT", "SUPPORTED"]

# ASCII digits only, and the whole string: "$" alone would let "1.0.0\n" through.
_SEMVER = re.compile(r"([0-9]+)\.([0-9]+)(?:\.([0-9]+))?")


def parse(version: str) -> tuple[int, int, int]:
    """``"0.3.1"`` -> ``(0, 3, 1)``; ``"1.0"`` is ``(1, 0, 0)``. Anything else is a decoding error."""
    m = _SEMVER.fullmatch(version) if isinstance(version, str) else None
    if m is None:
        raise DecodingFailure(f"invalid CNI version {version!r}", "expected MAJOR.MINOR.PATCH")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def normalize(version: str) -> str:
    major, minor, patch = parse(version)
    return f"{major}.{minor}.{patch}"


def compare(a: str, b: str) -> int:
    pa, pb = parse(a), parse(b)
    return (pa > pb) - (pa < pb)


def at_least(version: str, minimum: str) -> bool:
    return compare(version, minimum) >= 0


def is_supported(version: str, supported: Iterable[str] = SUPPORTED) -> bool:
    try:
        norm = normalize(version)
    except DecodingFailure:
        return False
    return norm in supported


def require_supported(version: str, supported: Iterable[str] = SUPPORTED) -> str:
    """Return the normalized version or raise error 1 naming what is supported.

    A version that does not even parse is also "incompatible" (code 1), as in the Go skel."""
    supported = tuple(supported)
    norm = normalize(version) if is_supported(version, supported) else None
    if norm is None:
        raise IncompatibleVersion(
            f"incompatible CNI versions: config is {version!r}, supported versions are {list(supported)}"
        )
    return norm


def highest(candidates: Iterable[str], supported: Iterable[str] = SUPPORTED) -> str | None:
    """The highest of ``candidates`` that is also supported (for ``cniVersions``)."""
    supported = tuple(supported)
    best: str | None = None
    for cand in candidates:
        if not is_supported(cand, supported):
            continue
        norm = normalize(cand)
        if best is None or compare(norm, best) > 0:
            best = norm
    return best


def allows_check(version: str) -> bool:
    return at_least(version, "0.4.0")


def allows_status_and_gc(version: str) -> bool:
    return at_least(version, "1.1.0")


def version_info(supported: Iterable[str] = SUPPORTED) -> dict[str, Any]:
    """The body a plugin prints for the VERSION command."""
    return {"cniVersion": CURRENT, "supportedVersions": list(supported)}
