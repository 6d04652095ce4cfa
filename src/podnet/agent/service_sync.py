"""The service proxy's sync loop: Services, EndpointSlices and this node's Node in, the
``services`` contribution to the agent's table out, then conntrack put right.

Its own thread and its own triggers, next to the policy sync: both hand their parts to the one
table writer, which commits the union, so neither can remove what the other contributed (the
shared ``service-ips`` sets included). After a commit, UDP conntrack entries that would keep
clients on an endpoint no longer used, or on a service address that was rejecting before its
endpoints came, are deleted — as kube-proxy does; TCP entries are never touched, so established
connections to surviving endpoints live on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from podnet.agent.loop import SyncLoop
from podnet.agent.model import EndpointSlice, IPAddress, IPNetwork, Protocol
from podnet.agent.objects import Kind
from podnet.agent.services import OWNER, EndpointKey, ServiceCompiler
from podnet.agent.store import Change, ServiceKey, Snapshot, Store
from podnet.dataplane.backends import NftError
from podnet.dataplane.contribution import Contribution
from podnet.dataplane.writer import TableWriter
from podnet.kernel.errors import KernelError

log = logging.getLogger(__name__)
SERVICE_KINDS = frozenset({Kind.SERVICE, Kind.ENDPOINT_SLICE, Kind.NODE})
UDP = 17

# Deletes UDP conntrack entries: by reply source (an endpoint) or original destination (a VIP).
FlowCleaner = Callable[..., int]


def conntrack_cleaner() -> FlowCleaner:
    from podnet.kernel.conntrack import delete_flows

    def clean(**filters: object) -> int:
        return delete_flows(None, protocol=UDP, **filters)

    return clean


@dataclass
class ServiceStats:
    syncs: int = 0
    failed_syncs: int = 0
    last_sync_seconds: float = 0.0
    last_error: str = ""
    services: int = 0
    endpoints: int = 0
    udp_flows_cleared: int = 0


class ServiceSync(SyncLoop):
    thread_name = "podnet-service-sync"

    def __init__(self, store: Store, writer: TableWriter, *, node_ips: Sequence[IPAddress] = (),
                 pod_ranges: Sequence[IPNetwork] = (), clean: FlowCleaner | None = None,
                 retry_seconds: float = 1.0, observe: Callable[[bool, float], None] | None = None) -> None:
        super().__init__(store, retry_seconds=retry_seconds)
        self.writer = writer
        self.node_ips, self.pod_ranges = tuple(node_ips), tuple(pod_ranges)
        # The pod ranges ClusterIP masquerade tells pods by: --pod-cidr, else every Node's pod CIDRs.
        self.cluster_ranges: tuple[IPNetwork, ...] = self.pod_ranges
        self.compiler = self._compiler(self.cluster_ranges)
        self._gone_before: frozenset[EndpointKey] = frozenset()  # a replaced compiler's endpoints
        self.clean = clean
        self.observe = observe
        self.stats = ServiceStats()
        self._first = True
        # Services whose Service or slices changed since the last sync (under the loop's lock);
        # everything when a Node changed or a sync failed.
        self._changed: set[ServiceKey] = set()
        self._everything = True
        self._unsubscribe = store.subscribe(self._on_change)
        store.on_synced(self._wake)

    def _on_change(self, change: Change) -> None:
        if change.kind not in SERVICE_KINDS:
            return
        with self._cond:
            if change.kind is Kind.SERVICE:
                self._changed.add(change.key)  # type: ignore[arg-type]
            elif change.kind is Kind.ENDPOINT_SLICE:
                for found in (change.old, change.new):
                    if isinstance(found, EndpointSlice) and found.service:
                        self._changed.add((found.namespace, found.service))
            else:
                self._everything = True
        self._wake()

    def _wake(self) -> None:
        self.request()

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        self._unsubscribe()

    def sync_once(self) -> bool:
        start = time.monotonic()
        with self._cond:
            changed, everything = self._changed, self._everything
            self._changed, self._everything = set(), False
        # After the take: a change told before it is in the snapshot (the store applies a change
        # before telling it); one told after it is synced again next time.
        snap = self.store.snapshot()
        try:
            self.writer.contribute(OWNER, self._compile(snap, changed, everything))
            result = self.writer.commit()
            if result.deferred:  # the table's first rebuild waits for every controller's part
                return False
        except (NftError, ValueError) as exc:
            with self._cond:
                self._everything = True  # compiled but not applied: look at everything again
            self.stats.failed_syncs += 1
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            log.error("service sync failed: %s", self.stats.last_error)
            return False
        self._clear_stale()
        seconds = time.monotonic() - start
        self.stats.syncs += 1
        self.stats.last_sync_seconds = seconds
        self.stats.services = self.compiler.proxied()
        self.stats.endpoints = len(self.compiler.endpoints())
        if self.observe is not None:
            self.observe(result.full, seconds)
        return True

    def _compiler(self, pod_ranges: Sequence[IPNetwork]) -> ServiceCompiler:
        return ServiceCompiler(node_name=self.store.node_name, node_ips=self.node_ips, pod_cidrs=pod_ranges)

    def _compile(self, snap: Snapshot, changed: set[ServiceKey], everything: bool) -> Contribution:
        ranges = self.pod_ranges or cluster_pod_cidrs(snap)
        if ranges != self.cluster_ranges:  # the fixed part and every masquerade rule depend on them
            self._gone_before |= self.compiler.endpoints()
            self.compiler, self.cluster_ranges, everything = self._compiler(ranges), ranges, True
        if everything:
            return self.compiler.compile(snap.services.values(), snap.endpoint_slices.values())
        return self.compiler.update(changed, snap.services, snap.slices_for)

    def _clear_stale(self) -> None:
        gone, opened = self.compiler.take_stale()
        gone |= self._gone_before - self.compiler.endpoints()
        self._gone_before = frozenset()
        if self.clean is None or self._first:  # nothing is known of what the previous process programmed
            self._first = False
            return
        try:
            for key in (k for k in gone if k.protocol is Protocol.UDP):
                self.stats.udp_flows_cleared += self.clean(reply_src=key.address, reply_sport=key.port)
            for vip, port in opened:
                self.stats.udp_flows_cleared += self.clean(orig_dst=vip, orig_dport=port)
        except KernelError as exc:
            log.warning("clearing stale UDP conntrack entries failed: %s", exc)


def cluster_pod_cidrs(snap: Snapshot) -> tuple[IPNetwork, ...]:
    """Every Node's pod CIDRs, in one order whatever the order of the Nodes."""
    return tuple(sorted({c for node in snap.nodes.values() for c in node.pod_cidrs},
                        key=lambda c: (c.version, c)))
