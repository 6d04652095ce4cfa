"""The policy sync loop: store changes in, one commit of the policy table out.

One thread. A change in the store (or an admitted pod) marks the state dirty; the loop takes a
snapshot, compiles NetworkPolicy (only the policies the changes touch: the compiler keeps its parts
between syncs) and the admission chain from that one snapshot, hands the changed parts to the table
writer under their owners and commits once, so a pod's address becomes known and gets its
policy in the same transaction. Changes arriving during a sync are coalesced into the next one.
Nothing is programmed before every source has completed its first list; the periodic verify (drift
repair) runs from the same loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from podnet.agent import admission_rules
from podnet.agent.loop import SyncLoop
from podnet.agent.model import IPAddress, IPNetwork, Pod
from podnet.agent.objects import Kind
from podnet.agent.policy.compile import OWNER_PREFIX, SHARED_OWNER, PolicyCompiler
from podnet.agent.policy.inputs import PolicyInputs
from podnet.agent.store import Change, Snapshot, Store
from podnet.dataplane.backends import NftError
from podnet.dataplane.contribution import EMPTY, Contribution
from podnet.dataplane.writer import TableWriter

log = logging.getLogger(__name__)
POLICY_OWNER = SHARED_OWNER  # the base chains and verdict maps; each policy is its own owner too
POLICY_KINDS = frozenset({Kind.NAMESPACE, Kind.POD, Kind.NETWORK_POLICY})


@dataclass
class SyncStats:
    syncs: int = 0
    full_syncs: int = 0
    failed_syncs: int = 0
    last_sync_seconds: float = 0.0
    last_sync_at: float = 0.0  # wall clock
    last_error: str = ""
    generation_applied: int = -1


@dataclass(frozen=True)
class Admitted:
    """A pod address reported by a CNI ADD before the sources show it (the pod's status lags)."""

    namespace: str
    name: str
    container_id: str
    ips: tuple[IPAddress, ...]


class PolicySync(SyncLoop):
    thread_name = "podnet-policy-sync"

    def __init__(self, store: Store, writer: TableWriter, *, pod_ranges: Sequence[IPNetwork] = (),
                 retry_seconds: float = 1.0, observe: Callable[[bool, float], None] | None = None) -> None:
        super().__init__(store, retry_seconds=retry_seconds)
        self.observe = observe  # (full, seconds) of each successful sync, for the metrics
        self.writer = writer
        self.pod_ranges = tuple(pod_ranges)
        # The ranges held back until classified: --pod-cidr, else this node's Node's pod CIDRs.
        self.ranges: tuple[IPNetwork, ...] = self.pod_ranges
        self.stats = SyncStats()
        self._admitted: dict[str, Admitted] = {}  # container ID -> addresses
        self._compiler = PolicyCompiler()
        self._resend = True  # the writer may hold parts this compiler does not know: send all
        self._unsubscribe = store.subscribe(self._on_change)
        store.on_synced(self._on_synced)

    # ---- inputs ----

    def _on_synced(self) -> None:
        self.request()  # the last source may finish listing without changing anything

    def _on_change(self, change: Change) -> None:
        if change.kind is Kind.NODE and not self.pod_ranges and change.key == self.store.node_name:
            self.request()  # this node's pod CIDRs are the ranges held back
            return
        if change.kind not in POLICY_KINDS:  # Services, slices, other Nodes: not policy's concern
            return
        if change.kind is Kind.POD and change.new is None:  # deleted: what its ADD said goes too
            with self._cond:
                for cid in [c for c, a in self._admitted.items() if (a.namespace, a.name) == change.key]:
                    del self._admitted[cid]
        self.request()

    def admit(self, pod: Admitted, timeout: float) -> bool:
        """Take an ADD's addresses and wait (bounded) until a commit includes them. False when the
        wait ran out or the sources do not list the pod yet: its addresses stay held back (the
        admission chain) until they do, since its labels, and so its policy, are unknown."""
        with self._cond:
            self._admitted[pod.container_id] = pod
        committed = self.wait_for(self.request(), timeout)
        return committed and self.store.pod(pod.namespace, pod.name) is not None

    def release(self, container_id: str) -> None:
        with self._cond:
            gone = self._admitted.pop(container_id, None)
        if gone is not None:
            self.request()

    # ---- the loop ----

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        self._unsubscribe()

    def idle_wait(self) -> float:
        return max(0.05, min(self.writer.verify_period, 5.0))

    def idle(self) -> None:
        """The table's periodic verify (drift repair): due by time, busy or not."""
        if not self.store.synced:
            return
        try:
            self.writer.maybe_verify()
        except NftError as exc:
            log.warning("policy table verify failed: %s", exc)

    def sync_once(self) -> bool:
        """Compile from one snapshot, contribute, commit. False (and logged) on failure."""
        start = time.monotonic()
        snap = self.store.snapshot()
        with self._cond:
            for cid, a in list(self._admitted.items()):  # the sources show them now
                listed = snap.pods.get((a.namespace, a.name))
                if listed is not None and set(a.ips) <= set(listed.ips):
                    del self._admitted[cid]
            admitted = list(self._admitted.values())
        pods = merge_admitted(list(snap.pods.values()), admitted)
        inputs = PolicyInputs.of(snap.namespaces, pods, snap.policies.values(), self.store.node_name)
        known = [ip for pod in inputs.live_pods() if pod.node_name == inputs.node_name for ip in pod.ips]
        try:
            changes = self._compiler.update(inputs)
            self.ranges = self.pod_ranges or node_pod_cidrs(snap, self.store.node_name)
            held_back = admission_rules.contribution(self.ranges, known)
            # All parts and the commit in one hold of the writer: another controller's commit
            # never applies half of them (a policy's chain gone while the shared part still jumps
            # to it, a pod isolated before its policy's rules are in).
            with self.writer.holding():
                self._contribute(changes)
                self.writer.contribute(admission_rules.OWNER, held_back)
                result = self.writer.commit()
            if result.deferred:  # the table's first rebuild waits for every controller's part
                return False
        except (NftError, ValueError) as exc:
            # A refused part leaves the writer and the compiler disagreeing: start both over.
            self._compiler, self._resend = PolicyCompiler(), True
            self.stats.failed_syncs += 1
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            log.error("policy sync failed: %s", self.stats.last_error)
            return False
        seconds = time.monotonic() - start
        self.stats.syncs += 1
        self.stats.full_syncs += int(result.full)
        self.stats.last_sync_seconds = seconds
        self.stats.last_sync_at = time.time()
        self.stats.generation_applied = snap.generation
        if self.observe is not None:
            self.observe(result.full, seconds)
        return True

    def _contribute(self, changes: dict[str, Contribution]) -> None:
        """Hand the writer the parts that changed; after a start or a failure, every part, and
        withdraw the policy owners the writer still holds that no longer have one."""
        if self._resend:
            # The shared part too when there is nothing in it (no pod, no policy): said once, so
            # the table's first rebuild knows policy has spoken.
            changes = {SHARED_OWNER: EMPTY, **self._compiler.parts}
            for owner in self.writer.owners():
                if (owner == SHARED_OWNER or owner.startswith(OWNER_PREFIX)) and owner not in changes:
                    self.writer.withdraw(owner)
        for owner, part in changes.items():
            self.writer.contribute(owner, part)
        self._resend = False


def node_pod_cidrs(snap: Snapshot, node_name: str) -> tuple[IPNetwork, ...]:
    node = snap.nodes.get(node_name)
    return tuple(node.pod_cidrs) if node is not None else ()


def merge_admitted(pods: list[Pod], admitted: list[Admitted]) -> list[Pod]:
    """The store's pods with the admitted addresses put in: an admitted pod the sources list takes
    them (its status may not show them yet), and an address an ADD just handed out belongs to that
    pod only, whoever else the sources still show with it (a terminating pod's old address)."""
    taken = {ip for a in admitted for ip in a.ips}
    by_key = {(a.namespace, a.name): a for a in admitted}
    out: list[Pod] = []
    for pod in pods:
        mine = by_key.pop(pod.key, None)
        ips = tuple(ip for ip in pod.ips if ip not in taken)
        if mine is not None:
            ips = tuple(dict.fromkeys(mine.ips + ips))
        out.append(pod if ips == pod.ips else replace(pod, ips=ips))
    return out
