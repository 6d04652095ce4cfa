"""Generated nftables names: ``prefix-HASH`` (kube-proxy's form), stable for the same object and
short whatever the object's names are (nft names must stay well under 64 characters here)."""

from __future__ import annotations

import base64
import hashlib

from podnet.agent import tables
from podnet.agent.model import Direction

# Fixed names of the table and its own objects.
TABLE = tables.TABLE  # the agent's one table, shared with the other controllers
FAMILY = "inet"
INGRESS_CHAIN = "policy-ingress"
EGRESS_CHAIN = "policy-egress"


def short_hash(*parts: str) -> str:
    digest = hashlib.sha256("\0".join(parts).encode()).digest()
    return base64.b32encode(digest)[:16].decode().lower()


def direction_tag(direction: Direction) -> str:
    return "in" if direction is Direction.INGRESS else "eg"


def policy_prefix(key: tuple[str, str], direction: Direction) -> str:
    """``pol-HASH-in`` / ``pol-HASH-eg``: the chain of one policy's rules in one direction; its
    sets are named after it."""
    return f"pol-{short_hash(*key)}-{direction_tag(direction)}"


def isolation_chain(keys: tuple[tuple[str, str], ...], direction: Direction) -> str:
    """The chain for pods isolated in one direction by exactly this set of policies."""
    flat = [part for key in sorted(keys) for part in key]
    base = "ingress" if direction is Direction.INGRESS else "egress"
    return f"{base}-{short_hash(*flat)}"


def verdict_map(direction: Direction, family: int) -> str:
    base = "ingress" if direction is Direction.INGRESS else "egress"
    return f"{base}-ip{family}"
