"""What ``podnet doctor`` reports: one :class:`Finding` per problem, risk or note.

Severities, and what they do to the exit status:

* ``problem``: something on the node is wrong (debris, drift, a pod at risk); exit 1 while any
  problem is left unfixed;
* ``risk``: the node's setup could cause a problem (udev's MAC policy); reported, never fixed,
  does not change the exit status;
* ``note``: something doctor could not check, and why; does not change the exit status.

A fixable finding carries its repair as a callable. The repair re-checks what it is about to
change right before changing it (the node is live: a pod may have come or gone since the scan).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["problem", "risk", "note"]
Status = Literal["found", "fixed", "changed", "fix-failed"]


class Changed(Exception):
    """A repair found its object changed since the scan (now live, rewritten): nothing was done."""


@dataclass
class Finding:
    kind: str  # stable identifier for tools, e.g. "cache-torn", "reservation-orphan"
    severity: Severity
    where: str  # a path, a link name, an nftables table/set/element
    what: str  # one sentence for a person
    fix: str  # what --fix does, or what a person should do
    network: str = ""
    attachment: tuple[str, str] | None = None  # (container ID, ifname) when known
    data: dict[str, Any] = field(default_factory=dict)  # figures for tools (the dump counters)
    repair: Callable[[], None] | None = field(default=None, repr=False, compare=False)
    status: Status = "found"
    error: str = ""

    @property
    def fixable(self) -> bool:
        return self.repair is not None

    @property
    def open(self) -> bool:
        """A problem that may still be on the node: not fixed (one that changed under its repair
        was left alone and counts until a new run looks at it again)."""
        return self.severity == "problem" and self.status != "fixed"

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "kind": self.kind, "severity": self.severity, "network": self.network, "where": self.where,
            "what": self.what, "fix": self.fix, "fixable": self.fixable, "status": self.status,
        }
        if self.attachment is not None:
            doc["containerID"], doc["ifname"] = self.attachment
        if self.data:
            doc["data"] = self.data
        if self.error:
            doc["error"] = self.error
        return doc


def attachment_text(network: str, attachment: tuple[str, str] | None) -> str:
    if attachment is None:
        return f"network {network}"
    return f"{network}/{attachment[0]}/{attachment[1]}"
