"""Structured logs: one JSON object per line (to stderr, or appended to a file).

Every record has ``ts`` (UTC, ISO 8601 with milliseconds), ``level`` and ``event``; the rest are
the fields the caller passed. Python ``logging`` records from other modules (the runtime logs a
few warnings) go through the same writer, so the daemon's output stays one format.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import IO, Any

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class JsonLog:
    def __init__(self, stream: IO[str] | None = None, level: str = "info") -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.level = LEVELS[level]
        self._lock = threading.Lock()

    def emit(self, level: str, event: str, **fields: Any) -> None:
        if LEVELS[level] < self.level:
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
        record = {"ts": stamp, "level": level, "event": event, **fields}
        line = json.dumps(record, default=str, separators=(",", ":"))
        with self._lock:
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass  # a closed or full log must never fail a request

    def debug(self, event: str, **fields: Any) -> None:
        self.emit("debug", event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self.emit("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.emit("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.emit("error", event, **fields)


class _Handler(logging.Handler):
    def __init__(self, log: JsonLog) -> None:
        super().__init__()
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        level = record.levelname.lower()
        self.log.emit(level if level in LEVELS else "error", "log", logger=record.name,
                      msg=record.getMessage())


def route_stdlib_logging(log: JsonLog) -> None:
    root = logging.getLogger()
    root.handlers[:] = [_Handler(log)]
    root.setLevel(max(log.level, logging.INFO))
