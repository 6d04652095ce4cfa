"""One connection's request, from accept to answer, and the deadlines it runs under.

An exchange moves WAITING (accepted; no thread: the accept loop polls it) -> READING (a reader
thread receives it) -> QUEUED (complete, waiting for a worker) -> RUNNING -> DONE. The accept
loop enforces every deadline from outside, so no step can stretch it:

* the request must be in by ``read_deadline`` however the peer paces its bytes: at that moment
  the socket's reading side is shut down, and the reader's receive returns at once;
* a complete request that no worker has picked up by ``queue_deadline`` (every worker busy with
  calls that do not finish) is taken back and refused, so the shim runs it in-process;
* the whole exchange, answer included, ends by ``deadline``.

``claim`` is the one way to change state, under a lock, so the accept loop and a thread never
both act on one exchange (e.g. a worker starting a call the loop has just refused).
"""

from __future__ import annotations

import contextlib
import enum
import socket
import threading
import time
from collections.abc import Callable


def _nothing() -> None:
    pass


class State(enum.Enum):
    WAITING = "waiting"
    READING = "reading"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


class Exchange:
    def __init__(self, conn: socket.socket, read_timeout: float, queue_timeout: float,
                 timeout: float) -> None:
        now = time.monotonic()
        self.conn = conn
        self.read_deadline = now + read_timeout
        self.queue_timeout = queue_timeout
        self.queue_deadline = float("inf")
        self.deadline = now + timeout
        self.state = State.WAITING
        self.late = False  # its reading side was shut down at the read deadline
        # What a queued call holds (the namespace fd its shim sent): whoever takes the exchange
        # back before it runs lets go of it, at once (the worker that would have may never come).
        self.release: Callable[[], None] = _nothing
        self._lock = threading.Lock()

    def claim(self, expected: State, new: State) -> bool:
        with self._lock:
            if self.state is not expected:
                return False
            self.state = new
            if new is State.QUEUED:
                self.queue_deadline = time.monotonic() + self.queue_timeout
            return True

    def next_deadline(self) -> float:
        state = self.state
        if state in (State.WAITING, State.READING):
            return self.read_deadline
        if state is State.QUEUED:
            return self.queue_deadline
        return float("inf")

    def expire(self, now: float) -> State | None:
        """Act on a passed deadline: the state the exchange was taken from (WAITING or QUEUED:
        the caller then refuses it), or None (nothing to do by the caller)."""
        with self._lock:
            if self.state is State.READING and now >= self.read_deadline and not self.late:
                self.late = True
                with contextlib.suppress(OSError):
                    self.conn.shutdown(socket.SHUT_RD)
                return None
            if (self.state is State.WAITING and now >= self.read_deadline) or (
                    self.state is State.QUEUED and now >= self.queue_deadline):
                taken, self.state = self.state, State.DONE
                return taken
            return None

    def remaining(self, floor: float = 0.5) -> float:
        """Seconds left for the exchange (at least ``floor``: an answer always gets a chance)."""
        return max(floor, self.deadline - time.monotonic())
