"""Rendering a doctor report: one line per finding for a person, a JSON document for tools."""

from __future__ import annotations

import json
from typing import Any

from podnet.doctor.examine import Report
from podnet.doctor.findings import Finding

_LABEL = {"problem": "PROBLEM", "risk": "RISK", "note": "note"}
_DONE = {"fixed": "FIXED", "changed": "LEFT ALONE", "fix-failed": "FIX FAILED"}


def line(f: Finding) -> str:
    head = _DONE.get(f.status, _LABEL[f.severity])
    text = f"{head} [{f.kind}] {f.where}: {f.what}"
    if f.status == "found" and f.severity != "note":
        text += f" -> {f.fix}"
    elif f.status == "fixed":
        text += f" -> done: {f.fix.removeprefix('--fix ')}"
    if f.error:
        text += f" ({f.error})"
    return text


def text(report: Report, fix: bool) -> str:
    order = {"problem": 0, "risk": 1, "note": 2}
    lines = [line(f) for f in sorted(report.findings, key=lambda f: order[f.severity])]
    nets = ", ".join(report.networks) or "none"
    lines.append(f"podnet networks examined: {nets}")
    if report.unjudged_recent:
        lines.append(f"{report.unjudged_recent} file(s) changed within the grace period were not judged "
                     "(an operation may be under way)")
    open_problems = len(report.open_problems)
    if open_problems:
        advice = "" if fix else "; run with --fix to repair what is safe to repair"
        lines.append(f"{open_problems} problem(s) on this node{advice}")
    else:
        lines.append("no problems found" if not fix else "no problems left")
    return "\n".join(lines) + "\n"


def as_json(report: Report) -> str:
    doc: dict[str, Any] = {
        "clean": not report.open_problems,
        "networks": report.networks,
        "unjudgedRecentFiles": report.unjudged_recent,
        "findings": [f.as_json() for f in report.findings],
    }
    return json.dumps(doc, indent=2) + "\n"
