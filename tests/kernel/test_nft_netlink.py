"""The netlink check for an nftables table, against the real kernel in a throw-away namespace."""

from __future__ import annotations

import pytest

from nsutil import Netns
from podnet.dataplane.plugin_elements import Masquerade
from podnet.kernel.nft import FakeNft, NftExec, Transaction, table_exists

pytestmark = pytest.mark.root


def test_table_exists_per_family(node: Netns) -> None:
    assert not table_exists("inet", "podnet-bridge", node.path)
    node.run(["nft", "add", "table", "inet", "podnet-bridge"])
    assert table_exists("inet", "podnet-bridge", node.path)
    assert not table_exists("ip", "podnet-bridge", node.path)  # same name, other family
    assert not table_exists("bridge", "podnet-bridge", node.path)
    assert NftExec(netns=node.path).has_table("inet", "podnet-bridge")


def test_owned_elements_skip_nft_when_there_is_no_table(node: Netns) -> None:
    nft = NftExec("/nonexistent/nft", netns=node.path)  # would fail with NftUnavailable if run
    masq = Masquerade(nft, "podnet-bridge")
    assert masq.elements(lambda c: True) == [] and masq.remove(lambda c: True) == 0
    fake = FakeNft()
    assert not fake.has_table("inet", "t")
    fake.apply(Transaction("inet", "t").add_table())
    assert fake.has_table("inet", "t")
