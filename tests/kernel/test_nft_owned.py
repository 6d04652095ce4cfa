"""The bridge plugin's owned-element tables on the real kernel: the structure is made once, even by
racing creators, and ADDs after that write only their own elements."""

from __future__ import annotations

import ipaddress
import re

import pytest

from nsutil import Netns
from podnet.dataplane.plugin_elements import MASQ_CHAIN, Masquerade
from podnet.kernel.nft import LibNftables, Nft

pytestmark = pytest.mark.root


class _Blind:
    """Sees no table, as every plugin racing on a fresh node does."""

    def __init__(self, nft: Nft) -> None:
        self.nft = nft

    def __getattr__(self, name: str) -> object:
        return getattr(self.nft, name)

    def has_table(self, family: str, table: str) -> bool:
        return False


def _rules(node: Netns) -> list[str]:
    out = node.run(["nft", "list", "chain", "inet", "podnet-bridge", MASQ_CHAIN]).stdout
    return re.findall(r"^\s+(ip6? .*)$", out, re.MULTILINE)


def test_structure_once_then_only_elements(node: Netns) -> None:
    with LibNftables(netns=node.path) as lib:
        Masquerade(lib, "podnet-bridge").add("n/a/eth0", [ipaddress.ip_interface("10.1.0.5/24")])
        handles = node.run(["nft", "-a", "list", "chain", "inet", "podnet-bridge", MASQ_CHAIN]).stdout
        # A racer that saw no table: its create fails with "exists", it falls back to elements only.
        Masquerade(_Blind(lib), "podnet-bridge").add(  # type: ignore[arg-type]
            "n/b/eth0", [ipaddress.ip_interface("10.1.0.6/24")])
        Masquerade(lib, "podnet-bridge").add("n/c/eth0", [ipaddress.ip_interface("fd00::7/64")])
        assert len(_rules(node)) == 6
        # The same rules, never re-added: their handles did not change.
        assert node.run(["nft", "-a", "list", "chain", "inet", "podnet-bridge", MASQ_CHAIN]).stdout == handles
        masq = Masquerade(lib, "podnet-bridge")
        assert sorted(e.comment or "" for _, e in masq.elements(lambda c: True)) == [
            "n/a/eth0", "n/a/eth0", "n/b/eth0", "n/b/eth0", "n/c/eth0", "n/c/eth0"]
        assert masq.remove("n/b/eth0".__eq__) == 2 and len(masq.elements(lambda c: True)) == 4
