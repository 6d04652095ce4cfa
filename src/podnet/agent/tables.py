"""The agent's nftables table. Every agent controller (policy, admission, services) contributes to
this one table through its one writer, so data they share (a set both match against) is a union
of their parts: none can remove what another put in."""

from __future__ import annotations

FAMILY = "inet"
TABLE = "podnet"
