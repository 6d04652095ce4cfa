"""The daemon's own running totals for ``podnet status``: a Metrics that counts in memory and
passes everything on to the configured metrics (Prometheus or none)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from podnet.daemon.metrics import Metrics


class Tally:
    def __init__(self, inner: Metrics) -> None:
        self.inner = inner
        self.started = time.time()
        self._lock = threading.Lock()
        self._requests: Counter[tuple[str, str]] = Counter()  # (command, ok|error)
        self._refused: Counter[str] = Counter()
        self._in_flight = 0
        self.last_error = ""

    def request(self, plugin: str, command: str, seconds: float, result: str) -> None:
        with self._lock:
            self._requests[(command, result)] += 1
        self.inner.request(plugin, command, seconds, result)

    def refused(self, reason: str) -> None:
        with self._lock:
            self._refused[reason] += 1
        self.inner.refused(reason)

    def in_flight(self, delta: int) -> None:
        with self._lock:
            self._in_flight += delta
        self.inner.in_flight(delta)

    def saw_ipam(self, conf: dict[str, Any], cni_version: str) -> None:
        self.inner.saw_ipam(conf, cni_version)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            requests = {f"{c}/{r}": n for (c, r), n in sorted(self._requests.items())}
            return {"uptime_seconds": round(time.time() - self.started, 1), "requests": requests,
                    "refused": dict(sorted(self._refused.items())), "in_flight": self._in_flight,
                    "last_error": self.last_error}
