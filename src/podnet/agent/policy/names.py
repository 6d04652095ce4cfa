"""Generated nftables names: ``prefix-HASH`` (kube-proxy's form), stable for the same object and
short whatever the object's names are (nft names must stay well under 64 characters here)."""

from __future__ import annotations

import base64
import dataclasses
import enum
import functools
import hashlib

from podnet.agent import tables
from podnet.agent.model import Direction, Peer, PolicyPort

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


@functools.lru_cache(maxsize=16384)  # hashing is most of a name's cost; names repeat
def policy_prefix(key: tuple[str, str], direction: Direction) -> str:
    """``pol-HASH-in`` / ``pol-HASH-eg``: the chain of one policy's rules in one direction; its
    sets are named after it."""
    return f"pol-{short_hash(*key)}-{direction_tag(direction)}"


@functools.lru_cache(maxsize=16384)
def isolation_chain(keys: tuple[tuple[str, str], ...], direction: Direction) -> str:
    """The chain for pods isolated in one direction by exactly this set of policies."""
    flat = [part for key in sorted(keys) for part in key]
    base = "ingress" if direction is Direction.INGRESS else "egress"
    return f"{base}-{short_hash(*flat)}"


def verdict_map(direction: Direction, family: int) -> str:
    base = "ingress" if direction is Direction.INGRESS else "egress"
    return f"{base}-ip{family}"


def canonical(value: object) -> str:
    """A text of a policy's parts that is the same in every process (frozensets sorted), so names
    hashed from it survive a restart."""
    if isinstance(value, frozenset | set):
        return "{" + ",".join(sorted(canonical(v) for v in value)) + "}"
    if isinstance(value, tuple | list):
        return "(" + ",".join(canonical(v) for v in value) + ")"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = tuple(getattr(value, f.name) for f in dataclasses.fields(value))
        return type(value).__name__ + canonical(fields)
    if isinstance(value, enum.Enum):
        return canonical(value.value)
    return repr(value) if isinstance(value, str) else str(value)


@functools.lru_cache(maxsize=16384)
def peer_set(namespace: str, peers: tuple[Peer, ...], family: int) -> str:
    """``peers4-HASH`` / ``peers6-HASH``: the addresses of these peers, one set for every rule that
    names the same peers. Selectors without a namespace selector mean the policy's namespace, so
    the namespace is part of the name only then."""
    local = any(p.namespace_selector is None and p.pod_selector is not None for p in peers)
    return f"peers{family}-{short_hash('peers', namespace if local else '', canonical(tuple(peers)))}"


@functools.lru_cache(maxsize=16384)
def port_set(ports: tuple[PolicyPort, ...]) -> str:
    """``ports-HASH``: the numbered ports (and protocols without a port) of a rule, shared by every
    rule naming the same ones."""
    return f"ports-{short_hash('ports', canonical(tuple(p for p in ports if not isinstance(p.port, str))))}"
