"""The bridge plugin's owned-element tables on the fake backend: structure only when missing, own
elements only, removal by owner."""

from __future__ import annotations

import ipaddress
import json

import pytest

from podnet.dataplane.plugin_elements import MASQ_CHAIN, Masquerade, SpoofCheck
from podnet.kernel.errors import InvalidArgument
from podnet.kernel.nft import Element, FakeNft, parse_table_json


def _addr(text: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    return ipaddress.ip_interface(text)


def test_masquerade_on_fake() -> None:
    nft = FakeNft()
    masq = Masquerade(nft, "podnet-bridge")
    assert masq.remove(lambda c: True) == 0 and nft.applied == []  # no table: nothing to do, no write
    masq.add("n/a/eth0", [_addr("10.1.0.5/24"), _addr("fd00::5/64")])
    masq.add("n/b/eth0", [_addr("10.1.0.6/24")])
    masq.add("n/b/eth0", [_addr("10.1.0.6/24")])  # repeated: same state
    state = nft.list_table("inet", "podnet-bridge")
    assert state is not None
    assert state.chains[MASQ_CHAIN] == [
        "ip daddr 224.0.0.0/4 return", "ip saddr . ip daddr @masq-local-v4 return",
        "ip saddr @masq-pods-v4 masquerade", "ip6 daddr ff00::/8 return",
        "ip6 saddr . ip6 daddr @masq-local-v6 return", "ip6 saddr @masq-pods-v6 masquerade"]
    assert state.elements("masq-local-v6") == [Element("fd00::5 . fd00::/64", "n/a/eth0")]
    assert sorted(e.key for _, e in masq.owned_by("n/b/eth0")) == ["10.1.0.6", "10.1.0.6 . 10.1.0.0/24"]
    # A stale element for an address is re-owned by the attachment that now holds the address.
    masq.add("n/c/eth0", [_addr("10.1.0.6/24")])
    assert masq.owned_by("n/b/eth0") == [] and len(masq.owned_by("n/c/eth0")) == 2
    assert masq.remove("n/a/eth0".__eq__) == 4 and masq.remove("n/a/eth0".__eq__) == 0
    assert masq.remove(lambda c: c.startswith("n/")) == 2
    assert masq.elements(lambda c: True) == []


def test_masquerade_keys() -> None:
    assert Masquerade.keys(_addr("10.1.0.5/24")) == (
        "masq-pods-v4", "10.1.0.5", "masq-local-v4", "10.1.0.5 . 10.1.0.0/24")
    assert Masquerade.keys(_addr("fd00::5/64"))[3] == "fd00::5 . fd00::/64"

def test_spoof_check_on_fake_and_string_keys() -> None:
    nft = FakeNft()
    spoof = SpoofCheck(nft, "podnet-bridge")
    spoof.add("n/a/eth0", "pnabc", "02:00:00:00:00:0A")
    assert sorted(e.key for _, e in spoof.owned_by("n/a/eth0")) == ['"pnabc"', '"pnabc" . 02:00:00:00:00:0a']
    assert nft.list_table("bridge", "podnet-bridge") is not None
    assert nft.list_table("inet", "podnet-bridge") is None
    chain = "create chain bridge podnet-bridge spoofchk-prerouting { type filter hook prerouting"
    assert chain in nft.applied[0]
    with pytest.raises(InvalidArgument):
        SpoofCheck.keys('bad"name', "02:00:00:00:00:01")
    assert spoof.remove(lambda c: True) == 2 and spoof.elements(lambda c: True) == []
    # nft -j writes ifname values without quotes: parsing puts them back, so keys compare equal.
    doc = {"nftables": [{"set": {"name": "spoofchk-allowed", "type": ["ifname", "ether_addr"], "elem": [
        {"elem": {"val": {"concat": ["pnabc", "02:00:00:00:00:0a"]}, "comment": "n/a/eth0"}}]}},
        {"set": {"name": "spoofchk-ports", "type": "ifname", "elem": ["pnabc"]}}]}
    state = parse_table_json(json.dumps(doc), "bridge", "podnet-bridge")
    assert state.elements("spoofchk-allowed") == [Element('"pnabc" . 02:00:00:00:00:0a', "n/a/eth0")]
    assert state.elements("spoofchk-ports") == [Element('"pnabc"')]


def test_add_never_flushes_or_recreates_structure() -> None:
    """Before the move every ADD re-declared the chain, flushed it and re-added its rules."""
    nft = FakeNft()
    masq = Masquerade(nft, "podnet-bridge")
    masq.add("n/a/eth0", [_addr("10.1.0.5/24")])
    masq.add("n/b/eth0", [_addr("10.1.0.6/24")])
    spoof = SpoofCheck(nft, "podnet-bridge")
    spoof.add("n/a/eth0", "pna", "02:00:00:00:00:0a")
    spoof.add("n/b/eth0", "pnb", "02:00:00:00:00:0b")
    assert "create chain" in nft.applied[0] and "create chain" in nft.applied[2]
    for script in (nft.applied[1], nft.applied[3]):
        assert "chain" not in script and "rule" not in script
        assert "delete element" in script  # set_element's take-over; only the owner's own keys
    state = nft.list_table("inet", "podnet-bridge")
    assert state is not None and len(state.chains[MASQ_CHAIN]) == 6


class _RacingFake(FakeNft):
    """Every caller saw no table: they all race to create the structure."""

    def has_table(self, family: str, table: str) -> bool:  # type: ignore[override]
        return False


def test_racing_creators_add_the_rules_once() -> None:
    nft = _RacingFake()
    Masquerade(nft, "podnet-bridge").add("n/a/eth0", [_addr("10.1.0.5/24")])
    Masquerade(nft, "podnet-bridge").add("n/b/eth0", [_addr("10.1.0.6/24")])
    state = FakeNft.list_table(nft, "inet", "podnet-bridge")
    assert state is not None and len(state.chains[MASQ_CHAIN]) == 6
    assert [e.comment for e in state.elements("masq-pods-v4")] == ["n/a/eth0", "n/b/eth0"]


def test_remove_is_by_owner_not_by_key() -> None:
    nft = FakeNft()
    masq = Masquerade(nft, "podnet-bridge")
    masq.add("n/a/eth0", [_addr("10.1.0.5/24")])
    masq.add("n/b/eth0", [_addr("10.1.0.6/24")])
    assert masq.remove("n/b/eth0".__eq__) == 2
    assert [e.key for _, e in masq.elements(lambda c: True)] == ["10.1.0.5", "10.1.0.5 . 10.1.0.0/24"]
    with pytest.raises(InvalidArgument):
        Masquerade(nft, "bad name")


def test_remove_on_a_node_without_nft() -> None:
    """DEL and GC of a network whose config does not ask for the feature: no nftables, nothing to
    remove; when the config asks for it, the missing nftables is an error."""
    from podnet.kernel.nft import NftUnavailable

    class NoNft(FakeNft):
        def has_table(self, family: str, table: str) -> bool:
            raise NftUnavailable("no nftables on this node", "")

    masq = Masquerade(NoNft(), "podnet-bridge")
    assert masq.remove(lambda _: True, missing_ok=True) == 0
    with pytest.raises(NftUnavailable):
        masq.remove(lambda _: True)
