"""Contributions shaped like the policy compiler's, for the writer tests."""

from __future__ import annotations

from podnet.dataplane.contribution import Chain, Contribution, Set

BASE = Chain("ingress", type="filter", hook="forward", priority=0, policy="accept",
             rules=("ct state established,related accept", "ip daddr vmap @pods-v4"))
PODS = Set("pods-v4", ("ipv4_addr",), value_type="verdict")


def policy(pods: list[str], peers: list[str], *, name: str = "isolate-a",
           rules: tuple[str, ...] = ()) -> Contribution:
    """One isolating chain, the verdict map sending the pods there, and a peer set."""
    peer_set = f"{name}-peers"
    return Contribution(
        chains=(BASE, Chain(name, rules=rules or (f"ip saddr @{peer_set} accept", "drop"))),
        sets=(PODS, Set(peer_set, ("ipv4_addr",), flags=("interval",))),
        elements={"pods-v4": {p: f"goto {name}" for p in pods}, peer_set: dict.fromkeys(peers)},
    )
