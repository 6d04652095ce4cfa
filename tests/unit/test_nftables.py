"""nftables layer without root: script rendering, validation, JSON parsing, error mapping, the fake
backend's semantics, the masquerade table on the fake, and NftExec against a stand-in binary."""

from __future__ import annotations

import ipaddress
import json
import os
import stat
from pathlib import Path

import pytest

from podnet.cni.errors import CNIError
from podnet.kernel.errors import InvalidArgument
from podnet.kernel.nftables import (
    MASQ_CHAIN,
    Element,
    FakeNft,
    Masquerade,
    NftError,
    NftExec,
    NftExists,
    NftNotFound,
    NftPermissionDenied,
    NftSyntaxError,
    NftUnavailable,
    SpoofCheck,
    Transaction,
    error_from_stderr,
    parse_table_json,
)


def test_render_transaction() -> None:
    tx = (Transaction("inet", "podnet-x").add_table("owned by podnet")
          .add_set("pods", "ipv4_addr", comment="pods")
          .add_set("local", ("ipv4_addr", "ipv4_addr"), flags=("interval",))
          .add_chain("nat-postrouting", type="nat", hook="postrouting", priority="srcnat", policy="accept")
          .add_chain("helper")
          .flush_chain("nat-postrouting")
          .add_rule("nat-postrouting", "ip saddr @pods masquerade", "why")
          .add_element("pods", "10.0.0.5", "net/c1/eth0")
          .delete_element("local", "10.0.0.5 . 10.0.0.0/24"))
    assert tx.render().splitlines() == [
        'add table inet podnet-x { comment "owned by podnet"; }',
        'add set inet podnet-x pods { type ipv4_addr; comment "pods"; }',
        "add set inet podnet-x local { type ipv4_addr . ipv4_addr; flags interval; }",
        "add chain inet podnet-x nat-postrouting"
        " { type nat hook postrouting priority srcnat; policy accept; }",
        "add chain inet podnet-x helper",
        "flush chain inet podnet-x nat-postrouting",
        'add rule inet podnet-x nat-postrouting ip saddr @pods masquerade comment "why"',
        'add element inet podnet-x pods { 10.0.0.5 comment "net/c1/eth0" }',
        "delete element inet podnet-x local { 10.0.0.5 . 10.0.0.0/24 }",
    ]


def test_set_and_remove_element_are_race_free_compositions() -> None:
    tx = Transaction("inet", "t").set_element("s", "1.2.3.4", "me").remove_element("s", "5.6.7.8")
    assert [op.verb for op in tx.ops] == ["add-element", "delete-element", "add-element",
                                          "add-element", "delete-element"]
    assert tx.ops[2].comment == "me" and tx.ops[0].comment is None
    assert not Transaction("inet", "t") and tx


@pytest.mark.parametrize("build", [
    lambda: Transaction("inet", "bad name"),
    lambda: Transaction("nope", "t"),  # type: ignore[arg-type]
    lambda: Transaction("inet", "t").add_table('say "hi"'),
    lambda: Transaction("inet", "t").add_rule("c", "x", "a\nb"),
    lambda: Transaction("inet", "t").add_element("s", "1.2.3.4", "x" * 128),
    lambda: Transaction("inet", "t").add_element("s", "1.2.3.4 } ; flush ruleset ; {"),
    lambda: Transaction("inet", "t").add_element("s", " "),
    lambda: Transaction("inet", "t").add_rule("c", "accept\ndrop"),
    lambda: Transaction("inet", "t").add_rule("c", "accept; flush ruleset"),
    lambda: Transaction("inet", "t").add_chain("c", type="nat"),  # half a base chain
    lambda: Transaction("inet", "t").add_set("s", "ipv4_addr; flush ruleset"),
])
def test_validation(build: object) -> None:
    with pytest.raises(InvalidArgument):
        build()  # type: ignore[operator]


def test_render_happens_after_validation() -> None:
    tx = Transaction("inet", "t").add_table()
    with pytest.raises(InvalidArgument):
        tx.add_element("s", "a{b")
    assert tx.render() == "add table inet t\n"


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


@pytest.mark.parametrize(("stderr", "klass"), [
    ("/dev/stdin:1:50-57: Error: Could not process rule: No such file or directory\n"
     "delete element inet t s { 10.9.0.7 }\n", NftNotFound),
    ("Error: Could not process rule: File exists", NftExists),
    ("Error: Could not process rule: Operation not permitted", NftPermissionDenied),
    ("/dev/stdin:1:1-3: Error: syntax error, unexpected string", NftSyntaxError),
    ("Error: something new", NftError),
])
def test_error_from_stderr(stderr: str, klass: type[NftError]) -> None:
    err = error_from_stderr("nft -f", stderr)
    assert type(err) is klass and err.stderr == stderr and isinstance(err, CNIError)
    assert "\n" not in err.details


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


def _fake_binary(tmp_path: Path, code: int, stdout: str = "", stderr: str = "") -> Path:
    """A stand-in for nft that records its argv and stdin and answers as told."""
    (tmp_path / "out").write_text(stdout)
    (tmp_path / "err").write_text(stderr)
    script = tmp_path / "nft"
    script.write_text(f"""#!/bin/sh
echo "$@" > {tmp_path}/argv
cat > {tmp_path}/stdin
cat {tmp_path}/out
cat {tmp_path}/err >&2
exit {code}
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_exec_apply_and_list(tmp_path: Path) -> None:
    nft = NftExec(str(_fake_binary(tmp_path, 0, stdout=json.dumps(CAPTURED))))
    tx = Transaction("inet", "podnet-bridge").add_table()
    nft.apply(tx)
    assert (tmp_path / "argv").read_text().split() == ["-f", "-"]
    assert (tmp_path / "stdin").read_text() == tx.render()
    state = nft.list_table("inet", "podnet-bridge")
    assert (tmp_path / "argv").read_text().split() == ["-j", "list", "table", "inet", "podnet-bridge"]
    assert state is not None and len(state.elements("masq-pods-v4")) == 2
    os.remove(tmp_path / "argv")
    nft.apply(Transaction("inet", "podnet-bridge"))  # empty: nft is not run at all
    assert not (tmp_path / "argv").exists()


def test_exec_errors(tmp_path: Path) -> None:
    missing = NftExec(str(_fake_binary(tmp_path, 1, stderr="Error: No such file or directory\n")))
    assert missing.list_table("inet", "nope") is None
    with pytest.raises(NftNotFound):
        missing.apply(Transaction("inet", "t").delete_table())
    with pytest.raises(NftUnavailable, match="not found"):
        NftExec(str(tmp_path / "no-such-nft")).apply(Transaction("inet", "t").add_table())


def test_spoof_check_on_fake_and_string_keys() -> None:
    nft = FakeNft()
    spoof = SpoofCheck(nft, "podnet-bridge")
    spoof.add("n/a/eth0", "pnabc", "02:00:00:00:00:0A")
    assert sorted(e.key for _, e in spoof.owned_by("n/a/eth0")) == ['"pnabc"', '"pnabc" . 02:00:00:00:00:0a']
    assert nft.list_table("bridge", "podnet-bridge") is not None
    assert nft.list_table("inet", "podnet-bridge") is None
    chain = "add chain bridge podnet-bridge spoofchk-prerouting { type filter hook prerouting priority dstnat"
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
