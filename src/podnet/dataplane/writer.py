"""The single writer of one nftables table.

Controllers and plugins hand it their contribution under an owner key; it keeps the union
(:mod:`podnet.dataplane.union`), and :meth:`TableWriter.commit` applies the difference between the
union and what it last applied: one transaction, or up to three when a packet inside the table
while one commits could meet half a change (make, switch, break: :mod:`podnet.dataplane.phases`;
a refused step puts the table back as it was). A full resync rebuilds the whole table from the
union in one transaction, and is what the first commit of a writer does (a restarting agent adopts
the table the previous one left: the kernel swaps old for new in one step, so pods isolated by
policy stay isolated throughout) and what the commit after any failed one does. A rebuild keeps
what packets put into dynamic sets (ClientIP affinity), with the time it had left
(:mod:`podnet.dataplane.carry`).

The kernel's table is read only by :meth:`TableWriter.verify`, to compare: on a difference (an
element or rule added or deleted by hand) the table is rebuilt from the union and the repair
counted. What the kernel holds is never written back.

Rules are compared by their handles: the kernel gives every rule it adds a new handle, never reused
in the table, so the handles read right after the writer added a chain's rules identify them.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

from podnet.dataplane import carry
from podnet.dataplane.contribution import EMPTY, Contribution
from podnet.dataplane.diff import Patch, incremental, rebuild
from podnet.dataplane.image import Image
from podnet.dataplane.phases import phases
from podnet.dataplane.union import Union
from podnet.dataplane.verify import drift
from podnet.kernel.nft import Family, Nft, NftError, Transaction, check_family, check_name
from podnet.kernel.nft.setelem import SetType

_ELEMENT_VERBS = frozenset({"add-element", "add-elements", "delete-element"})


@dataclass
class WriterMetrics:
    """Plain counters; the agent exports them."""

    commits: int = 0  # successful commits that changed the kernel (incremental or full)
    failed_commits: int = 0
    full_resyncs: int = 0
    drift_repairs: int = 0
    verifies: int = 0
    last_commit_seconds: float = 0.0
    last_full_seconds: float = 0.0
    last_error: str = ""
    carried_elements: int = 0  # dynamic set elements the last rebuild kept (ClientIP affinity)
    carry_failures: int = 0  # rebuilds that could not keep them


@dataclass(frozen=True)
class CommitResult:
    changed: bool  # a transaction was applied
    full: bool  # it was a full resync
    ops: int  # commands in the transaction
    seconds: float
    deferred: bool = False  # a rebuild is due and a required owner has not contributed yet


class TableWriter:
    """One table, many contributors. Thread-safe: one lock, commits serialized."""

    def __init__(self, nft: Nft, family: Family, table: str, *, verify_period: float = 60.0,
                 metrics: WriterMetrics | None = None, comment: str | None = None) -> None:
        self.nft = nft
        self.family = cast(Family, check_family(family))
        self.table = check_name(table, "table name")
        self.verify_period = verify_period
        self.metrics = metrics if metrics is not None else WriterMetrics()
        self.comment = comment if comment is not None else "managed by podnet; do not edit"
        self._lock = threading.RLock()
        self._union = Union()
        self._image = Image()
        self._handles: dict[str, list[int]] = {}  # chain -> handles of the rules the writer added
        self._needs_resync = True  # nothing applied yet: the first commit adopts the table
        self._required: set[str] = set()
        self._heard: set[str] = set()  # owners that have contributed, an empty part included
        self._next_verify = 0.0
        self._unrepairable: set[str] = set()
        self._generation = 0  # transactions applied (verify's listings are matched against it)

    # ---- contributions ----

    def contribute(self, owner: str, c: Contribution) -> None:
        """Replace the owner's contribution (ContributionConflict: refused, the previous one stays)."""
        with self._lock:
            self._union.replace(owner, c)
            self._heard.add(owner)

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """While in this block, no other thread contributes or commits: a controller handing over
        several parts (one per policy, then the shared one) and committing them is never seen half
        way by another controller's commit."""
        with self._lock:
            yield

    def withdraw(self, owner: str) -> None:
        with self._lock:
            self._union.replace(owner, EMPTY)

    def owners(self) -> list[str]:
        with self._lock:
            return sorted(self._union.contributions)

    def desired(self) -> Image:
        """The table the union makes (a copy)."""
        with self._lock:
            return Image.of(self._union)

    # ---- writing ----

    def require(self, *owners: str) -> None:
        """No rebuild of the table (the first commit: adopting what a previous process left) until
        each of these owners has contributed (an empty part counts: a node without pods or
        policies has nothing to say, and has said it): a rebuild from part of the union would
        drop, for a moment, what the others keep in force (an isolated pod's drop rules)."""
        with self._lock:
            self._required.update(owners)

    def commit(self) -> CommitResult:
        """Apply what changed since the last commit (make, switch, break; a full resync when one is
        due). An NftError is raised again after it is counted; the next commit is then a resync.
        A rebuild waits for the required owners: ``deferred`` says it was not applied yet."""
        with self._lock:
            if self._needs_resync:
                if not self._required <= self._heard:
                    return CommitResult(False, False, 0, 0.0, deferred=True)
                return self._resync()
            start = time.monotonic()
            dirty = self._union.take_dirty()
            if not dirty:
                return CommitResult(False, False, 0, 0.0)
            patch = incremental(self.family, self.table, self._union, self._image, dirty)
            if patch is None:
                return self._resync()
            if not patch.tx:
                return CommitResult(False, False, 0, time.monotonic() - start)
            self._apply_phases(patch.tx)
            self._unrepairable = set()
            patch.apply_to(self._image, self._union)
            self._record_handles(patch)
            return self._done(start, full=False, ops=len(patch.tx.ops))

    def resync(self) -> CommitResult:
        """Rebuild the whole table from the union, in one transaction."""
        with self._lock:
            return self._resync()

    def _resync(self) -> CommitResult:
        start = time.monotonic()
        self._needs_resync = True
        self._union.take_dirty()
        image = Image.of(self._union)
        tx = rebuild(self.family, self.table, image, self.comment)
        self._apply_rebuild(tx, carry.read(self.nft, self.family, self.table, image, self._image))
        self._image = image
        self._needs_resync = False
        self.metrics.full_resyncs += 1
        self._handles = {}
        self._record_handles(None)
        result = self._done(start, full=True, ops=len(tx.ops))
        self.metrics.last_full_seconds = result.seconds
        return result

    def _apply_phases(self, tx: Transaction) -> None:
        """An incremental transaction as make, switch and break steps (:mod:`podnet.dataplane.phases`:
        a packet inside the table while one commits stays on a whole path). When a later step is
        refused, the table is put back as it was before the commit: a failed commit changes nothing."""
        applied = 0
        try:
            for part in phases(tx, self._image.sets):
                if not self._apply_elements(part):
                    self._apply(part)
                applied += 1
        except NftError:
            if applied:
                before = rebuild(self.family, self.table, self._image, self.comment)
                kept = carry.read(self.nft, self.family, self.table, self._image, self._image)
                with contextlib.suppress(NftError):  # counted; the next commit rebuilds anyway
                    self._apply_rebuild(before, kept)
            raise

    def _apply_rebuild(self, tx: Transaction, kept: carry.Carried) -> None:
        """The rebuild with the packet path's dynamic set elements carried over. Without them when
        they could not be read, or when the rebuild failed with them: one element the kernel takes
        back differently must not keep the table from being rebuilt."""
        if kept.error is not None:
            self.metrics.carry_failures += 1
            self.metrics.last_error = kept.error
        self.metrics.carried_elements = 0
        if not kept.elements:
            self._apply(tx)
            return
        with_kept = Transaction(tx.family, tx.table, list(tx.ops))
        kept.add_to(with_kept)
        try:
            self._apply(with_kept)
        except NftError:
            self.metrics.carry_failures += 1
            self._apply(tx)
            return
        self.metrics.carried_elements = kept.count()

    def _apply(self, tx: Transaction) -> None:
        self._generation += 1
        try:
            self.nft.apply(tx)
        except NftError as exc:
            self._failed(exc)
            raise

    def _apply_elements(self, tx: Transaction) -> bool:
        """A transaction of element commands only, through the backend's element path when it has
        one (libnftables: one netlink batch, without filling its cache from the whole table).
        False when it has none or declines: then :meth:`_apply`."""
        send = getattr(self.nft, "apply_elements", None)
        if send is None or any(op.verb not in _ELEMENT_VERBS for op in tx.ops):
            return False
        types = {}
        for name in {op.name for op in tx.ops}:
            decl = self._image.sets.get(name)
            if decl is None:
                return False
            types[name] = SetType(decl.type, decl.value_type, "interval" in decl.flags)
        self._generation += 1
        try:
            return bool(send(tx, types))
        except NftError as exc:
            self._failed(exc)
            raise

    def _failed(self, exc: NftError) -> None:
        self._needs_resync = True
        self.metrics.failed_commits += 1
        self.metrics.last_error = str(exc)

    def _done(self, start: float, *, full: bool, ops: int) -> CommitResult:
        seconds = time.monotonic() - start
        self.metrics.commits += 1
        self.metrics.last_commit_seconds = seconds
        return CommitResult(True, full, ops, seconds)

    def _record_handles(self, patch: Patch | None) -> None:
        """Read back the handles of the chains whose rules were just written (all of them after a
        rebuild). A chain whose rule count does not match is left unrecorded, so verify compares
        its count and finds the difference."""
        chains = list(self._image.chains) if patch is None else patch.rewritten()
        for name in [] if patch is None else [n for n in patch.rules if n not in self._image.chains]:
            self._handles.pop(name, None)
        if not chains:
            return
        found = self._read_handles(None if patch is None or len(chains) > 8 else chains)
        for name in chains:
            handles = found.get(name, [])
            if len(handles) == len(self._image.rules.get(name, ())):
                self._handles[name] = handles
            else:
                self._handles.pop(name, None)

    def _read_handles(self, chains: list[str] | None) -> dict[str, list[int]]:
        """Rule handles per chain (of ``chains``, or all): from the backend's rule dump when it has
        one (libnftables: netlink, no listing), else from a listing without elements. Empty when
        the read fails: the commit is applied, verify then compares rule counts."""
        dump = getattr(self.nft, "rule_handles", None)
        try:
            if dump is not None:
                return cast(dict[str, list[int]], dump(self.family, self.table, chains))
            state = self.nft.list_table(self.family, self.table, elements=False)
        except NftError:
            return {}
        return {} if state is None else {name: state.handles(name) for name in state.chains}

    # ---- verifying ----

    def verify(self) -> int:
        """Compare the kernel's table with what was applied; on any difference rebuild it from the
        union. Returns the number of repairs made (0 or 1)."""
        with self._lock:
            self.metrics.verifies += 1
            if self._needs_resync:
                return 0  # the next commit rebuilds anyway
            generation = self._generation
        # Listing a big table takes a while: commits go on meanwhile, and a listing that a commit
        # overtook is not compared (the next period looks again).
        kernel = self.nft.list_table(self.family, self.table)
        with self._lock:
            if generation != self._generation or self._needs_resync:
                return 0
            found = drift(kernel, self._image, self._handles)
            if not found or set(found) <= self._unrepairable:
                return 0
            self.metrics.last_error = f"drift: {found[0]}"
            self._resync()
            self.metrics.drift_repairs += 1
            # Still different right after a rebuild: the kernel lists something in a form this
            # comparison does not know. Say so once, and do not rebuild every period for it.
            self._unrepairable = set(self._drift())
            if self._unrepairable:
                self.metrics.last_error = f"verify: differs right after a rebuild: {min(self._unrepairable)}"
            return 1

    def _drift(self) -> list[str]:
        return drift(self.nft.list_table(self.family, self.table), self._image, self._handles)

    def maybe_verify(self, now: float | None = None) -> int:
        """:meth:`verify` when a period has passed since the last one (the agent's loop calls this)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if now < self._next_verify:
                return 0
            self._next_verify = now + self.verify_period
        return self.verify()
