"""Thousands of ranges in one range set: the overlap checks and the range look-ups scale with
n log n, not with every pair (4,000 ranges used to make config loading and ADD take minutes).

The assertions are on results; the pytest timeout only stops a regression from running for minutes,
and the measured times are printed (``-s``) for the record."""

from __future__ import annotations

import ipaddress
import random
import time
from pathlib import Path
from typing import Any

import pytest
from test_ipam_plugins import call, hl_conf, ip_files

from podnet.cni.errors import InvalidNetworkConfig
from podnet.ipam.config import load_host_local
from podnet.plugins import host_local

COUNT = 4000


def many_ranges(count: int = COUNT) -> list[dict[str, Any]]:
    """``count`` /24s of 10.0.0.0/8 in a shuffled (but fixed) order."""
    ranges = [{"subnet": f"10.{i // 256}.{i % 256}.0/24"} for i in range(count)]
    random.Random(7).shuffle(ranges)
    return ranges


@pytest.mark.timeout(60)
def test_4000_ranges_load_check_and_allocate(tmp_path: Path) -> None:
    ranges = many_ranges()
    conf = hl_conf(tmp_path, "1.1.0", {"ranges": [ranges, [{"subnet": "fd05::/64"}]]})
    started = time.perf_counter()
    loaded = load_host_local(conf, [], "1.1.0")
    loaded_in = time.perf_counter() - started
    rs = loaded.range_sets[0]
    assert [str(r.subnet) for r in rs.ranges] == [r["subnet"] for r in ranges]  # config order kept
    assert rs.capacity() == COUNT * 253  # minus network, broadcast and gateway of each /24
    first = ipaddress.ip_address(ranges[0]["subnet"].split("/")[0]) + 1
    assert rs.range_for(first + 1) is rs.ranges[0] and not rs.allocatable(first)

    started = time.perf_counter()
    rc, result = call(host_local.PLUGIN, "ADD", conf)
    added_in = time.perf_counter() - started
    assert rc == 0, result
    assert result["ips"][0]["address"] == f"{first + 1}/24"
    # A requested address in the last range of the set.
    last = ipaddress.ip_address(ranges[-1]["subnet"].split("/")[0]) + 9
    assert call(host_local.PLUGIN, "ADD", conf, cid="ctr2", cni_args=f"IP={last}")[0] == 0
    assert str(last) in ip_files(tmp_path)
    assert call(host_local.PLUGIN, "STATUS", conf) == (0, {})
    print(f"\n{COUNT} ranges: config loaded in {loaded_in:.3f} s, ADD (load included) in {added_in:.3f} s")


@pytest.mark.timeout(60)
def test_overlap_among_4000_ranges_is_found_and_named() -> None:
    ranges = many_ranges()
    ranges.insert(1234, {"subnet": "10.3.7.128/25"})  # inside 10.3.7.0/24, somewhere else in the list
    conf = hl_conf(Path("/unused"), "1.1.0", {"ranges": [ranges]})
    with pytest.raises(InvalidNetworkConfig) as exc:
        load_host_local(conf, [], "1.1.0")
    first, second = sorted([ranges.index({"subnet": "10.3.7.0/24"}), 1234])
    names = {1234: "10.3.7.129-10.3.7.254 in 10.3.7.128/25"}
    names.setdefault(first, "10.3.7.1-10.3.7.254 in 10.3.7.0/24")
    names.setdefault(second, "10.3.7.1-10.3.7.254 in 10.3.7.0/24")
    assert str(exc.value) == f"ipam.ranges[0]: ranges {names[first]} and {names[second]} overlap"


@pytest.mark.timeout(60)
def test_overlap_between_range_sets_of_4000_ranges_is_found_and_named() -> None:
    ranges = many_ranges()
    other = [{"subnet": f"10.{i // 256}.{i % 256}.0/24"} for i in range(COUNT, COUNT + 2000)]
    other.append({"subnet": "10.1.2.0/24"})
    conf = hl_conf(Path("/unused"), "1.1.0", {"ranges": [ranges, other]})
    with pytest.raises(InvalidNetworkConfig) as exc:
        load_host_local(conf, [], "1.1.0")
    assert str(exc.value) == ("range set 1 (ipam.ranges[1]: 10.1.2.1-10.1.2.254 in 10.1.2.0/24) overlaps "
                              "range set 0 (ipam.ranges[0]: 10.1.2.1-10.1.2.254 in 10.1.2.0/24)")


def test_messages_name_a_big_range_set_without_listing_every_range(tmp_path: Path) -> None:
    """Errors and STATUS name a range set by its ranges; thousands of them would make a message
    (and a metrics label) of hundreds of kilobytes."""
    ranges = many_ranges()
    rs = load_host_local(hl_conf(tmp_path, "1.1.0", {"ranges": [ranges]}), [], "1.1.0").range_sets[0]
    text = str(rs)
    assert text.startswith(f"{rs.ranges[0]}, {rs.ranges[1]}, {rs.ranges[2]} and {COUNT - 3} more ranges")
    assert len(text) < 300
    small = load_host_local(hl_conf(tmp_path, "1.1.0", {"ranges": [ranges[:2]]}), [], "1.1.0").range_sets[0]
    assert str(small) == ", ".join(f"{r.start}-{r.end} in {r.subnet}" for r in small.ranges)
