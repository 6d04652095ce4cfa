"""Parsing ``nft -j list table`` without root: captured output, maps, rules and their handles, garbage."""

from __future__ import annotations

import json

import pytest

from podnet.kernel.nft import Element, NftError, parse_table_json

# Captured from `nft -j list table inet podnet-bridge` (nftables 1.0.6), trimmed.
CAPTURED = {"nftables": [
    {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
    {"table": {"family": "inet", "name": "podnet-bridge", "handle": 1}},
    {"set": {"family": "inet", "name": "masq-pods-v4", "table": "podnet-bridge", "type": "ipv4_addr",
             "handle": 1, "comment": "pods", "elem": [
                 {"elem": {"val": "10.1.0.5", "comment": "n1/c1/eth0"}}, "10.1.0.9"]}},
    {"set": {"family": "inet", "name": "masq-local-v4", "table": "podnet-bridge",
             "type": ["ipv4_addr", "ipv4_addr"], "handle": 2, "flags": ["interval"], "elem": [
                 {"elem": {"val": {"concat": ["10.1.0.5", {"prefix": {"addr": "10.1.0.0", "len": 24}}]},
                           "comment": "n1/c1/eth0"}}]}},
    {"set": {"family": "inet", "name": "ports", "table": "podnet-bridge", "type": "inet_service",
             "handle": 3, "flags": ["interval"], "elem": [{"range": [1000, 2000]}, 53]}},
    {"set": {"family": "inet", "name": "masq-pods-v6", "table": "podnet-bridge", "type": "ipv6_addr",
             "handle": 4}},
    {"chain": {"family": "inet", "table": "podnet-bridge", "name": "nat-postrouting", "handle": 5,
               "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}},
    {"rule": {"family": "inet", "table": "podnet-bridge", "chain": "nat-postrouting", "handle": 9,
              "expr": [{"masquerade": None}]}},
]}


def test_parse_captured_json() -> None:
    state = parse_table_json(json.dumps(CAPTURED), "inet", "podnet-bridge")
    assert state.elements("masq-pods-v4") == [Element("10.1.0.5", "n1/c1/eth0"), Element("10.1.0.9")]
    assert state.elements("masq-local-v4") == [Element("10.1.0.5 . 10.1.0.0/24", "n1/c1/eth0")]
    assert state.elements("ports") == [Element("1000-2000"), Element("53")]
    assert state.elements("masq-pods-v6") == [] and state.elements("missing") == []
    assert state.sets["masq-local-v4"].type == "ipv4_addr . ipv4_addr"
    assert state.sets["masq-local-v4"].flags == ("interval",)
    assert list(state.chains) == ["nat-postrouting"]


@pytest.mark.parametrize("text", ["", "[]", '{"nope": 1}', "garbage"])
def test_parse_garbage(text: str) -> None:
    with pytest.raises(NftError):
        parse_table_json(text, "inet", "t")


def test_parse_unknown_value_shape() -> None:
    doc = {"nftables": [{"set": {"name": "s", "type": "x", "elem": [{"elem": {"val": {"weird": 1}}}]}}]}
    with pytest.raises(NftError, match="unexpected element value"):
        parse_table_json(json.dumps(doc), "inet", "t")



# Captured from `nft -j list table inet podnet-policy` (nftables 1.0.6), trimmed: a verdict map, a
# data map with a comment, rules with handles.
MAPS_AND_RULES = {"nftables": [
    {"table": {"family": "inet", "name": "podnet-policy", "handle": 3}},
    {"map": {"family": "inet", "name": "pods-v4", "table": "podnet-policy", "type": "ipv4_addr",
             "handle": 1, "map": "verdict", "elem": [
                 ["10.0.0.1", {"goto": {"target": "isolate-a"}}], ["10.0.0.2", {"accept": None}]]}},
    {"map": {"family": "inet", "name": "nat", "table": "podnet-policy", "type": ["ipv4_addr", "inet_service"],
             "handle": 2, "map": "ipv4_addr", "elem": [
                 [{"elem": {"val": {"concat": ["10.0.0.1", 80]}, "comment": "svc"}}, "10.1.0.1"]]}},
    {"chain": {"family": "inet", "table": "podnet-policy", "name": "ingress", "handle": 4, "type": "filter",
               "hook": "forward", "prio": 0, "policy": "accept"}},
    {"chain": {"family": "inet", "table": "podnet-policy", "name": "isolate-a", "handle": 5}},
    {"rule": {"family": "inet", "table": "podnet-policy", "chain": "isolate-a", "handle": 9,
              "expr": [{"drop": None}]}},
    {"rule": {"family": "inet", "table": "podnet-policy", "chain": "isolate-a", "handle": 12,
              "expr": [{"accept": None}], "comment": "x"}},
]}


def test_parse_maps_and_rules() -> None:
    state = parse_table_json(json.dumps(MAPS_AND_RULES), "inet", "podnet-policy")
    assert state.elements("pods-v4") == [Element("10.0.0.1", None, "goto isolate-a"),
                                         Element("10.0.0.2", None, "accept")]
    assert state.sets["pods-v4"].value_type == "verdict"
    assert state.elements("nat") == [Element("10.0.0.1 . 80", "svc", "10.1.0.1")]
    assert state.handles("isolate-a") == [9, 12] and state.handles("ingress") == []
    assert len(state.chains["isolate-a"]) == 2 and state.chains["ingress"] == []
    assert state.chain_states["ingress"].spec == {"type": "filter", "hook": "forward", "priority": "0",
                                                  "policy": "accept"}
