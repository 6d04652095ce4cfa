"""What a sync means for conntrack: the endpoints no longer programmed.

A UDP "connection" to a removed endpoint lives on in conntrack (and keeps being DNATed to the dead
address) as long as the client keeps sending; kube-proxy deletes those entries so the next
datagram is a new connection that picks a live endpoint. The agent clears entries whose reply
source is one of the endpoints given here. TCP needs nothing: its clients see the failure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from podnet.agent.model import IPAddress, Protocol
from podnet.agent.services.endpoints import Target


@dataclass(frozen=True)
class EndpointKey:
    address: IPAddress
    port: int
    protocol: Protocol


def affected_endpoints(old: Iterable[Target], new: Iterable[Target]) -> frozenset[EndpointKey]:
    """Endpoints (address, port, protocol) programmed before and not any more: removed, no longer
    usable, or no longer used under a Local policy. Give it :func:`programmed_endpoints` of the
    previous and the current snapshot."""
    def keys(targets: Iterable[Target]) -> set[EndpointKey]:
        return {EndpointKey(t.address, t.port, t.protocol) for t in targets}
    return frozenset(keys(old) - keys(new))
