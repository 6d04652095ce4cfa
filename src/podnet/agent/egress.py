"""Leaving the cluster: pod traffic to anything outside the cluster is masqueraded, and only that.

A pod's address means nothing beyond the cluster's own networks, so a connection from a pod of
this node to an address outside every node's pod CIDR (and the ``--cluster-cidr`` ranges) and
outside every node's addresses leaves with the node's address (flannel's ``--ip-masq``). Traffic
to another pod, on this node or another, and to a node keeps the pod's address, so NetworkPolicy on
the far side sees the real client.

Owner ``egress`` in the agent's table: a nat postrouting chain and three sets, filled from the Node
objects (this node's pod CIDRs are the sources; every node's pod CIDRs and addresses are the
cluster). Until this node's pod range is known there is nothing to masquerade from, and nothing
is contributed but the empty chain.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, collapse_addresses, ip_network

from podnet.agent.loop import SyncLoop
from podnet.agent.model import IPNetwork, Node
from podnet.agent.objects import Kind
from podnet.agent.store import Change, Store
from podnet.dataplane.backends import NftError
from podnet.dataplane.contribution import Chain, Contribution, Set
from podnet.dataplane.writer import TableWriter

log = logging.getLogger(__name__)
OWNER = "egress"
CHAIN = "egress-masquerade"
SRCNAT = 100
_FAMILY = {4: ("ip", "ipv4_addr"), 6: ("ip6", "ipv6_addr")}


def sources_set(family: int) -> str:
    return f"egress-sources{family}"


def cluster_set(family: int) -> str:
    return f"egress-cluster{family}"


@dataclass(frozen=True)
class Egress:
    """What the rules are made from: where pods of this node are, and what is inside the cluster."""

    sources: tuple[IPNetwork, ...]  # this node's pod ranges
    cluster: tuple[IPNetwork, ...]  # every pod range and node address of the cluster, and more ranges


def egress_of(nodes: Iterable[Node], node_name: str, *, pod_ranges: Sequence[IPNetwork] = (),
              cluster_cidrs: Sequence[IPNetwork] = ()) -> Egress:
    """From the Node objects (``pod_ranges``: this node's given by option, added to its Node's)."""
    nodes = list(nodes)
    mine = [*pod_ranges, *(c for n in nodes if n.name == node_name for c in n.pod_cidrs)]
    cluster: list[IPNetwork] = [*cluster_cidrs, *mine]
    for n in nodes:
        cluster += n.pod_cidrs
        cluster += [ip_network(ip) for ip in n.internal_ips]
    return Egress(tuple(mine), tuple(cluster))


def _collapse(nets: Iterable[IPNetwork], family: int) -> list[str]:
    """Overlapping ranges merged (an interval set refuses overlaps), as nft text."""
    if family == 4:
        return [str(n) for n in collapse_addresses(n for n in nets if isinstance(n, IPv4Network))]
    return [str(n) for n in collapse_addresses(n for n in nets if isinstance(n, IPv6Network))]


def contribution(egress: Egress) -> Contribution:
    """A family gets its rule only once this node has a pod range in it."""
    rules: list[str] = []
    sets: list[Set] = []
    elements: dict[str, dict[str, str | None]] = {}
    for family in sorted({n.version for n in egress.sources}):
        a, addr_type = _FAMILY[family]
        src, dst = sources_set(family), cluster_set(family)
        sets += [Set(src, (addr_type,), flags=("interval",)), Set(dst, (addr_type,), flags=("interval",))]
        elements[src] = dict.fromkeys(_collapse(egress.sources, family))
        elements[dst] = dict.fromkeys(_collapse(egress.cluster, family))
        rules.append(f"{a} saddr @{src} {a} daddr != @{dst} masquerade")
    chain = Chain(CHAIN, type="nat", hook="postrouting", priority=SRCNAT, policy="accept", rules=tuple(rules))
    return Contribution((chain,), tuple(sets), elements)


class EgressSync(SyncLoop):
    """Contributes :func:`contribution` whenever a Node changes."""

    thread_name = "podnet-egress"

    def __init__(self, store: Store, writer: TableWriter, *, pod_ranges: Sequence[IPNetwork] = (),
                 cluster_cidrs: Sequence[IPNetwork] = (), retry_seconds: float = 1.0) -> None:
        super().__init__(store, retry_seconds=retry_seconds)
        self.writer = writer
        self.pod_ranges, self.cluster_cidrs = tuple(pod_ranges), tuple(cluster_cidrs)
        self.current = Egress((), ())
        self.observe: Callable[[bool, float], None] | None = None  # (full, seconds) of each sync
        self.last_error = ""
        self._unsubscribe = store.subscribe(self._on_change)
        store.on_synced(self._wake)

    def _wake(self) -> None:
        self.request()

    def _on_change(self, change: Change) -> None:
        if change.kind is Kind.NODE:
            self._wake()

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        self._unsubscribe()

    def sync_once(self) -> bool:
        start = time.monotonic()
        egress = egress_of(self.store.snapshot().nodes.values(), self.store.node_name,
                           pod_ranges=self.pod_ranges, cluster_cidrs=self.cluster_cidrs)
        try:
            self.writer.contribute(OWNER, contribution(egress))
            result = self.writer.commit()
            if result.deferred:
                return False
        except (NftError, ValueError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error("egress masquerade sync failed: %s", self.last_error)
            return False
        self.current, self.last_error = egress, ""
        if self.observe is not None:
            self.observe(result.full, time.monotonic() - start)
        return True

    def status(self) -> dict[str, object]:
        return {"sources": [str(n) for n in self.current.sources],
                "cluster": sorted({str(n) for n in self.current.cluster}),
                "last_error": self.last_error or None}
