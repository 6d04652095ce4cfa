"""The allocator on the in-memory store: round robin, skipped addresses, dual stack, requested IPs,
idempotent re-ADD, exhaustion, release, GC, CHECK and usage."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podnet.cni.attachments import ValidAttachments
from podnet.cni.errors import CNIError, InvalidNetworkConfig, UnknownContainer
from podnet.ipam.allocator import (
    AddressUnavailable,
    RangeExhausted,
    allocate,
    check,
    gc,
    release,
    round_robin,
    usage,
)
from podnet.ipam.config import parse_range_set
from podnet.ipam.fake_store import FakeStore, LockNotHeld
from podnet.ipam.ranges import RangeSet

ip = ipaddress.ip_address


def rs(*ranges: dict[str, Any]) -> RangeSet:
    return parse_range_set(list(ranges), "test")


def addrs(configs: list[Any]) -> list[str]:
    return [str(c.address) for c in configs]


V4 = rs({"subnet": "10.0.0.0/29"})  # .2 - .6 (gateway .1, broadcast .7)
V6 = rs({"subnet": "fd00::/125"})  # ::2 - ::7


def test_round_robin_skips_gateway_and_continues_after_last() -> None:
    store = FakeStore()
    got = [addrs(allocate(store, [V4], f"c{i}", "eth0"))[0] for i in range(3)]
    assert got == ["10.0.0.2/29", "10.0.0.3/29", "10.0.0.4/29"]
    release(store, "c0", "eth0")
    # The released .2 is not reused until the range wraps.
    assert addrs(allocate(store, [V4], "c3", "eth0")) == ["10.0.0.5/29"]
    assert addrs(allocate(store, [V4], "c4", "eth0")) == ["10.0.0.6/29"]
    assert addrs(allocate(store, [V4], "c5", "eth0")) == ["10.0.0.2/29"]


def test_result_carries_gateway_and_prefix() -> None:
    (cfg,) = allocate(FakeStore(), [rs({"subnet": "10.0.0.0/24", "gateway": "10.0.0.254"})], "c", "eth0")
    assert (str(cfg.address), str(cfg.gateway), cfg.interface) == ("10.0.0.1/24", "10.0.0.254", None)


def test_network_broadcast_and_gateway_never_handed_out() -> None:
    wide = rs({"subnet": "10.0.0.0/29", "rangeStart": "10.0.0.0", "rangeEnd": "10.0.0.7",
               "gateway": "10.0.0.3"})
    store = FakeStore()
    got = [addrs(allocate(store, [wide], f"c{i}", "eth0"))[0] for i in range(5)]
    assert got == ["10.0.0.1/29", "10.0.0.2/29", "10.0.0.4/29", "10.0.0.5/29", "10.0.0.6/29"]
    with pytest.raises(RangeExhausted):
        allocate(store, [wide], "c9", "eth0")


def test_round_robin_order_over_several_ranges() -> None:
    two = rs({"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.11"},
             {"subnet": "10.0.1.0/24", "rangeStart": "10.0.1.10", "rangeEnd": "10.0.1.11"})
    seq = [str(a) for a in round_robin(two, ip("10.0.0.11"))]
    assert seq == ["10.0.1.10", "10.0.1.11", "10.0.0.10", "10.0.0.11"]
    assert [str(a) for a in round_robin(two, ip("10.0.1.10"))] == ["10.0.1.11", "10.0.0.10", "10.0.0.11",
                                                                    "10.0.1.10"]
    assert next(round_robin(two, ip("192.168.0.1"))) == ip("10.0.0.10")
    assert next(round_robin(two, None)) == ip("10.0.0.10")


def test_dual_stack_one_address_per_range_set() -> None:
    store = FakeStore()
    assert addrs(allocate(store, [V4, V6], "c", "eth0")) == ["10.0.0.2/29", "fd00::2/125"]
    assert addrs(allocate(store, [V4, V6], "c", "eth1")) == ["10.0.0.3/29", "fd00::3/125"]
    assert store.lock_count == 2


def test_re_add_is_idempotent() -> None:
    store = FakeStore()
    first = addrs(allocate(store, [V4, V6], "c", "eth0"))
    allocate(store, [V4, V6], "other", "eth0")
    assert addrs(allocate(store, [V4, V6], "c", "eth0")) == first
    assert len(store.owners) == 4


def test_re_add_completes_a_half_done_allocation() -> None:
    store = FakeStore()
    allocate(store, [V4], "c", "eth0")  # as if a crash happened before the v6 set
    assert addrs(allocate(store, [V4, V6], "c", "eth0")) == ["10.0.0.2/29", "fd00::2/125"]


def test_requested_ips_are_honoured() -> None:
    store = FakeStore()
    got = allocate(store, [V4, V6], "c", "eth0", [ip("fd00::6"), ip("10.0.0.5")])
    assert addrs(got) == ["10.0.0.5/29", "fd00::6/125"]
    # Round robin goes on after the requested one.
    assert addrs(allocate(store, [V4], "d", "eth0")) == ["10.0.0.6/29"]


def test_requested_ip_taken_names_ip_and_owner_and_rolls_back() -> None:
    store = FakeStore()
    allocate(store, [V4, V6], "owner", "net1", [ip("fd00::4")])
    with pytest.raises(AddressUnavailable) as exc:
        allocate(store, [V4, V6], "c", "eth0", [ip("fd00::4")])
    assert exc.value.code == 999
    assert "requested IP fd00::4 is already reserved by container owner interface net1" in str(exc.value)
    assert {o for o, _ in store.owners.values()} == {"owner"}  # the v4 address of "c" was released


@pytest.mark.parametrize(("requested", "text"), [
    (["10.9.9.9"], "requested IP 10.9.9.9 is in none of the range sets"),
    (["10.0.0.1"], "requested IP 10.0.0.1 is a gateway"),
    (["10.0.0.7"], "10.0.0.7"),  # broadcast: outside the range's default end
    (["10.0.0.2", "10.0.0.3"], "requested IPs 10.0.0.2 and 10.0.0.3 are both in range set 0"),
])
def test_requested_ip_the_config_cannot_give(requested: list[str], text: str) -> None:
    store = FakeStore()
    with pytest.raises(InvalidNetworkConfig) as exc:
        allocate(store, [V4], "c", "eth0", [ip(r) for r in requested])
    assert exc.value.code == 7 and text in str(exc.value)
    assert store.owners == {}


def test_re_add_with_a_different_requested_ip() -> None:
    store = FakeStore()
    allocate(store, [V4], "c", "eth0")
    with pytest.raises(InvalidNetworkConfig) as exc:
        allocate(store, [V4], "c", "eth0", [ip("10.0.0.5")])
    assert "holds 10.0.0.2 in range set 0; it cannot also take requested IP 10.0.0.5" in str(exc.value)
    assert list(store.owners) == [ip("10.0.0.2")]  # the earlier reservation stays


def test_exhaustion_names_the_range_and_leaves_nothing() -> None:
    store = FakeStore()
    for i in range(5):
        allocate(store, [V6, V4], f"c{i}", "eth0")
    with pytest.raises(RangeExhausted) as exc:
        allocate(store, [V6, V4], "late", "eth0")
    assert exc.value.code == 999
    assert "no free IP address in range set 1 (10.0.0.1-10.0.0.6 in 10.0.0.0/29)" in str(exc.value)
    assert "all 5 addresses are reserved" in str(exc.value)
    assert all(owner != "late" for owner, _ in store.owners.values())  # its v6 address was released


def test_exhaustion_when_the_store_refuses_every_candidate() -> None:
    store = FakeStore()
    store.refuse = {ip(f"10.0.0.{i}") for i in range(2, 7)}
    with pytest.raises(RangeExhausted):
        allocate(store, [V4], "c", "eth0")


def test_failure_inside_the_store_rolls_back() -> None:
    class Broken(FakeStore):
        def reserve(self, container_id: str, ifname: str, ip: Any, range_id: int) -> bool:
            if range_id == 1:
                raise CNIError("disk on fire")
            return super().reserve(container_id, ifname, ip, range_id)

    store = Broken()
    with pytest.raises(CNIError, match="disk on fire"):
        allocate(store, [V4, V6], "c", "eth0")
    assert store.owners == {}


def test_release_is_by_container_and_ifname_and_idempotent() -> None:
    store = FakeStore()
    allocate(store, [V4, V6], "c", "eth0")
    allocate(store, [V4, V6], "c", "eth1")
    assert sorted(map(str, release(store, "c", "eth0"))) == ["10.0.0.2", "fd00::2"]
    assert release(store, "c", "eth0") == []
    assert {ifn for _, ifn in store.owners.values()} == {"eth1"}


def test_release_of_legacy_reservations() -> None:
    store = FakeStore()
    store.owners[ip("10.0.0.4")] = ("old", None)  # a pre-0.7 file: the container ID only
    assert release(store, "old", "eth0") == [ip("10.0.0.4")]


def test_gc_keeps_valid_and_releases_the_rest() -> None:
    store = FakeStore()
    for cid, ifn in (("keep", "eth0"), ("keep", "eth1"), ("gone", "eth0")):
        allocate(store, [V4], cid, ifn)
    store.owners[ip("10.0.0.6")] = ("legacy", None)
    store.owners[ip("10.0.0.5")] = ("", None)  # unreadable
    store.debris = 2
    released = gc(store, ValidAttachments.of([("keep", "eth0"), ("legacy", "eth9")]))
    assert sorted(map(str, released)) == ["10.0.0.3", "10.0.0.4", "10.0.0.5"]
    assert sorted(store.owners.values(), key=str) == [("keep", "eth0"), ("legacy", None)]
    assert store.debris == 0
    assert gc(store, ValidAttachments()) and store.owners == {}


def test_gc_entry_without_ifname_keeps_every_interface_of_its_container() -> None:
    # The same rule the veth plugins apply: otherwise the pod keeps its interface while its
    # address goes back to the pool and is handed to the next pod.
    store = FakeStore()
    for cid, ifn in (("pod", "eth0"), ("pod", "net1"), ("gone", "eth0")):
        allocate(store, [V4], cid, ifn)
    gc(store, ValidAttachments.of([("pod", "")]))
    assert sorted(store.owners.values(), key=str) == [("pod", "eth0"), ("pod", "net1")]


def test_check() -> None:
    store = FakeStore()
    allocate(store, [V4, V6], "c", "eth0")
    assert len(check(store, [V4, V6], "c", "eth0", [ip("10.0.0.2"), ip("192.168.1.1")])) == 2
    with pytest.raises(UnknownContainer, match=r"10\.0\.0\.3 of the previous result is not reserved"):
        check(store, [V4, V6], "c", "eth0", [ip("10.0.0.3")])
    with pytest.raises(UnknownContainer, match="container c interface eth1 in range set 0") as exc:
        check(store, [V4, V6], "c", "eth1")
    assert exc.value.code == 3


def test_usage() -> None:
    store = FakeStore()
    for i in range(5):
        allocate(store, [V4], f"c{i}", "eth0")
    assert usage(store, [V4, V6]) == [(5, 5), (0, 6)]


def test_fake_store_demands_the_lock() -> None:
    with pytest.raises(LockNotHeld):
        FakeStore().reservations()


def test_large_ipv6_range_allocates_without_walking_it() -> None:
    big = rs({"subnet": "fd00::/64"})
    store = FakeStore()
    assert big.capacity() == 2**64 - 2
    assert addrs(allocate(store, [big], "c", "eth0")) == ["fd00::2/64"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "del", "gc"]), st.integers(0, 7),
                          st.sampled_from(["eth0", "eth1"])), max_size=60))
def test_random_operations_never_double_allocate(ops: list[tuple[str, int, str]]) -> None:
    """Any sequence of ADD/DEL/GC on a small dual-stack network: at most one address per attachment
    and range set, no address held twice, and exactly the live attachments hold addresses."""
    store = FakeStore()
    live: dict[tuple[str, str], list[str]] = {}
    for op, n, ifname in ops:
        key = (f"c{n}", ifname)
        if op == "add":
            try:
                got = addrs(allocate(store, [V4, V6], *key))
            except RangeExhausted:
                assert len(live) >= 5 and key not in live
                continue
            assert live.get(key, got) == got
            live[key] = got
        elif op == "del":
            release(store, *key)
            live.pop(key, None)
        else:
            keep = [k for i, k in enumerate(sorted(live)) if i % 2 == 0]
            gc(store, ValidAttachments.of(keep))
            live = {k: live[k] for k in keep}
        held = sorted(f"{ip}" for ip in store.owners)
        assert len(held) == len(set(held)) == 2 * len(live)
        assert sorted(a.split("/")[0] for v in live.values() for a in v) == held
