"""The writer on the fake backend: each commit is one transaction holding only what changed, in an
order the kernel accepts; a failed commit makes the next one a full resync; verify repairs drift
from the union and counts it; concurrent contributors end in the union."""

from __future__ import annotations

import threading

import pytest
from writer_util import policy

from podnet.dataplane.contribution import Chain, Contribution, Set
from podnet.dataplane.writer import TableWriter
from podnet.kernel.nft import Element, FakeNft, NftError, TableState, Transaction


def _setup() -> tuple[TableWriter, FakeNft]:
    nft = FakeNft()
    w = TableWriter(nft, "inet", "podnet-policy")
    w.contribute("policy", policy(["10.0.0.1", "10.0.0.2"], ["10.1.0.0/24"]))
    assert w.commit().full
    return w, nft


def _kernel(nft: FakeNft) -> TableState:
    state = nft.list_table("inet", "podnet-policy")
    assert state is not None
    return state


def test_first_commit_adopts_the_table_in_one_transaction() -> None:
    nft = FakeNft()
    nft.apply(Transaction("inet", "podnet-policy").add_table().add_chain("left-over")
              .add_set("old", "ipv4_addr"))
    w = TableWriter(nft, "inet", "podnet-policy")
    w.contribute("policy", policy(["10.0.0.1"], []))
    result = w.commit()
    assert result.full and len(nft.applied) == 2
    assert nft.applied[1].startswith(
        "add table inet podnet-policy\ndelete table inet podnet-policy\nadd table")
    assert set(_kernel(nft).chains) == {"ingress", "isolate-a"} and "old" not in _kernel(nft).sets


def test_one_element_changes_one_line() -> None:
    w, nft = _setup()
    w.contribute("policy", policy(["10.0.0.1", "10.0.0.3"], ["10.1.0.0/24"]))
    result = w.commit()
    assert not result.full and result.ops == 2 and len(nft.applied) == 2
    assert nft.applied[-1].splitlines() == [
        "delete element inet podnet-policy pods-v4 { 10.0.0.2 }",
        "add element inet podnet-policy pods-v4 { 10.0.0.3 : goto isolate-a }"]
    assert not w.commit().changed and len(nft.applied) == 2  # nothing new: no transaction


def test_changed_map_value_is_deleted_then_added() -> None:
    w, nft = _setup()
    c = policy(["10.0.0.1", "10.0.0.2"], ["10.1.0.0/24"])
    extra = Contribution(chains=(Chain("isolate-b", rules=("drop",)),),
                         elements={"pods-v4": {"10.0.0.9": "goto isolate-b"}})
    w.contribute("b", extra)
    w.commit()
    w.contribute("b", Contribution(chains=extra.chains, elements={"pods-v4": {"10.0.0.9": "accept"}}))
    w.commit()
    assert nft.applied[-1].splitlines() == ["delete element inet podnet-policy pods-v4 { 10.0.0.9 }",
                                            "add element inet podnet-policy pods-v4 { 10.0.0.9 : accept }"]
    # The chain goes with b; the element pointing at it went first (the fake refuses otherwise).
    w.withdraw("b")
    w.commit()
    assert "isolate-b" not in _kernel(nft).chains and c.elements["pods-v4"].keys() == {
        e.key for e in _kernel(nft).elements("pods-v4")}


def test_a_changed_rule_list_rewrites_only_that_chain() -> None:
    w, nft = _setup()
    w.contribute("policy", policy(["10.0.0.1", "10.0.0.2"], ["10.1.0.0/24"],
                                  rules=("ip saddr @isolate-a-peers accept", "counter", "drop")))
    w.commit()
    assert nft.applied[-1].splitlines() == [
        "flush chain inet podnet-policy isolate-a",
        "add rule inet podnet-policy isolate-a ip saddr @isolate-a-peers accept",
        "add rule inet podnet-policy isolate-a counter",
        "add rule inet podnet-policy isolate-a drop"]
    assert _kernel(nft).chains["isolate-a"] == ["ip saddr @isolate-a-peers accept", "counter", "drop"]


