"""The seed failure, for real: dumps racing a writer that changes the table being dumped.

A namespace holds enough objects that one dump spans several receive buffers (a dump is
only torn when the kernel resumes its walk between parts), and a churn process adds and
deletes objects in a loop. For every kind of dump podnet makes, no snapshot it returns may
miss or repeat an object that stayed in the table, whether the kernel flags the dump
(NLM_F_DUMP_INTR) or not.
"""

from __future__ import annotations

import collections
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from pyroute2 import IPRoute

from nsutil import Netns
from podnet.kernel import (
    DUMP_STATS,
    DumpInterrupted,
    Netlink,
    RetryPolicy,
    Snapshot,
    model,
    netlink,
    socket_in_netns,
)
from podnet.kernel.dump import DumpRequest, RouteSocket, _dump_once, consistent_dump

from .churn import N_VETH_PAIRS, NEIGH_LINK, stable_v4, stable_v6
from .conftest import N_ADDRS, ChurnStarter, stop

pytestmark = pytest.mark.root

NLM_F_DUMP_INTR = 0x10
CALLS = 20
FAST = RetryPolicy(attempts=3, backoff=0.001, max_backoff=0.002)


def expected_addrs() -> set[str]:
    return {stable_v4(i) for i in range(N_ADDRS)}


def assert_whole_address_snapshot(snap: Snapshot[model.Address]) -> None:
    """A consistent snapshot has every base address once; only the churned /32 may come or go."""
    seen = [a.address for a in snap if a.family == socket.AF_INET]
    assert len(seen) == len(set(seen)), "duplicate addresses in a snapshot called consistent"
    assert expected_addrs() <= set(seen)
    assert all(a.startswith("10.50.") or a == "127.0.0.1" for a in set(seen) - expected_addrs())


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
        req = DumpRequest("addresses", model.RTM_GETADDR, model.address_request(), model.parse_address,
                          flags_interrupts=True)
    else:
        req = DumpRequest("links", model.RTM_GETLINK, model.link_request(), model.parse_link,
                          flags_interrupts=True)
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


# -- every dump kind podnet makes, under churn of its own table ---------------------------------

DUMPS = 200  # per kind (was 300: the suite's 15-minute budget)
V4 = frozenset(stable_v4(i) for i in range(N_ADDRS))
V6 = frozenset(stable_v6(i) for i in range(N_ADDRS))
LINKS = frozenset({"lo"} | {f"va{i}" for i in range(N_VETH_PAIRS)} | {f"vb{i}" for i in range(N_VETH_PAIRS)})
RULES = frozenset((1000 + i % 256, 100 + i) for i in range(N_ADDRS))


def _route_key(r: model.Route) -> object:
    return r.dst if r.table == model.RT_TABLE_MAIN else None


@dataclass(frozen=True)
class Kind:
    """One dump podnet makes: the table set up (conftest.STABLE_SETUP), the churn that
    changes it, the Netlink call, and the key of each object that stays in the table."""

    table: str
    churn: str
    dump: Callable[[Netlink], Snapshot[Any]]
    key: Callable[[Any], object]
    expected: frozenset[object]


KINDS = {
    "links": Kind("links", "veth", lambda nl: nl.links(), lambda x: x.name, LINKS),
    "addresses": Kind("addresses", "addr+addr6", lambda nl: nl.addresses(), lambda x: x.address, V4 | V6),
    "addresses-of-link": Kind("addresses", "addr+addr6", lambda nl: nl.addresses("lo"),
                              lambda x: x.address, V4 | V6),
    "routes-v4": Kind("routes", "route", lambda nl: nl.routes(socket.AF_INET), _route_key, V4),
    "routes-v6": Kind("routes6", "route6", lambda nl: nl.routes(socket.AF_INET6), _route_key, V6),
    "routes-of-link": Kind("routes6", "route6", lambda nl: nl.routes(table=model.RT_TABLE_MAIN, oif="lo"),
                           _route_key, V6),
    "neighbours": Kind("neighbours", "neigh", lambda nl: nl.neighbours(), lambda x: x.dst, V4),
    "neighbours-of-link": Kind("neighbours", "neigh", lambda nl: nl.neighbours(NEIGH_LINK),
                               lambda x: x.dst, V4),
    "rules": Kind("rules", "rule", lambda nl: nl.rules(socket.AF_INET), lambda x: (x.priority, x.table),
                  RULES),
}


def whole(kind: Kind, objects: Any) -> bool:
    """Every stable object exactly once (churned objects may come or go)."""
    seen = collections.Counter(k for k in map(kind.key, objects) if k in kind.expected)
    return set(seen) == kind.expected and all(n == 1 for n in seen.values())


@pytest.mark.parametrize("name", list(KINDS))
def test_no_snapshot_under_churn_misses_or_repeats_a_stable_object(
    name: str, busy: Callable[[str], Netns], churn: ChurnStarter
) -> None:
    kind = KINDS[name]
    ns = busy(kind.table)
    with Netlink(ns.name, retry=FAST) as nl:
        assert whole(kind, kind.dump(nl)), "the stable objects were not set up"
        churn(ns, kind.churn)
        outcomes: collections.Counter[str] = collections.Counter()
        for _ in range(DUMPS):
            try:
                snap = kind.dump(nl)
            except DumpInterrupted:
                outcomes["raised"] += 1
                continue
            outcomes["whole" if whole(kind, snap) and snap.consistent else "BAD"] += 1
    print(f"{name}: {DUMPS} dumps under churn: {dict(outcomes)}", DUMP_STATS.as_dict())
    assert outcomes["BAD"] == 0, f"{outcomes['BAD']} of {DUMPS} snapshots returned as consistent were not"


def _request_of(kind: Kind, nl: Netlink, monkeypatch: pytest.MonkeyPatch) -> DumpRequest[Any]:
    """The DumpRequest that Netlink builds for this kind (captured, not sent)."""
    seen: list[DumpRequest[Any]] = []

    def capture(_sock: object, request: DumpRequest[Any], **_kw: object) -> Snapshot[Any]:
        seen.append(request)
        return Snapshot([], 1, True)

    with monkeypatch.context() as m:
        m.setattr(netlink, "consistent_dump", capture)
        kind.dump(nl)
    return seen[0]


@pytest.mark.parametrize("name", list(KINDS))
def test_which_dumps_the_kernel_flags(
    name: str, busy: Callable[[str], Netns], churn: ChurnStarter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Single attempts under churn, sorted by what the kernel said and what they held: where
    ``flags_interrupts`` says the kernel flags a dump, it does. The flag is never the only
    check (a change racing with the making of a part can tear it unflagged, rarely), and where
    the kernel does not flag, podnet's other checks are all there is."""
    kind = KINDS[name]
    ns = busy(kind.table)
    with Netlink(ns.name) as nl:
        request = _request_of(kind, nl, monkeypatch)
        churn(ns, kind.churn)
        seen: collections.Counter[tuple[str, str]] = collections.Counter()
        for _ in range(DUMPS):
            items, _parts, flagged = _dump_once(nl._rt, request, keep_interrupted=True)
            seen["flagged" if flagged else "unflagged", "whole" if whole(kind, items) else "torn"] += 1
    print(f"{name}: flags_interrupts={request.flags_interrupts}:", dict(seen))
    flagged = seen["flagged", "whole"] + seen["flagged", "torn"]
    assert bool(flagged) == request.flags_interrupts, f"kernel flagged {flagged} of {DUMPS} attempts"
    assert request.watch or not any(n for (_, state), n in seen.items() if state == "torn"), \
        "a dump that can be torn is not watched for changes"
