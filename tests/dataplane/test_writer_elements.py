"""Element-only commits through libnftables go out as one nf_tables netlink batch (kernel/nft/
setelem): the kernel then holds exactly what the script would have made, for every key kind podnet
uses; interval sets and anything else take the script; a refused batch changes nothing and the next
commit is a full resync."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest

from nsutil import Netns
from podnet.dataplane.contribution import Chain, Contribution, Set
from podnet.dataplane.writer import TableWriter
from podnet.kernel.nft import LibNftables, NftNotFound, Transaction
from podnet.kernel.nft.setelem import SetType, encode_key

pytestmark = pytest.mark.root
TABLE = "podnet-elem"
SETS = (Set("v4", ("ipv4_addr",)), Set("v6", ("ipv6_addr",)),
        Set("named", ("ipv4_addr", "inet_proto", "inet_service")),
        Set("ports", ("inet_proto", "inet_service")),
        Set("nets", ("ipv4_addr",), flags=("interval",)),
        Set("verdicts", ("ipv4_addr",), value_type="verdict"),
        # A DNAT target per key (the service proxy's slot maps): a concatenated value.
        Set("targets", ("ipv4_addr", "inet_proto", "inet_service"), value_type="ipv4_addr . inet_service"),
        Set("targets6", ("inet_proto", "inet_service"), value_type="ipv6_addr . inet_service"))


class Counting:
    """LibNftables, counting which path each transaction took."""

    def __init__(self, lib: LibNftables) -> None:
        self.lib, self.batches, self.scripts = lib, 0, 0

    def apply(self, tx: Transaction) -> None:
        self.scripts += 1
        self.lib.apply(tx)

    def apply_elements(self, tx: Transaction, types: Mapping[str, SetType]) -> bool:
        sent = self.lib.apply_elements(tx, types)
        self.batches += int(sent)
        return sent

    def list_table(self, family: str, table: str, *, elements: bool = True) -> object:
        return self.lib.list_table(family, table, elements=elements)  # type: ignore[arg-type]

    def has_table(self, family: str, table: str) -> bool:
        return self.lib.has_table(family, table)  # type: ignore[arg-type]


@pytest.fixture
def lib(node: Netns) -> Iterator[Counting]:
    with LibNftables(netns=node.path) as real:
        yield Counting(real)


def part(elements: dict[str, dict[str, str | None]]) -> Contribution:
    chains = (Chain("a"), Chain("b"), Chain("base", type="filter", hook="forward", priority=0,
                                                rules=("ip saddr vmap @verdicts",)))
    return Contribution(chains, SETS, elements)


FIRST: dict[str, dict[str, str | None]] = {
    "v4": {"10.0.0.1": None}, "v6": {"fd00::1": None}, "named": {"10.0.0.1 . tcp . 8080": None},
    "ports": {"tcp . 80": None}, "nets": {"10.9.0.0/16": None}, "verdicts": {"10.0.0.1": "goto a"},
    "targets": {"10.96.0.1 . tcp . 80": "10.244.0.2 . 8080"}, "targets6": {"tcp . 30080": "fd00::2 . 8080"}}
SECOND: dict[str, dict[str, str | None]] = {
    "v4": {"10.0.0.2": None, "10.0.0.3": None}, "v6": {"fd00::2": None},
    "named": {"10.0.0.2 . udp . 53": None, "10.0.0.1 . sctp . 9": None},
    "ports": {"udp . 53": None, "6 . 22": None},
    "nets": {"10.9.0.0/16": None},
    "verdicts": {"10.0.0.1": "goto b", "10.0.0.2": "drop", "10.0.0.3": "accept"},
    "targets": {"10.96.0.1 . tcp . 80": "10.244.0.3 . 8080", "10.96.0.1 . udp . 53": "10.244.0.3 . 5353"},
    "targets6": {"udp . 30053": "fd00::3 . 53"}}


def test_element_changes_go_as_one_batch_and_land_as_the_script_would(lib: Counting) -> None:
    w = TableWriter(lib, "inet", TABLE)  # type: ignore[arg-type]
    w.contribute("o", part(FIRST))
    w.commit()
    w.contribute("o", part(SECOND))
    scripts = lib.scripts
    assert w.commit().changed
    # Two batches: the switch, then the data map element going away (targets6's tcp . 30080), which
    # a packet that read the old verdict may still look up while the first commits (dataplane/phases).
    assert (lib.batches, lib.scripts) == (2, scripts)
    assert w.verify() == 0  # the kernel's table reads back as the union, element for element
    state = lib.lib.list_table("inet", TABLE)
    assert state is not None
    assert {e.key for e in state.sets["named"].elements} == set(SECOND["named"])  # type: ignore[attr-defined]
    targets = {e.key: e.value for e in state.sets["targets"].elements}  # type: ignore[attr-defined]
    assert targets == SECOND["targets"]


def test_interval_sets_take_the_script(lib: Counting) -> None:
    w = TableWriter(lib, "inet", TABLE)  # type: ignore[arg-type]
    w.contribute("o", part(FIRST))
    w.commit()
    w.contribute("o", part({**FIRST, "nets": {"10.8.0.0/16": None}}))
    scripts = lib.scripts
    w.commit()
    assert (lib.batches, lib.scripts) == (0, scripts + 1) and w.verify() == 0


def test_a_refused_batch_changes_nothing_and_the_next_commit_resyncs(lib: Counting, node: Netns) -> None:
    w = TableWriter(lib, "inet", TABLE)  # type: ignore[arg-type]
    w.contribute("o", part(FIRST))
    w.commit()
    node.run(["nft", "delete", "element", "inet", TABLE, "v4", "{ 10.0.0.1 }"])  # drift: the delete will fail
    w.contribute("o", part({**FIRST, "v4": {"10.0.0.7": None}, "verdicts": {"10.0.0.7": "goto a"}}))
    with pytest.raises(NftNotFound):
        w.commit()
    listed = node.run(["nft", "list", "map", "inet", TABLE, "verdicts"]).stdout
    assert "10.0.0.1" in listed and "10.0.0.7" not in listed  # the batch did nothing
    assert w.commit().full and w.verify() == 0
    assert lib.lib.apply_elements(Transaction("inet", TABLE), {})  # nothing to send: done


def test_encoding_declines_what_it_does_not_know() -> None:
    assert encode_key(("ipv4_addr",), "10.0.0.0/8") is None
    assert encode_key(("inet_proto", "inet_service"), "tcp . 80-81") is None
    assert encode_key(("inet_proto", "inet_service"), "tcp . 80") == bytes([6, 0, 0, 0, 0, 80, 0, 0])
    assert encode_key(("ether_addr",), "00:11:22:33:44:55") is None
