"""The union rules of a table's contributions (podnet.dataplane.contribution), on the fake backend:
what several owners may share, what is a conflict, and that a refused contribution changes nothing."""

from __future__ import annotations

import pytest
from writer_util import BASE, PODS, policy

from podnet.dataplane.contribution import Chain, Contribution, ContributionConflict, Set
from podnet.dataplane.writer import TableWriter
from podnet.kernel.nft import FakeNft, TableState


def _writer() -> tuple[TableWriter, FakeNft]:
    nft = FakeNft()
    return TableWriter(nft, "inet", "podnet-policy"), nft


def _kernel(nft: FakeNft) -> TableState:
    state = nft.list_table("inet", "podnet-policy")
    assert state is not None
    return state


def test_identical_declarations_are_shared_and_rules_have_one_owner() -> None:
    w, nft = _writer()
    w.contribute("policy", policy(["10.0.0.1"], ["10.1.0.0/24"]))
    # Another owner makes sure the base chain and the map exist, rule-less: no conflict.
    w.contribute("services", Contribution(chains=(Chain("ingress", type="filter", hook="forward",
                                                        priority=0, policy="accept"),), sets=(PODS,)))
    w.commit()
    assert _kernel(nft).chains["ingress"] == list(BASE.rules)
    # The rule owner leaves: the chain stays (declared by services), its rules go.
    w.withdraw("policy")
    w.commit()
    state = _kernel(nft)
    assert state.chains["ingress"] == [] and "isolate-a" not in state.chains and "pods-v4" in state.sets


@pytest.mark.parametrize(("other", "what"), [
    (Contribution(chains=(Chain("ingress", type="filter", hook="forward", priority=10),)), "chain ingress"),
    (Contribution(chains=(Chain("isolate-a", rules=("accept",)),)), "both give it rules"),
    (Contribution(sets=(Set("pods-v4", ("ipv4_addr",)),)), "set pods-v4"),
    (Contribution(elements={"pods-v4": {"10.0.0.1": "accept"}}), "values"),
])
def test_conflicts_are_refused_and_the_previous_contribution_stays(other: Contribution, what: str) -> None:
    w, nft = _writer()
    w.contribute("policy", policy(["10.0.0.1"], ["10.1.0.0/24"]))
    w.contribute("b", Contribution(elements={"isolate-a-peers": {"10.9.0.0/16": None}}))
    w.commit()
    before = nft.list_table("inet", "podnet-policy")
    with pytest.raises(ContributionConflict, match=what) as info:
        w.contribute("b", other)
    assert "'b'" in str(info.value) and "'policy'" in str(info.value)
    w.commit()
    assert nft.list_table("inet", "podnet-policy") == before  # b's previous element still there
    assert "10.9.0.0/16" in [e.key for e in _kernel(nft).elements("isolate-a-peers")]


def test_elements_are_a_union_and_map_keys_may_agree() -> None:
    w, nft = _writer()
    w.contribute("policy", policy(["10.0.0.1"], ["10.1.0.0/24"]))
    w.contribute("b", Contribution(elements={"isolate-a-peers": {"10.1.0.0/24": None, "10.2.0.0/24": None},
                                             "pods-v4": {"10.0.0.1": "goto isolate-a"}}))
    w.commit()
    w.withdraw("policy")
    w.contribute("policy", policy([], []))
    w.commit()
    state = _kernel(nft)
    # Both elements stay while b contributes them, though policy dropped its own.
    assert sorted(e.key for e in state.elements("isolate-a-peers")) == ["10.1.0.0/24", "10.2.0.0/24"]
    assert [(e.key, e.value) for e in state.elements("pods-v4")] == [("10.0.0.1", "goto isolate-a")]
    w.withdraw("b")
    w.commit()
    assert _kernel(nft).elements("isolate-a-peers") == [] and _kernel(nft).elements("pods-v4") == []


@pytest.mark.parametrize(("bad", "what"), [
    (Contribution(chains=(Chain("bad name"),)), "chain name"),
    (Contribution(chains=(Chain("c", rules=("accept; flush ruleset",)),)), "rule"),
    (Contribution(chains=(Chain("c", hook="input"),)), "base chain"),
    (Contribution(chains=(Chain("c"), Chain("c", rules=("accept",)))), "declared twice"),
    (Contribution(sets=(Set("m", ("ipv4_addr",), value_type="verdict"),), elements={"m": {"1.2.3.4": None}}),
     "map needs"),
    (Contribution(sets=(Set("s", ("ipv4_addr",)),), elements={"s": {"1.2.3.4": "accept"}}), "takes no"),
    (Contribution(elements={"s": {"1.2.3.4 } ; flush ruleset ; {": None}}), "element"),
])
def test_invalid_contributions_name_what_is_wrong(bad: Contribution, what: str) -> None:
    w, nft = _writer()
    with pytest.raises(ContributionConflict, match=what):
        w.contribute("x", bad)
    assert w.owners() == []
    w.commit()
    assert _kernel(nft).chains == {} and _kernel(nft).sets == {}


def test_a_changed_declaration_checks_all_its_elements() -> None:
    w, _ = _writer()
    m = Set("m", ("ipv4_addr",), value_type="verdict")
    w.contribute("a", Contribution(sets=(m,), elements={"m": {"10.0.0.1": "accept"}}))
    with pytest.raises(ContributionConflict, match="takes no value"):
        w.contribute("a", Contribution(sets=(Set("m", ("ipv4_addr",)),),
                                       elements={"m": {"10.0.0.1": "accept"}}))
    with pytest.raises(ContributionConflict, match="map needs"):  # only the new element is new here
        w.contribute("a", Contribution(sets=(m,), elements={"m": {"10.0.0.1": "accept", "10.0.0.2": None}}))
    assert w.desired().elements == {"m": {"10.0.0.1": "accept"}}
