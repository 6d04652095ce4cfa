"""Cross-node pod routing (flannel's host-gw and VXLAN backends, decided per peer): every other
node's pod CIDR(s) routed to it, from the Node objects in the store.

A sync reads the main routing table (one consistent dump), decides from it which peers are on-link
(:mod:`podnet.agent.routes_plan`), and makes podnet's routes, VXLAN devices, neighbours and forwarding
entries what the plan says (:mod:`podnet.agent.routes_kernel`): missing ones added, wrong ones
replaced, extra ones deleted. It runs on every Node change and every ``check_period`` seconds, so a
deleted node's routes go at once and an entry deleted by hand comes back within a period. Writes made
when the plan did not change since the last successful sync are counted as repairs.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from podnet.agent.loop import SyncLoop
from podnet.agent.model import Node
from podnet.agent.objects import Kind
from podnet.agent.routes_kernel import (
    RouteKernel,
    own_devices,
    remove_other_devices,
    sync_addresses,
    sync_device,
    sync_fdb,
    sync_neighbours,
    sync_routes,
    underlay_routes,
)
from podnet.agent.routes_plan import VXLAN_PORT, VXLAN_VNI, Plan, covering, plan
from podnet.agent.store import Change, Store
from podnet.kernel.errors import KernelError
from podnet.kernel.netns import NetnsRef

log = logging.getLogger(__name__)
MODES = ("off", "auto")
DEFAULT_CHECK_PERIOD = 10.0


@dataclass(frozen=True)
class RoutingOptions:
    check_period: float = DEFAULT_CHECK_PERIOD  # seconds between checks of the kernel against the plan
    netns: NetnsRef | None = None  # the node's namespace (None: the agent's own)


class RouteSync(SyncLoop):
    thread_name = "podnet-routes"

    def __init__(self, store: Store, options: RoutingOptions = RoutingOptions(), *,
                 retry_seconds: float = 1.0) -> None:
        if options.check_period <= 0:
            raise ValueError(f"route check period {options.check_period}: must be more than 0 seconds")
        super().__init__(store, retry_seconds=retry_seconds)
        self.options = options
        self._kernel: RouteKernel | None = None
        self._next_check = 0.0
        self._last_key: tuple[object, ...] | None = None
        self._lock = threading.Lock()  # status() reads what a sync writes
        self.plan = Plan()
        self.conflicts: dict[str, str] = {}
        self.syncs = self.failed = self.writes = self.repairs = 0
        self.last_error: str | None = None
        self.last_sync_at: float | None = None
        self._unsubscribe = store.subscribe(self._on_change)
        store.on_synced(self._wake)

    def _on_change(self, change: Change) -> None:
        if change.kind is Kind.NODE and _routing_fields(change.old) != _routing_fields(change.new):
            self.request()

    def _wake(self) -> None:
        self.request()

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        self._unsubscribe()
        if self._kernel is not None:
            self._kernel.close()
            self._kernel = None

    # ---- the loop's hooks ----

    def idle_wait(self) -> float:
        return max(0.01, self._next_check - time.monotonic())

    def idle(self) -> None:
        if time.monotonic() >= self._next_check:
            self._next_check = time.monotonic() + self.options.check_period
            self.request()

    def sync_once(self) -> bool:
        self._next_check = time.monotonic() + self.options.check_period
        try:
            if self._kernel is None:
                self._kernel = RouteKernel(self.options.netns)
            desired, writes, errors = self._reconcile(self._kernel)
        except KernelError as exc:
            return self._failed(str(exc), reopen=True)
        except Exception as exc:  # a bug must not end the thread: said, and retried
            log.exception("cross-node routing: sync failed")
            return self._failed(f"internal error: {exc!r}", reopen=True)
        with self._lock:
            self.plan = desired
            self.syncs += 1
            self.writes += writes
            key = desired.key()
            if key == self._last_key:
                self.repairs += writes
            elif not errors:
                self._last_key = key
            self.last_sync_at = time.time()
        if writes:
            log.info("routes to %d peer(s): %d change(s) to the kernel", len(desired.peers), writes)
        if errors:
            return self._failed("; ".join(errors))
        self.last_error = None
        return True

    def _failed(self, message: str, *, reopen: bool = False) -> bool:
        """Count and say (once per distinct message) a failed pass; ``reopen``: the next pass
        opens new netlink sockets, in case these are what failed."""
        if reopen and self._kernel is not None:
            self._kernel.close()
            self._kernel = None
        if message != self.last_error:
            log.error("cross-node routing: %s", message)
        with self._lock:
            self.failed += 1
            self.last_error = message
        return False

    def _reconcile(self, k: RouteKernel) -> tuple[Plan, int, list[str]]:
        """One pass over everything podnet owns; an error on one device or entry does not stop
        the others (they are said together, and the pass is retried)."""
        routes = k.main_routes()
        underlay = underlay_routes(routes, own_devices(k))
        desired = plan(self.store.node_name, self.store.snapshot().nodes, lambda ip: covering(underlay, ip))
        writes, errors = 0, []
        devices: dict[str, int] = {}
        for overlay in desired.overlays.values():
            try:
                index, n = sync_device(k, overlay)
                devices[overlay.device] = index
                writes += n + sync_addresses(k, index, overlay) + sync_neighbours(k, index, overlay)
                writes += sync_fdb(k, index, overlay)
            except KernelError as exc:
                errors.append(f"{overlay.device}: {exc}")
        conflicts: dict[str, str] = {}
        try:
            writes += sync_routes(k, routes, desired.routes, devices, conflicts.__setitem__)
            writes += remove_other_devices(k, desired.overlays)
        except KernelError as exc:
            errors.append(str(exc))
        for dst, why in conflicts.items():
            if self.conflicts.get(dst) != why:
                log.error("no route to pod CIDR %s: %s", dst, why)
        self.conflicts = conflicts
        return desired, writes, errors

    # ---- status ----

    def status(self) -> dict[str, Any]:
        with self._lock:
            desired, conflicts = self.plan, dict(self.conflicts)
            peers = [{"name": p.name, "mode": p.mode, "pod_cidrs": list(p.pod_cidrs),
                      "state": _peer_state(p.state, p.pod_cidrs, conflicts)} for p in desired.peers]
            return {"mode": "auto", "check_period": self.options.check_period, "peers": peers,
                    "devices": [{"name": o.device, "local": o.local, "mac": o.mac, "vni": VXLAN_VNI,
                                 "port": VXLAN_PORT, "peers": len(o.fdb)} for o in desired.overlays.values()],
                    "routes": len(desired.routes), "syncs": self.syncs, "failed": self.failed,
                    "writes": self.writes, "repairs": self.repairs, "last_sync_at": self.last_sync_at,
                    "last_error": self.last_error}


def _routing_fields(obj: object) -> tuple[object, ...] | None:
    """What of a Node the routes depend on (its readiness and labels change more often, and do not)."""
    return (obj.name, obj.pod_cidrs, obj.internal_ips) if isinstance(obj, Node) else None


def _peer_state(state: str, cidrs: tuple[str, ...], conflicts: dict[str, str]) -> str:
    held = [f"{c}: {conflicts[c]}" for c in cidrs if c in conflicts]
    if not held:
        return state
    return "; ".join(([] if state == "ok" else [state]) + held)
