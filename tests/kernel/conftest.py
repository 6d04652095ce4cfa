"""Fixtures for kernel-layer tests: busy namespaces and churn writers, always cleaned up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nsutil import Netns, NetnsFactory
from podnet.kernel import DUMP_STATS

from .churn import N_STABLE, N_VETH_PAIRS, STABLE_SETUP, stable_v4

CHURN = Path(__file__).with_name("churn.py")
N_ADDRS = N_STABLE


def batch(ns: Netns, commands: list[str]) -> None:
    """Many ip commands in one process (``ip -batch -``): 1,000 addresses in ~0.1 s."""
    ns.run(["ip", "-batch", "-"], input="".join(c + "\n" for c in commands))


def addr_commands(n: int = N_ADDRS) -> list[str]:
    return [f"addr add {stable_v4(i)}/32 dev lo" for i in range(n)]




def stop(proc: subprocess.Popen[bytes]) -> None:
    """End a process this test started, by its PID."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.fixture
def busy_addr_ns(netns: NetnsFactory) -> Netns:
    """A namespace with N_ADDRS /32s on lo: address dumps span several receive buffers."""
    ns = netns("addrs")
    batch(ns, addr_commands())
    return ns


@pytest.fixture
def busy_link_ns(netns: NetnsFactory) -> Netns:
    """A namespace with N_VETH_PAIRS veth pairs: link dumps span several receive buffers."""
    ns = netns("links")
    batch(ns, [f"link add va{i} type veth peer name vb{i}" for i in range(N_VETH_PAIRS)])
    return ns


@pytest.fixture
def busy(netns: NetnsFactory) -> Callable[[str], Netns]:
    """``busy(table)``: a namespace holding the stable objects of STABLE_SETUP[table]."""

    def make(table: str) -> Netns:
        ns = netns(table[:5])
        batch(ns, STABLE_SETUP[table])
        return ns

    return make


ChurnStarter = Callable[[Netns, str], "subprocess.Popen[bytes]"]


@pytest.fixture
def churn() -> Iterator[ChurnStarter]:
    """Start a churn writer (``churn(ns, mode)``, modes of churn.py); bounded to 60 s, killed by PID."""
    started: list[subprocess.Popen[bytes]] = []

    def start(ns: Netns, mode: str) -> subprocess.Popen[bytes]:
        proc = ns.popen([sys.executable, str(CHURN), mode, "60"], stdout=subprocess.PIPE)
        started.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"churning", "churn writer did not start"
        return proc

    try:
        yield start
    finally:
        for proc in started:
            stop(proc)


@pytest.fixture(autouse=True)
def _fresh_dump_stats() -> None:
    DUMP_STATS.reset()
