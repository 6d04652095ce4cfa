"""One controller's sync thread, the part every controller shares: changes mark the state dirty,
the thread syncs once every source has listed (coalescing what arrives meanwhile), retries a
failed sync after a pause, and runs the controller's idle work (the table's periodic verify) when
there is nothing to sync. Neither a sync nor the idle work runs under the lock, so the store's
callbacks (which only mark dirty) never wait on a commit."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from podnet.agent.store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")


class SyncLoop:
    thread_name = "podnet-sync"

    def __init__(self, store: Store, *, retry_seconds: float = 1.0) -> None:
        self.store = store
        self.retry_seconds = retry_seconds
        self._cond = threading.Condition()
        self._dirty = True
        self._stopping = False
        self._requested = 0  # requests counted; a sync covers those made before it started
        self._done = -1
        self._syncing = False
        self.crashes = 0  # steps that raised (bugs): logged, retried
        self.applied_generation = -1  # the store's generation when the last successful sync began
        self._thread: threading.Thread | None = None

    # ---- for subclasses ----

    def sync_once(self) -> bool:
        raise NotImplementedError

    def idle(self) -> None:
        """Work done between syncs, outside the lock (nothing by default)."""

    def idle_wait(self) -> float:
        return 5.0

    # ---- triggers ----

    def request(self) -> int:
        """Mark dirty; returns a ticket :meth:`wait_for` accepts."""
        with self._cond:
            self._dirty = True
            self._requested += 1
            self._cond.notify_all()
            return self._requested

    def wait_for(self, ticket: int, timeout: float) -> bool:
        """Wait (bounded) until a sync that started after ``ticket`` was taken has succeeded."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._done < ticket:
                left = deadline - time.monotonic()
                if left <= 0 or self._stopping:
                    return False
                self._cond.wait(left)
            return True

    def current_up_to(self) -> int:
        """The store generation this controller has put in force. Idle (nothing marked, nothing
        under way) after a successful sync: every change told to it so far, since each was either
        synced or of no concern to it; otherwise what its last successful sync started from."""
        delivered = self.store.delivered_generation  # read first: told before the state below
        with self._cond:
            if self.applied_generation >= 0 and not (self._dirty or self._syncing):
                return max(delivered, self.applied_generation)
            return self.applied_generation

    # ---- the thread ----

    def _guarded(self, step: Callable[[], T], failed: T) -> T:
        """A bug in a step is logged and taken as a failed sync (retried after the pause), never the
        end of the controller's thread: a dead thread would leave the node unprogrammed, silently."""
        try:
            return step()
        except Exception:
            log.exception("%s: %s failed", self.thread_name, getattr(step, "__name__", "step"))
            self.crashes += 1
            return failed

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                if not (self._dirty and self.store.synced) and not self._stopping:
                    self._cond.wait(self.idle_wait())
                if self._stopping:
                    return
                due = self._dirty and self.store.synced
                if due:
                    self._dirty, self._syncing = False, True
                    ticket = self._requested
                    # Before the sync takes its snapshot: every change up to here is in it.
                    generation = self.store.generation
            if due:
                ok = self._guarded(self.sync_once, False)
                with self._cond:
                    self._syncing = False
                    if ok:
                        self._done = ticket
                        self.applied_generation = generation
                        self._cond.notify_all()
                    else:
                        self._dirty = True
                        self._cond.wait(self.retry_seconds)
            self._guarded(self.idle, None)
