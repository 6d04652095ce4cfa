"""A full rebuild keeps what the packet path put into dynamic sets (ClientIP session affinity), with
the time each element had left: on ``resync()``, on a restarting agent's first commit, on a drift
repair. A set declared otherwise now, or no longer declared, starts empty; an expired element is not
carried. The kernel tests fill the sets with ``nft``, standing in for packets; the fake tests cover
what the kernel cannot show (less than a second left, a failed read, a rebuild refused with them)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from nsutil import Netns
from podnet.dataplane.contribution import Chain, Contribution, Set
from podnet.dataplane.writer import TableWriter
from podnet.kernel.nft import (
    Element,
    FakeNft,
    Family,
    LibNftables,
    NftError,
    TableState,
    Transaction,
    parse_table_json,
)

TABLE = "podnet-services"
AFF = "ep-1a2b-aff"
HOURS_3 = 10_800
AFFINITY = Set(AFF, ("ipv4_addr",), flags=("dynamic", "timeout"))
root = pytest.mark.root


def _services(aff: Set | None = AFFINITY, *, update: str = "ip saddr timeout 10800s",
              ready: tuple[str, ...] = ("10.9.0.1",)) -> Contribution:
    """A ClientIP endpoint chain refreshing its affinity set, and a plain set the writer owns."""
    rules = (f"update @{AFF} {{ {update} }}", "accept") if aff is not None else ("accept",)
    return Contribution(chains=(Chain("ep-1a2b", rules=rules),),
                        sets=(*(() if aff is None else (aff,)), Set("ready", ("ipv4_addr",))),
                        elements={"ready": dict.fromkeys(ready)})


@pytest.fixture
def lib(node: Netns) -> Iterator[LibNftables]:
    with LibNftables(netns=node.path) as backend:
        yield backend


def _fill(node: Netns, *elements: str, set_name: str = AFF) -> None:
    """What the packet path does, by hand."""
    node.run(["nft", "add", "element", "inet", TABLE, set_name, "{ " + ", ".join(elements) + " }"])


def _left(node: Netns, set_name: str = AFF) -> dict[str, tuple[int, int]]:
    """Key -> (timeout, expires) in seconds, as the kernel lists them."""
    out = json.loads(node.run(["nft", "-j", "list", "set", "inet", TABLE, set_name]).stdout)
    found = next(item["set"] for item in out["nftables"] if "set" in item)
    return {e["elem"]["val"]: (e["elem"]["timeout"], e["elem"]["expires"]) for e in found.get("elem", [])}


def _writer(lib: LibNftables, c: Contribution | None = None) -> TableWriter:
    w = TableWriter(lib, "inet", TABLE)
    w.contribute("services", c or _services())
    assert w.commit().full
    return w


def _assert_kept(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> None:
    assert after.keys() == before.keys()
    for key, (timeout, expires) in before.items():
        assert after[key][0] == timeout, key  # the element's own timeout, not the rule's
        assert expires - 2 <= after[key][1] <= expires, key  # the time it had left: not reset, not extended


def _drift(node: Netns, w: TableWriter) -> None:
    node.run(["nft", "add", "element", "inet", TABLE, "ready", "{ 10.9.9.9 }"])
    assert w.verify() == 1 and w.metrics.drift_repairs == 1


@root
@pytest.mark.parametrize("how", ["resync", "adopt", "drift-repair"])
def test_a_rebuild_keeps_affinity_with_the_time_left(lib: LibNftables, node: Netns, how: str) -> None:
    w = _writer(lib)
    _fill(node, "10.0.0.5 timeout 10800s expires 5s", "10.0.0.6 timeout 10800s", "10.0.0.7 timeout 60s")
    before = _left(node)
    assert before["10.0.0.5"][1] <= 5 and before["10.0.0.6"][1] > HOURS_3 - 5
    if how == "resync":
        assert w.resync().full
    elif how == "adopt":  # the agent restarted: a new writer's first commit rebuilds the table
        w = _writer(lib)
    else:
        _drift(node, w)
    after = _left(node)
    _assert_kept(before, after)
    assert after["10.0.0.5"][1] <= 5  # 5 s left stays 5 s, it does not come back with 3 h
    assert w.metrics.carried_elements == 3 and w.metrics.carry_failures == 0
    assert "10.9.0.1" in node.run(["nft", "list", "set", "inet", TABLE, "ready"]).stdout
    assert w.verify() == 0  # the carried elements are not drift


@root
def test_the_packet_path_still_refreshes_a_carried_set(lib: LibNftables, node: Netns) -> None:
    w = _writer(lib)
    _fill(node, "10.0.0.5 timeout 10800s expires 5s")
    w.resync()
    # The rebuilt rule updates the rebuilt set: an element added like a packet would works, and
    # the carried one is still there beside it.
    _fill(node, "10.0.0.8 timeout 10800s")
    assert set(_left(node)) == {"10.0.0.5", "10.0.0.8"}


@root
@pytest.mark.parametrize("change", ["type", "flags", "gone"])
@pytest.mark.parametrize("how", ["resync", "adopt"])
def test_a_set_declared_otherwise_or_gone_starts_empty(lib: LibNftables, node: Netns, change: str,
                                                       how: str) -> None:
    w = _writer(lib)
    _fill(node, "10.0.0.5 timeout 10800s", "10.0.0.6 timeout 10800s expires 9s")
    new = {"type": _services(Set(AFF, ("ipv6_addr",), flags=("dynamic", "timeout")),
                             update="ip6 saddr timeout 10800s"),
           "flags": _services(Set(AFF, ("ipv4_addr",), flags=("dynamic",)), update="ip saddr"),
           "gone": _services(None)}[change]
    if how == "resync":
        w.contribute("services", new)
        w.resync()
    else:
        w = _writer(lib, new)
    if change == "gone":
        assert "ep-1a2b-aff" not in node.run(["nft", "list", "table", "inet", TABLE]).stdout
    else:
        assert _left(node) == {}
    # Not carried, rather than carried and refused (the rebuild then retries without them).
    assert w.metrics.carried_elements == 0 and w.metrics.carry_failures == 0
    assert w.metrics.failed_commits == 0


@root
def test_an_expired_element_is_not_carried(lib: LibNftables, node: Netns) -> None:
    w = _writer(lib)
    _fill(node, "10.0.0.5 timeout 10800s expires 300ms", "10.0.0.6 timeout 10800s")
    before = _left(node)
    assert "10.0.0.5" in before
    # Its time runs out before the rebuild.
    node.run(["sleep", "0.4"])
    w.resync()
    _assert_kept({"10.0.0.6": before["10.0.0.6"]}, _left(node))


@root
def test_a_kernel_listing_parses_timeout_and_time_left(lib: LibNftables, node: Netns) -> None:
    _writer(lib)
    _fill(node, "10.0.0.5 timeout 10800s expires 5s", "10.0.0.6")
    state = parse_table_json(node.run(["nft", "-j", "list", "table", "inet", TABLE]).stdout, "inet", TABLE)
    by_key = {e.key: e for e in state.elements(AFF)}
    assert by_key["10.0.0.5"].timeout_ms == HOURS_3 * 1000
    assert by_key["10.0.0.5"].expires_ms is not None and 3000 <= by_key["10.0.0.5"].expires_ms <= 5000
    assert (by_key["10.0.0.6"].timeout_ms, by_key["10.0.0.6"].expires_ms) == (None, None)


# ---- the fake backend: no packet path, so elements are planted in its table ----


def _fake() -> tuple[TableWriter, FakeNft]:
    nft = FakeNft()
    w = TableWriter(nft, "inet", TABLE)
    w.contribute("services", _services())
    assert w.commit().full
    return w, nft


def _plant(nft: FakeNft, *elements: Element) -> None:
    nft.tables[("inet", TABLE)].sets[AFF].elements = list(elements)


def test_the_fake_carries_nothing_it_cannot_time() -> None:
    w, nft = _fake()
    _plant(nft, Element("10.0.0.5"))  # what the fake lists: no timeout, no time left
    assert w.resync().full
    assert nft.tables[("inet", TABLE)].elements(AFF) == []
    assert w.metrics.carried_elements == 0 and w.metrics.carry_failures == 0


def test_elements_with_no_time_left_or_contributed_are_not_carried() -> None:
    w, nft = _fake()
    w.contribute("services", Contribution(_services().chains, _services().sets,
                                          {AFF: {"10.0.0.9": None}, "ready": {"10.9.0.1": None}}))
    _plant(nft, Element("10.0.0.5", timeout_ms=HOURS_3 * 1000, expires_ms=5000),
           Element("10.0.0.6", timeout_ms=HOURS_3 * 1000, expires_ms=0),
           Element("10.0.0.9", timeout_ms=HOURS_3 * 1000, expires_ms=7000))
    w.resync()
    keys = [e.key for e in nft.tables[("inet", TABLE)].elements(AFF)]
    assert keys[0] == "10.0.0.9" and len(keys) == 2  # the contributed one once, from the union
    key, timeout, ms, expires, left = keys[1].split()
    assert (key, timeout, ms, expires) == ("10.0.0.5", "timeout", f"{HOURS_3 * 1000}ms", "expires")
    assert 4000 <= int(left.removesuffix("ms")) < 5000  # the listing's time taken off, never added


class _Unreadable(FakeNft):
    def list_table(self, family: Family, table: str, *, elements: bool = True) -> TableState | None:
        if self.tables and elements:
            raise NftError("nft -j list table: interrupted")
        return super().list_table(family, table, elements=elements)


def test_a_failed_read_does_not_stop_the_rebuild() -> None:
    nft = _Unreadable()
    w = TableWriter(nft, "inet", TABLE)
    w.contribute("services", _services())
    w.commit()
    _plant(nft, Element("10.0.0.5", timeout_ms=HOURS_3 * 1000, expires_ms=5000))
    w.contribute("services", _services(ready=("10.9.0.2",)))
    assert w.resync().full
    assert [e.key for e in nft.tables[("inet", TABLE)].elements("ready")] == ["10.9.0.2"]
    assert w.metrics.carry_failures == 1 and "not carried" in w.metrics.last_error


class _RefusesTimes(FakeNft):
    """A kernel that refuses the carried elements (as it would a key it reads back differently)."""

    def apply(self, tx: Transaction) -> None:
        if "expires" in tx.render():
            raise NftError("nft: add element: invalid argument")
        super().apply(tx)


def test_a_rebuild_refused_with_the_carried_elements_goes_through_without_them() -> None:
    nft = _RefusesTimes()
    w = TableWriter(nft, "inet", TABLE)
    w.contribute("services", _services())
    w.commit()
    _plant(nft, Element("10.0.0.5", timeout_ms=HOURS_3 * 1000, expires_ms=5000))
    assert w.resync().full
    assert nft.tables[("inet", TABLE)].elements(AFF) == [] and w.metrics.carry_failures == 1
    assert w.commit().changed is False  # no resync pending: the table was rebuilt