def test_a_redeclared_set_comes_back_with_its_elements_and_its_readers() -> None:
    w, nft = _setup()
    c = policy(["10.0.0.1", "10.0.0.2"], ["10.1.0.0/24", "10.2.0.0/24"])
    sets = tuple(s if s.name != "isolate-a-peers" else Set(s.name, ("ipv4_addr",), flags=("interval",),
                                                            comment="now with a comment") for s in c.sets)
    w.contribute("policy", Contribution(c.chains, sets, c.elements))
    w.commit()
    lines = nft.applied[-1].splitlines()
    assert lines[0] == "flush chain inet podnet-policy isolate-a"
    assert lines[1] == "delete set inet podnet-policy isolate-a-peers"
    assert lines[2].startswith("add set inet podnet-policy isolate-a-peers") and "now with" in lines[2]
    assert lines[3] == "add element inet podnet-policy isolate-a-peers { 10.1.0.0/24, 10.2.0.0/24 }"
    assert [x.split()[-1] for x in lines[4:]] == ["accept", "drop"]
    assert "pods-v4" not in nft.applied[-1]  # untouched


def test_a_changed_chain_declaration_is_a_resync() -> None:
    w, _ = _setup()
    c = policy(["10.0.0.1"], [])
    base = Chain("ingress", type="filter", hook="forward", priority=5, policy="accept",
                 rules=c.chains[0].rules)
    w.contribute("policy", Contribution((base, *c.chains[1:]), c.sets, c.elements))
    assert w.commit().full and w.metrics.full_resyncs == 2


def test_a_failed_commit_makes_the_next_a_full_resync() -> None:
    w, nft = _setup()
    w.contribute("policy", policy(["10.0.0.1"], ["10.1.0.0/24"]))
    nft.fail_next = NftError("injected")
    with pytest.raises(NftError, match="injected"):
        w.commit()
    assert w.metrics.failed_commits == 1 and "injected" in w.metrics.last_error
    result = w.commit()
    assert result.full and w.metrics.full_resyncs == 2
    assert [e.key for e in _kernel(nft).elements("pods-v4")] == ["10.0.0.1"]


def test_a_kernel_refusal_keeps_the_previous_table() -> None:
    """A contribution whose rule looks up a set nobody declares: the commit fails as a whole."""
    w, nft = _setup()
    before = nft.list_table("inet", "podnet-policy")
    w.contribute("x", Contribution(chains=(Chain("broken", rules=("ip saddr @nowhere accept",)),)))
    with pytest.raises(NftError):
        w.commit()
    with pytest.raises(NftError):
        w.commit()  # the resync rebuilds from the same union
    assert nft.list_table("inet", "podnet-policy") == before
    w.withdraw("x")
    assert w.commit().full and _kernel(nft).chains.keys() == {"ingress", "isolate-a"}


def test_verify_repairs_drift_from_the_union() -> None:
    w, nft = _setup()
    assert w.verify() == 0
    nft.apply(Transaction("inet", "podnet-policy").delete_element("pods-v4", "10.0.0.2"))
    assert w.verify() == 1 and w.metrics.drift_repairs == 1
    assert sorted(e.key for e in _kernel(nft).elements("pods-v4")) == ["10.0.0.1", "10.0.0.2"]
    nft.apply(Transaction("inet", "podnet-policy").add_rule("isolate-a", "accept"))
    nft.apply(Transaction("inet", "podnet-policy").add_element("isolate-a-peers", "0.0.0.0/0"))
    assert w.verify() == 1 and w.metrics.drift_repairs == 2
    assert _kernel(nft).chains["isolate-a"] == ["ip saddr @isolate-a-peers accept", "drop"]
    # A rule replaced by an identical one is still someone else's edit: new handle.
    state = _kernel(nft)
    nft.apply(Transaction("inet", "podnet-policy").delete_rule("isolate-a", state.handles("isolate-a")[1])
              .add_rule("isolate-a", "drop"))
    assert w.verify() == 1 and w.verify() == 0
    nft.apply(Transaction("inet", "podnet-policy").delete_table())
    assert w.verify() == 1 and w.metrics.drift_repairs == 4


