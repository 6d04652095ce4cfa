"""The udev link policy a new veth on this node gets: a risk report, never a fix.

systemd-udevd applies the first ``.link`` file (by file name, across ``/etc/systemd/network``,
``/run/systemd/network`` and ``/usr/lib/systemd/network``; a file in an earlier directory hides
one of the same name in a later one, and an empty file or a link to /dev/null masks it) whose
``[Match]`` section matches the link. With ``MACAddressPolicy=persistent`` (Debian's
``99-default.link``) or ``random`` it rewrites every MAC the kernel chose at random
(``addr_assign_type`` 1); a ``MACAddress=`` replaces any MAC. podnet's veths carry MACs set at
creation (type 3), so only veths made otherwise are at risk: see :mod:`podnet.doctor.macs`.

Of the match keys only those that can be decided for a veth are evaluated (``OriginalName``,
``Type``, ``Kind``, ``Driver``); a file with any other key is reported as possibly applying.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from podnet.doctor.findings import Finding

LINK_DIRS = ("/etc/systemd/network", "/run/systemd/network", "/usr/local/lib/systemd/network",
             "/usr/lib/systemd/network", "/lib/systemd/network")
# What a podnet host veth looks like to udev's [Match] keys.
_VETH = {"originalname": "pn0000000000000", "type": "ether", "kind": "veth", "driver": "veth"}
_REWRITING = ("persistent", "random")


@dataclass(frozen=True)
class LinkPolicy:
    path: str
    mac_policy: str | None  # MACAddressPolicy=
    mac_address: str | None  # MACAddress=
    certain: bool  # every [Match] key could be evaluated


def _sections(text: str) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1].strip().lower()
            out.setdefault(current, [])
        elif "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(current, []).append((key.strip(), value.strip()))
    return out


def _matches(key: str, value: str) -> bool:
    """One [Match] line against a veth: space-separated globs, a leading '!' negates the list."""
    negate = value.startswith("!")
    patterns = value.lstrip("!").split()
    hit = any(fnmatch.fnmatchcase(_VETH[key], p) for p in patterns)
    return hit != negate if patterns else True


def _policy(path: Path) -> LinkPolicy | None:
    sections = _sections(path.read_text(errors="replace"))
    certain = True
    for key, value in sections.get("match", []):
        if key.lower() not in _VETH:
            certain = False
        elif not _matches(key.lower(), value):
            return None
    link = dict(sections.get("link", []))
    return LinkPolicy(str(path), link.get("MACAddressPolicy"), link.get("MACAddress"), certain)


def _masked(path: Path) -> bool:
    return os.path.realpath(path) == "/dev/null" or path.stat().st_size == 0


def link_files(dirs: Sequence[str] = LINK_DIRS) -> list[Path]:
    """The effective .link files in udev's order: by name, the first directory's copy wins."""
    chosen: dict[str, Path] = {}
    seen: set[str] = set()
    for directory in dirs:
        real = os.path.realpath(directory)
        if real in seen or not os.path.isdir(directory):
            continue
        seen.add(real)
        for name in os.listdir(directory):
            if name.endswith(".link") and name not in chosen:
                chosen[name] = Path(directory) / name
    return [chosen[n] for n in sorted(chosen) if not _masked(chosen[n])]


def policy_for_veths(dirs: Sequence[str] = LINK_DIRS) -> tuple[LinkPolicy | None, list[LinkPolicy]]:
    """(the policy that applies to a veth, earlier files that might apply but could not be decided)."""
    unsure: list[LinkPolicy] = []
    for path in link_files(dirs):
        try:
            found = _policy(path)
        except OSError:
            continue
        if found is None:
            continue
        if found.certain:
            return found, unsure
        unsure.append(found)
    return None, unsure


def _describe(p: LinkPolicy) -> str:
    if p.mac_address:
        return f"{p.path} sets MACAddress={p.mac_address}: udev replaces the MAC of every veth it matches"
    policy = p.mac_policy or "none"
    if policy in _REWRITING:
        return (f"{p.path} sets MACAddressPolicy={policy}: udev rewrites every veth MAC the kernel chose at "
                "random; podnet's veths (MAC set at creation) are safe, veths made otherwise are not")
    return f"{p.path} sets MACAddressPolicy={policy}: udev leaves veth MACs alone"


def check(dirs: Sequence[str] = LINK_DIRS) -> list[Finding]:
    policy, unsure = policy_for_veths(dirs)
    out = [Finding("udev-policy", "risk", p.path, f"may apply to veths (match keys doctor cannot decide): "
                   f"{_describe(p)}", "none by doctor: a node setting") for p in unsure]
    if policy is None:
        out.append(Finding("udev-policy", "note", ", ".join(dirs),
                           "no udev .link file applies to veths: udev does not change their MACs",
                           "none needed"))
        return out
    rewrites = bool(policy.mac_address) or (policy.mac_policy or "") in _REWRITING
    out.append(Finding("udev-policy", "risk" if rewrites else "note", policy.path, _describe(policy),
                       "none by doctor: a node setting; MACAddressPolicy=none in a .link file matching "
                       "Kind=veth removes the risk" if rewrites else "none needed"))
    return out
