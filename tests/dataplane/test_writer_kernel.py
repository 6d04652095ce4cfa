"""The writer against the real kernel in a throw-away namespace: drift made by hand with ``nft`` is
found and repaired from the union; a second writer adopting the table rebuilds it without a moment
in which the isolating chain or the pod's map element is missing."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from writer_util import policy

from nsutil import Netns
from podnet.dataplane.contribution import Contribution, Set
from podnet.dataplane.writer import TableWriter
from podnet.kernel.nft import LibNftables, Nft, NftError, NftExec, Transaction

pytestmark = pytest.mark.root
TABLE = "podnet-policy"


def _contribution(peers: int = 0) -> Contribution:
    c = policy(["10.0.0.1", "10.0.0.2"], ["10.1.0.0/24", "10.2.0.5/32", "10.3.0.1-10.3.0.9"])
    ports = Set("ports", ("inet_proto", "inet_service"), flags=("interval",))
    elements = {**c.elements, "ports": {"tcp . 80": None, "udp . 53-54": None, "6 . 8080": None}}
    elements["isolate-a-peers"] = {**elements["isolate-a-peers"],
                                   **{f"10.{100 + i // 250}.{i % 250}.0/24": None for i in range(peers)}}
    return Contribution(c.chains, (*c.sets, ports), elements)


@pytest.fixture(params=["libnftables", "exec"])
def nft(request: pytest.FixtureRequest, node: Netns) -> Iterator[Nft]:
    if request.param == "exec":
        yield NftExec(netns=node.path)
        return
    with LibNftables(netns=node.path) as lib:
        yield lib


def _nft(node: Netns, *args: str) -> str:
    return node.run(["nft", *args]).stdout


def test_verify_finds_nothing_on_an_untouched_table(nft: Nft) -> None:
    w = TableWriter(nft, "inet", TABLE)
    w.contribute("policy", _contribution())
    w.commit()
    w.contribute("policy", _contribution(peers=3))
    w.commit()
    assert w.verify() == 0 and w.verify() == 0 and w.metrics.drift_repairs == 0


def test_drift_made_by_hand_is_repaired_and_counted(nft: Nft, node: Netns) -> None:
    w = TableWriter(nft, "inet", TABLE, verify_period=1.0)
    w.contribute("policy", _contribution())
    w.commit()
    _nft(node, "delete", "element", "inet", TABLE, "pods-v4", "{ 10.0.0.2 }")
    assert w.maybe_verify(0.0) == 1 and w.metrics.drift_repairs == 1
    assert "10.0.0.2 : goto isolate-a" in _nft(node, "list", "map", "inet", TABLE, "pods-v4")
    handle = re.search(r"drop # handle (\d+)", _nft(node, "-a", "list", "chain", "inet", TABLE, "isolate-a"))
    assert handle is not None
    _nft(node, "delete", "rule", "inet", TABLE, "isolate-a", "handle", handle.group(1))
    assert w.maybe_verify(0.5) == 0  # within the period: not looked at yet
    assert w.maybe_verify(1.0) == 1 and w.metrics.drift_repairs == 2
    assert re.search(r"\n\s+drop\n", _nft(node, "list", "chain", "inet", TABLE, "isolate-a"))
    _nft(node, "add", "element", "inet", TABLE, "isolate-a-peers", "{ 192.168.7.0/24 }")
    _nft(node, "add", "rule", "inet", TABLE, "ingress", "accept")
    assert w.verify() == 1 and w.verify() == 0 and w.metrics.drift_repairs == 3
    listed = _nft(node, "list", "table", "inet", TABLE)
    assert "192.168.7.0/24" not in listed and not re.search(r"\n\s+accept\n", listed)
    _nft(node, "chain", "inet", TABLE, "ingress", "{ policy drop; }")
    assert w.verify() == 1 and w.metrics.drift_repairs == 4
    assert "policy accept" in _nft(node, "list", "chain", "inet", TABLE, "ingress")


class Sampler:
    """Looks at the table from its own libnftables context, as fast as it can, until stopped: every
    look must find the isolating chain's final drop and the pod's map element."""

    def __init__(self, node: Netns) -> None:
        self.lib = LibNftables(netns=node.path)
        self.looks = 0
        self.misses: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _look(self) -> None:
        try:
            chain = self.lib.run(f"list chain inet {TABLE} isolate-a")
            element = self.lib.run(f"get element inet {TABLE} pods-v4 {{ 10.0.0.1 }}")
        except NftError as exc:
            self.misses.append(str(exc))
            return
        if not re.search(r"\n\s+drop\n", chain) or "goto isolate-a" not in element:
            self.misses.append(f"chain or element incomplete: {chain!r} {element!r}")

    def _run(self) -> None:
        while not self._stop.is_set():
            self._look()
            self.looks += 1

    def during(self, action: Callable[[], object]) -> int:
        """Looks made while ``action`` ran (at least one before and after it, too)."""
        self._thread.start()
        while self.looks < 3:
            time.sleep(0.001)
        before = self.looks
        action()
        during = self.looks - before
        after = self.looks
        while self.looks < after + 3:
            time.sleep(0.001)
        self._stop.set()
        self._thread.join()
        self.lib.close()
        return during


def test_a_restarting_writer_adopts_the_table_without_a_window(node: Netns) -> None:
    contribution = _contribution(peers=5_000)
    with LibNftables(netns=node.path) as first:
        w = TableWriter(first, "inet", TABLE)
        w.contribute("policy", contribution)
        w.commit()
    # The agent restarts (three times): a new writer, a new context, the same union, its first commit.
    backends = [LibNftables(netns=node.path) for _ in range(3)]
    adopters = [TableWriter(b, "inet", TABLE) for b in backends]
    for adopter in adopters:
        adopter.contribute("policy", contribution)
    sampler = Sampler(node)
    try:
        during = sampler.during(lambda: [a.commit() for a in adopters])
        assert all(a.metrics.full_resyncs == 1 for a in adopters) and adopters[-1].verify() == 0
    finally:
        for b in backends:
            b.close()
    assert during >= 3 and sampler.misses == []


def test_the_sampler_sees_a_naive_rebuild_window(node: Netns) -> None:
    """Negative control: delete and rebuild in two transactions, and the sampler catches the gap."""
    contribution = _contribution(peers=5_000)
    with LibNftables(netns=node.path) as lib:
        w = TableWriter(lib, "inet", TABLE)
        w.contribute("policy", contribution)
        w.commit()

        def naive() -> None:
            lib.apply(Transaction("inet", TABLE).delete_table())
            TableWriter(lib, "inet", TABLE).contribute("policy", contribution)
            w.resync()
        sampler = Sampler(node)
        sampler.during(naive)
    assert sampler.misses


def test_rule_handles_read_over_netlink_are_the_listings(node: Netns) -> None:
    """The writer reads rule handles back with a netlink rule dump: the same handles, in the same
    order, as the listing shows; one chain alone too; nothing for a table that does not exist."""
    with LibNftables(netns=node.path) as lib:
        w = TableWriter(lib, "inet", TABLE)
        w.contribute("policy", _contribution())
        w.commit()
        state = lib.list_table("inet", TABLE, elements=False)
        assert state is not None
        listed = {name: state.handles(name) for name in state.chains if state.handles(name)}
        assert lib.rule_handles("inet", TABLE) == listed and len(listed) >= 2
        assert lib.rule_handles("inet", TABLE, ["isolate-a"]) == {"isolate-a": listed["isolate-a"]}
        assert w.verify() == 0
        assert lib.rule_handles("inet", "no-such-table") == {}
