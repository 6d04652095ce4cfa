"""Random sequences of contributions from several owners, on the fake backend (which refuses what the
kernel refuses: a set or chain still in use, a rule naming something missing): after every commit
the table equals a full rebuild from the union, whatever the incremental transactions were."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from podnet.dataplane.contribution import Chain, Contribution, ContributionConflict, Set
from podnet.dataplane.diff import rebuild
from podnet.dataplane.image import Image
from podnet.dataplane.writer import TableWriter
from podnet.kernel.nft import FakeNft, NftError, TableState

TARGETS = ("c1", "c2", "c3")
ADDRS = tuple(f"10.0.0.{i}" for i in range(1, 7))
SETS = {
    "plain": Set("s1", ("ipv4_addr",)),
    "interval": Set("s1", ("ipv4_addr",), flags=("interval",)),
}
MAP = Set("m1", ("ipv4_addr",), value_type="verdict")
RULES = (("drop",), ("ip saddr @s1 accept", "drop"), ("accept",), ())


@st.composite
def contributions(draw: st.DrawFn) -> Contribution:
    chains, sets, elements = [], [], {}
    if draw(st.booleans()):
        rules = ("ip daddr vmap @m1",) if draw(st.booleans()) else ("ip saddr @s1 accept",)
        chains.append(Chain("base", type="filter", hook="forward", priority=0, policy="accept",
                            rules=rules if draw(st.booleans()) else ()))
    targets = draw(st.lists(st.sampled_from(TARGETS), unique=True))
    chains.extend(Chain(t, rules=draw(st.sampled_from(RULES))) for t in targets)
    if draw(st.booleans()):
        sets.append(SETS[draw(st.sampled_from(sorted(SETS)))])
        elements["s1"] = dict.fromkeys(draw(st.lists(st.sampled_from(ADDRS), unique=True)))
    if draw(st.booleans()):
        sets.append(MAP)
        keys = draw(st.lists(st.sampled_from(ADDRS), unique=True))
        elements["m1"] = {k: draw(st.sampled_from(["accept", *(f"goto {t}" for t in targets)])) for k in keys}
    return Contribution(tuple(chains), tuple(sets), elements)


def _shape(state: TableState | None) -> object:
    if state is None:
        return None
    return ({n: r for n, r in state.chains.items()},
            {n: (s.type, s.flags, s.value_type, sorted((e.key, e.value) for e in s.elements))
             for n, s in state.sets.items()})


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("ABC"), st.none() | contributions()), min_size=1, max_size=12))
def test_incremental_commits_equal_a_rebuild(steps: list[tuple[str, Contribution | None]]) -> None:
    nft = FakeNft()
    w = TableWriter(nft, "inet", "t")
    for owner, contribution in steps:
        try:
            if contribution is None:
                w.withdraw(owner)
            else:
                w.contribute(owner, contribution)
        except ContributionConflict:
            continue
        before = _shape(nft.list_table("inet", "t"))
        try:
            w.commit()
        except NftError:
            # A union the kernel refuses (a rule naming a set nobody declares): the table stays as
            # it was, and the next commit is a resync.
            assert w.metrics.failed_commits and _shape(nft.list_table("inet", "t")) == before
            continue
        fresh = FakeNft()
        fresh.apply(rebuild("inet", "t", Image.of(w._union), None))
        assert _shape(nft.list_table("inet", "t")) == _shape(fresh.list_table("inet", "t"))
        assert w.verify() == 0
