"""nftables transactions without root: script rendering, validation, the race-free compositions."""

from __future__ import annotations

import pytest

from podnet.kernel.errors import InvalidArgument
from podnet.kernel.nft import Transaction


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


def test_render_writer_verbs() -> None:
    tx = (Transaction("inet", "t").add_map("m", "ipv4_addr", "verdict", comment="pods")
          .add_map("n", ("ipv4_addr", "inet_service"), "ipv4_addr", flags=("interval",))
          .create_chain("c", type="filter", hook="forward", priority=0)
          .add_element("m", "10.0.0.1", value="goto c").add_element("m", "10.0.0.2", value="accept")
          .delete_element("m", "10.0.0.3").delete_element("m", "10.0.0.4")
          .delete_rule("c", 7).flush_set("m").delete_set("n").delete_chain("c"))
    assert tx.render().splitlines() == [
        'add map inet t m { type ipv4_addr : verdict; comment "pods"; }',
        "add map inet t n { type ipv4_addr . inet_service : ipv4_addr; flags interval; }",
        "create chain inet t c { type filter hook forward priority 0; }",
        "add element inet t m { 10.0.0.1 : goto c, 10.0.0.2 : accept }",
        "delete element inet t m { 10.0.0.3, 10.0.0.4 }",
        "delete rule inet t c handle 7",
        "flush set inet t m",
        "delete set inet t n",
        "delete chain inet t c",
    ]


def test_element_runs_join_only_distinct_keys_of_one_set_and_verb() -> None:
    tx = (Transaction("inet", "t").add_element("s", "1.1.1.1", "a").add_element("s", "1.1.1.2")
          .add_element("s", "1.1.1.1").add_element("u", "1.1.1.1"))
    assert tx.render().splitlines() == [
        'add element inet t s { 1.1.1.1 comment "a", 1.1.1.2 }',
        "add element inet t s { 1.1.1.1 }",
        "add element inet t u { 1.1.1.1 }",
    ]


@pytest.mark.parametrize("build", [
    lambda: Transaction("inet", "t").delete_rule("c", 0),
    lambda: Transaction("inet", "t").delete_rule("c", True),
    lambda: Transaction("inet", "t").add_element("m", "1.1.1.1", value="goto c }"),
    lambda: Transaction("inet", "t").add_map("m", (), "verdict"),
    lambda: Transaction("inet", "t").extend(Transaction("ip", "t")),
])
def test_writer_verbs_validation(build: object) -> None:
    with pytest.raises(InvalidArgument):
        build()  # type: ignore[operator]


def test_add_elements_is_one_command_validated_at_once() -> None:
    tx = Transaction("inet", "t").add_elements("m", [("10.0.0.1", "accept"), ("10.0.0.2", "goto c")])
    tx.add_elements("s", [])  # nothing to add: no command
    assert tx.render() == "add element inet t m { 10.0.0.1 : accept, 10.0.0.2 : goto c }\n"
    for items in ([("10.0.0.1", None), ("1 } ; flush ruleset ; {", None)], [(" ", None)],
                  [("10.0.0.1", "accept; drop")], [("10.0.0.1", "")]):
        with pytest.raises(InvalidArgument):
            Transaction("inet", "t").add_elements("s", items)