def test_maybe_verify_waits_for_its_period() -> None:
    nft = FakeNft()
    w = TableWriter(nft, "inet", "t", verify_period=60)
    w.contribute("a", policy(["10.0.0.1"], []))
    w.commit()
    assert w.maybe_verify(100.0) == 0 and w.metrics.verifies == 1
    nft.apply(Transaction("inet", "t").flush_set("pods-v4"))
    assert w.maybe_verify(130.0) == 0 and w.metrics.verifies == 1
    assert w.maybe_verify(160.0) == 1 and w.metrics.verifies == 2


def test_concurrent_contributors_end_in_the_union() -> None:
    nft = FakeNft()
    w = TableWriter(nft, "inet", "t")
    w.contribute("policy", policy([], []))

    def owner(n: int) -> None:
        for i in range(30):
            keys = {f"10.{n}.{i}.{j}": None for j in range(3)}
            w.contribute(f"o{n}", Contribution(elements={"isolate-a-peers": keys}))
            w.commit()
    threads = [threading.Thread(target=owner, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.commit()
    want = sorted(f"10.{n}.29.{j}" for n in range(4) for j in range(3))
    state = nft.list_table("inet", "t")
    assert state is not None and sorted(e.key for e in state.elements("isolate-a-peers")) == want
    assert w.verify() == 0 and w.metrics.failed_commits == 0


class _OddLister(FakeNft):
    """Lists one element in a form the comparison cannot match, as a kernel might."""

    def list_table(self, family: str, table: str, *, elements: bool = True) -> TableState | None:  # type: ignore[override]
        state = super().list_table(family, table, elements=elements)  # type: ignore[arg-type]
        if state is not None and "isolate-a-peers" in state.sets:
            found = state.sets["isolate-a-peers"]
            found.elements = [Element(f"{e.key} odd", e.comment, e.value) for e in found.elements]
        return state


def test_a_difference_a_rebuild_cannot_fix_is_reported_not_rebuilt_every_period() -> None:
    nft = _OddLister()
    w = TableWriter(nft, "inet", "t")
    w.contribute("policy", policy(["10.0.0.1"], ["10.1.0.0/24"]))
    w.commit()
    assert w.verify() == 1 and "right after a rebuild" in w.metrics.last_error
    assert w.verify() == 0 and w.verify() == 0 and w.metrics.full_resyncs == 2
    nft.apply(Transaction("inet", "t").delete_element("pods-v4", "10.0.0.1"))  # real drift still repaired
    assert w.verify() == 1 and w.metrics.drift_repairs == 2


def test_a_base_chain_policy_changed_by_hand_is_drift() -> None:
    w, nft = _setup()
    nft.tables[("inet", "podnet-policy")].chain_states["ingress"].spec["policy"] = "drop"
    assert w.verify() == 1 and _kernel(nft).chain_states["ingress"].spec["policy"] == "accept"


class _Overtaken(FakeNft):
    """A commit lands while verify lists the table (verify holds no lock meanwhile)."""

    writer: TableWriter | None = None

    def list_table(self, family: str, table: str, *, elements: bool = True) -> TableState | None:  # type: ignore[override]
        state = super().list_table(family, table, elements=elements)  # type: ignore[arg-type]
        if self.writer is not None and elements:
            writer, self.writer = self.writer, None
            writer.contribute("late", Contribution(elements={"pods-v4": {"10.0.0.7": "accept"}}))
            writer.commit()
        return state


def test_a_listing_overtaken_by_a_commit_is_not_taken_for_drift() -> None:
    nft = _Overtaken()
    w = TableWriter(nft, "inet", "t")
    w.contribute("policy", policy(["10.0.0.1"], []))
    w.commit()
    nft.writer = w
    assert w.verify() == 0 and w.metrics.full_resyncs == 1  # the stale listing lacks 10.0.0.7
    assert w.verify() == 0 and w.metrics.drift_repairs == 0
