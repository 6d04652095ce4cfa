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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from podnet.agent.loop import SyncLoop
from podnet.agent.model import IPAddress, IPNetwork, Protocol, Service
from podnet.agent.objects import Kind
from podnet.agent.services import OWNER, ServiceCompiler, affected_endpoints
from podnet.agent.services.endpoints import Target
from podnet.agent.store import Change, Store
from podnet.dataplane.backends import NftError
from podnet.dataplane.writer import TableWriter
from podnet.kernel.errors import KernelError

log = logging.getLogger(__name__)
SERVICE_KINDS = frozenset({Kind.SERVICE, Kind.ENDPOINT_SLICE, Kind.NODE})
UDP = 17
VipPort = tuple[IPAddress, int]

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
        self.compiler = ServiceCompiler(node_name=store.node_name, node_ips=node_ips, pod_cidrs=pod_ranges)
        self.clean = clean
        self.observe = observe
        self.stats = ServiceStats()
        self._programmed: frozenset[Target] = frozenset()
        self._rejecting: frozenset[VipPort] = frozenset()
        self._first = True
        self._unsubscribe = store.subscribe(self._on_change)
        store.on_synced(self._wake)

    def _on_change(self, change: Change) -> None:
        if change.kind in SERVICE_KINDS:
            self._wake()

    def _wake(self) -> None:
        self.request()

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        self._unsubscribe()

    def sync_once(self) -> bool:
        start = time.monotonic()
        snap = self.store.snapshot()
        services = list(snap.services.values())
        try:
            self.writer.contribute(OWNER, self.compiler.compile(services, snap.endpoint_slices.values()))
            result = self.writer.commit()
            if result.deferred:  # the table's first rebuild waits for every controller's part
                return False
        except (NftError, ValueError) as exc:
            self.stats.failed_syncs += 1
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            log.error("service sync failed: %s", self.stats.last_error)
            return False
        programmed = self.compiler.endpoints()
        rejecting = rejecting_udp(services, self.compiler.targets_of)
        self._clear_stale(programmed, rejecting)
        self._programmed, self._rejecting, self._first = programmed, rejecting, False
        seconds = time.monotonic() - start
        self.stats.syncs += 1
        self.stats.last_sync_seconds = seconds
        self.stats.services = sum(1 for s in services if s.proxied)
        self.stats.endpoints = len(programmed)
        if self.observe is not None:
            self.observe(result.full, seconds)
        return True

    def _clear_stale(self, programmed: frozenset[Target], rejecting: frozenset[VipPort]) -> None:
        if self.clean is None or self._first:  # nothing is known of what the previous process programmed
            return
        gone = [k for k in affected_endpoints(self._programmed, programmed) if k.protocol is Protocol.UDP]
        opened = self._rejecting - rejecting
        try:
            for key in gone:
                self.stats.udp_flows_cleared += self.clean(reply_src=key.address, reply_sport=key.port)
            for vip, port in opened:
                self.stats.udp_flows_cleared += self.clean(orig_dst=vip, orig_dport=port)
        except KernelError as exc:
            log.warning("clearing stale UDP conntrack entries failed: %s", exc)


def rejecting_udp(services: Iterable[Service],
                  targets_of: Callable[[tuple[str, str]], frozenset[Target]]) -> frozenset[VipPort]:
    """UDP service addresses and ports with no endpoint to go to (their packets are rejected): once
    an endpoint comes, the entries the rejects left must go, or those clients stay rejected."""
    out: set[VipPort] = set()
    for service in services:
        udp_ports = [p.port for p in service.ports if p.protocol is Protocol.UDP]
        if not service.proxied or not udp_ports:
            continue
        if not any(t.protocol is Protocol.UDP for t in targets_of(service.key)):
            vips = (*service.cluster_ips, *service.external_ips)
            out.update((vip, port) for vip in vips for port in udp_ports)
    return frozenset(out)
