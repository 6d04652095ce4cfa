"""The metrics endpoint is bounded: idle connections cost no threads and are closed after a time
limit, and a scrape is still answered while hundreds of them are open."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from podnet.daemon.metrics import PrometheusMetrics

IDLE = 300


@pytest.fixture
def endpoint() -> Iterator[tuple[str, int]]:
    prom = PrometheusMetrics()
    server = prom.serve("127.0.0.1", 0)
    host, port = server.server_address[:2]
    yield host, port
    server.shutdown()
    server.server_close()


def _scrape(host: str, port: int) -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
        body: str = resp.read().decode()
    return body


def test_idle_connections_cost_no_threads_and_scrapes_are_answered(endpoint: tuple[str, int]) -> None:
    host, port = endpoint
    before = threading.active_count()
    with ExitStack() as stack:
        for _ in range(IDLE):
            s = stack.enter_context(socket.create_connection((host, port), timeout=5))
            s.sendall(b"GET /metr")  # half a request, then nothing
        time.sleep(0.3)
        assert threading.active_count() - before <= 4
        start = time.monotonic()
        assert "podnet_daemon_requests_in_flight" in _scrape(host, port)
        assert time.monotonic() - start < 2


def test_a_silent_connection_is_closed_after_the_time_limit(endpoint: tuple[str, int]) -> None:
    host, port = endpoint
    with socket.create_connection((host, port), timeout=30) as s:
        start = time.monotonic()
        assert s.recv(1) == b""  # closed by the server, unanswered
        assert time.monotonic() - start < 15
