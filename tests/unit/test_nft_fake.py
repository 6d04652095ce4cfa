"""The fake backend's kernel semantics: all-or-nothing batches, missing objects, objects in use,
rule handles, maps."""

from __future__ import annotations

import pytest

from podnet.kernel.nft import Element, FakeNft, NftError, NftExists, NftNotFound, Transaction


def test_fake_semantics() -> None:
    nft = FakeNft()
    with pytest.raises(NftNotFound):
        nft.apply(Transaction("inet", "t").add_set("s", "ipv4_addr"))  # no table yet
    base = Transaction("inet", "t").add_table().add_set("s", "ipv4_addr").add_chain("c")
    nft.apply(base.add_element("s", "1.1.1.1", "a").add_rule("c", "accept"))
    nft.apply(Transaction("inet", "t").add_element("s", "1.1.1.1", "b"))  # add keeps the old comment
    assert nft.list_table("inet", "t").elements("s") == [Element("1.1.1.1", "a")]  # type: ignore[union-attr]
    nft.apply(Transaction("inet", "t").set_element("s", "1.1.1.1", "b"))  # set re-owns
    assert nft.list_table("inet", "t").elements("s") == [Element("1.1.1.1", "b")]  # type: ignore[union-attr]
    # A failing transaction changes nothing, even its earlier commands.
    with pytest.raises(NftNotFound):
        nft.apply(Transaction("inet", "t").add_element("s", "2.2.2.2").delete_element("s", "3.3.3.3"))
    assert [e.key for e in nft.list_table("inet", "t").elements("s")] == ["1.1.1.1"]  # type: ignore[union-attr]
    nft.apply(Transaction("inet", "t").remove_element("s", "9.9.9.9").remove_element("s", "1.1.1.1"))
    assert nft.list_table("inet", "t").elements("s") == []  # type: ignore[union-attr]
    nft.apply(Transaction("inet", "t").flush_chain("c"))
    assert nft.list_table("inet", "t").chains["c"] == []  # type: ignore[union-attr]
    nft.fail_next = NftError("injected")
    with pytest.raises(NftError, match="injected"):
        nft.apply(Transaction("inet", "t").add_table())
    nft.apply(Transaction("inet", "t").delete_table())
    assert nft.list_table("inet", "t") is None




def test_fake_refuses_what_the_kernel_refuses() -> None:
    nft = FakeNft()
    nft.apply(Transaction("inet", "t").add_table().add_set("s", "ipv4_addr")
              .add_map("m", "ipv4_addr", "verdict").add_chain("c").add_chain("d")
              .add_rule("c", "ip saddr @s jump d")
              .add_element("m", "10.0.0.1", value="goto d"))
    for tx in (Transaction("inet", "t").delete_set("s"),  # a rule looks it up
               Transaction("inet", "t").delete_chain("c"),  # not empty
               Transaction("inet", "t").flush_chain("c").delete_chain("d"),  # the map element goes there
               Transaction("inet", "t").add_rule("c", "ip saddr @nope accept"),
               Transaction("inet", "t").add_rule("c", "goto nowhere"),
               Transaction("inet", "t").add_element("m", "10.0.0.1", value="accept"),  # clash
               Transaction("inet", "t").add_element("m", "10.0.0.9"),  # a map element needs a value
               Transaction("inet", "t").delete_rule("c", 999)):
        with pytest.raises(NftError):
            nft.apply(tx)
    with pytest.raises(NftExists):
        nft.apply(Transaction("inet", "t").create_chain("c"))
    nft.apply(Transaction("inet", "t").flush_chain("c").delete_element("m", "10.0.0.1").delete_chain("d")
              .delete_set("s"))
    state = nft.list_table("inet", "t")
    assert state is not None and set(state.chains) == {"c"} and set(state.sets) == {"m"}


def test_fake_rules_get_fresh_handles() -> None:
    nft = FakeNft()
    nft.apply(Transaction("inet", "t").add_table().add_chain("c").add_rule("c", "accept")
              .add_rule("c", "drop"))
    first = nft.list_table("inet", "t").handles("c")  # type: ignore[union-attr]
    nft.apply(Transaction("inet", "t").delete_rule("c", first[1]).add_rule("c", "drop"))
    again = nft.list_table("inet", "t").handles("c")  # type: ignore[union-attr]
    assert first[0] == again[0] and again[1] not in first
    assert nft.list_table("inet", "t", elements=False) is not None
