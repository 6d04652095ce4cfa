"""The seed failure, for real: dumps racing a writer get NLM_F_DUMP_INTR from the kernel.

A namespace holds enough objects that one dump spans several receive buffers (the kernel
only flags multi-part dumps), and a churn process adds and deletes an object in a loop.
"""

from __future__ import annotations

import socket
import subprocess

import pytest
from pyroute2 import IPRoute

from nsutil import Netns
from podnet.kernel import DUMP_STATS, DumpInterrupted, Netlink, RetryPolicy, Snapshot, model, socket_in_netns
from podnet.kernel.dump import DumpRequest, RouteSocket, consistent_dump

from .conftest import N_ADDRS, N_VETH_PAIRS, ChurnStarter, stop

pytestmark = pytest.mark.root

NLM_F_DUMP_INTR = 0x10
CALLS = 20
FAST = RetryPolicy(attempts=3, backoff=0.001, max_backoff=0.002)


def expected_addrs() -> set[str]:
    return {f"10.50.{i // 250}.{i % 250 + 1}" for i in range(N_ADDRS)}


def assert_whole_address_snapshot(snap: Snapshot[model.Address]) -> None:
    """A consistent snapshot has every base address once; only the churned /32 may come or go."""
    seen = [a.address for a in snap if a.family == socket.AF_INET]
    assert len(seen) == len(set(seen)), "duplicate addresses in a snapshot called consistent"
    assert expected_addrs() <= set(seen)
    assert set(seen) - expected_addrs() <= {"10.99.0.1", "127.0.0.1"}


def assert_whole_link_snapshot(snap: Snapshot[model.Link]) -> None:
    names = [link.name for link in snap]
    assert len(names) == len(set(names)), "duplicate links in a snapshot called consistent"
    base = {"lo"} | {f"va{i}" for i in range(N_VETH_PAIRS)} | {f"vb{i}" for i in range(N_VETH_PAIRS)}
    assert base <= set(names)
    assert set(names) - base <= {"churna", "churnb"}


def test_plain_pyroute2_returns_flagged_dump_without_error(busy_addr_ns: Netns, churn: ChurnStarter) -> None:
    """Regression guard: if pyroute2 starts checking the flag, this test tells us (and
    podnet's own check stays the one that counts)."""
    churn(busy_addr_ns, "addr")
    sock = socket_in_netns(busy_addr_ns.name, socket.AF_NETLINK, socket.SOCK_DGRAM, 0)
    with IPRoute(use_socket=sock, groups=0) as ipr:
        flagged_dumps = 0
        for _ in range(10):
            msgs = list(ipr.get_addr())  # no exception, whatever the flags say
            if any(m["header"]["flags"] & NLM_F_DUMP_INTR for m in msgs):
                flagged_dumps += 1
    assert flagged_dumps > 0, "pyroute2 never returned a flagged dump: the race was not reproduced"


def test_address_dumps_under_churn_are_consistent_or_raise(busy_addr_ns: Netns, churn: ChurnStarter) -> None:
    churn(busy_addr_ns, "addr")
    outcomes = {"consistent": 0, "raised": 0}
    with Netlink(busy_addr_ns.name, retry=FAST) as nl:
        for _ in range(CALLS):
            try:
                snap = nl.addresses()
            except DumpInterrupted as exc:
                assert exc.attempts == FAST.attempts and exc.code == 11
                outcomes["raised"] += 1
                continue
            assert snap.consistent
            assert_whole_address_snapshot(snap)
            outcomes["consistent"] += 1
    stats = DUMP_STATS.as_dict()
    print("address dumps under churn:", outcomes, stats)
    assert stats["interrupted"] > 0, "the kernel never flagged a dump: the race was not reproduced"
    assert stats["gave_up"] == outcomes["raised"]
    assert stats["inconsistent_returned"] == 0


def test_link_dumps_under_churn_are_consistent_or_raise(busy_link_ns: Netns, churn: ChurnStarter) -> None:
    churn(busy_link_ns, "veth")
    outcomes = {"consistent": 0, "raised": 0}
    with Netlink(busy_link_ns.name, retry=FAST) as nl:
        for _ in range(CALLS * 2):
            try:
                snap = nl.links()
            except DumpInterrupted:
                outcomes["raised"] += 1
                continue
            assert_whole_link_snapshot(snap)
            outcomes["consistent"] += 1
    stats = DUMP_STATS.as_dict()
    print("link dumps under churn:", outcomes, stats)
    assert stats["interrupted"] > 0, "the kernel never flagged a dump: the race was not reproduced"


@pytest.mark.parametrize("kind", ["addr", "veth"])
def test_retry_succeeds_once_the_writer_stops(
    kind: str, request: pytest.FixtureRequest, churn: ChurnStarter
) -> None:
    ns: Netns = request.getfixturevalue("busy_addr_ns" if kind == "addr" else "busy_link_ns")
    proc = churn(ns, kind)
    req: DumpRequest[object]
    if kind == "addr":
        req = DumpRequest("addresses", model.RTM_GETADDR, model.address_request(), model.parse_address)
    else:
        req = DumpRequest("links", model.RTM_GETLINK, model.link_request(), model.parse_link)
    stopped_after: list[int] = []

    def stop_writer(attempt: int) -> None:
        if not stopped_after:
            stop(proc)
            stopped_after.append(attempt)

    sock = RouteSocket.open(ns.name)
    try:
        for _ in range(50):  # until an attempt is interrupted (near-certain on the first call)
            snap = consistent_dump(sock, req, retry=RetryPolicy(attempts=4), on_interrupt=stop_writer)
            if stopped_after:
                break
    finally:
        sock.close()
    assert stopped_after == [1], "no interrupted attempt while the writer ran"
    assert snap.consistent and snap.attempts == 2
    if kind == "addr":
        assert_whole_address_snapshot(snap)  # type: ignore[arg-type]
    else:
        assert_whole_link_snapshot(snap)  # type: ignore[arg-type]
    assert DUMP_STATS.retries >= 1


def test_best_effort_returns_the_last_snapshot_marked_inconsistent(
    busy_addr_ns: Netns, churn: ChurnStarter
) -> None:
    churn(busy_addr_ns, "addr")
    with Netlink(busy_addr_ns.name, retry=RetryPolicy(attempts=1)) as nl:
        for _ in range(CALLS):
            snap = nl.addresses(best_effort=True)
            if not snap.consistent:
                break
    assert not snap.consistent and snap.attempts == 1
    assert len(snap) > 0  # the data of the flagged attempt, decoded anyway
    assert DUMP_STATS.inconsistent_returned >= 1


def test_without_writer_dumps_need_one_attempt(busy_addr_ns: Netns) -> None:
    with Netlink(busy_addr_ns.name) as nl:
        snap = nl.addresses()
    assert snap.consistent and snap.attempts == 1
    assert_whole_address_snapshot(snap)
    out = subprocess.run(["ip", "-n", busy_addr_ns.name, "-4", "-o", "addr", "show"],
                         capture_output=True, text=True, check=True).stdout
    assert len([a for a in snap if a.family == socket.AF_INET]) == len(out.splitlines())
