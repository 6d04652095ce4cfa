"""The fake backend's kernel semantics: all-or-nothing batches, missing objects, objects in use,
rule handles, maps."""

from __future__ import annotations

import pytest

from podnet.kernel.nft import Element, FakeNft, NftError, NftNotFound, Transaction


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


