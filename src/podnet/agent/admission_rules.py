"""Isolation from the first packet: an address of the node's pod range that the agent has not
classified yet carries no forwarded traffic.

The policy chains only hold pods the agent knows; a pod whose ADD just finished is not among them
until the agent hears of it, and an isolated pod would be open in that gap. So a base chain of its
own (owner ``admission``, ahead of the policy chains on the forward hook) drops what is sent to or
from an address of the node's pod ranges (``--pod-cidr``) that is not a known local pod's. A
pod's ADD tells the agent (:mod:`podnet.agent.admission`), which adds its address here and its
policy elements in the same transaction; until then it is unreachable, never open. With no pod
range configured the chain is empty and nothing is held back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from podnet.agent.model import IPAddress, IPNetwork
from podnet.dataplane.contribution import Chain, Contribution, Set

OWNER = "admission"
CHAIN = "admission"
# Before policy-egress (priority 0) and policy-ingress (1): an unknown address never reaches them.
PRIORITY = -1
_FAMILY = {4: ("ip", "ipv4_addr"), 6: ("ip6", "ipv6_addr")}


def ranges_set(family: int) -> str:
    return f"pod-ranges{family}"


def known_set(family: int) -> str:
    return f"known-pods{family}"


def contribution(pod_ranges: Sequence[IPNetwork], known: Iterable[IPAddress]) -> Contribution:
    """The chain and its sets for these ranges, with ``known`` (local pods' addresses) let through."""
    families = sorted({net.version for net in pod_ranges})
    rules: list[str] = []
    sets: list[Set] = []
    elements: dict[str, dict[str, str | None]] = {}
    addresses = list(known)
    for family in families:
        proto, kind = _FAMILY[family]
        ranges, pods = ranges_set(family), known_set(family)
        sets += [Set(ranges, (kind,), flags=("interval",)), Set(pods, (kind,))]
        elements[ranges] = {str(net): None for net in pod_ranges if net.version == family}
        elements[pods] = {str(ip): None for ip in addresses
                          if ip.version == family and any(ip in net for net in pod_ranges)}
        for end in ("daddr", "saddr"):
            rules.append(f"{proto} {end} @{ranges} {proto} {end} != @{pods} drop")
    chain = Chain(CHAIN, type="filter", hook="forward", priority=PRIORITY, policy="accept",
                  rules=tuple(rules))
    return Contribution((chain,), tuple(sets), elements)
