"""IPAM configuration: host-local and static keys, defaults, and the validation table (code + message)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from podnet.cni.errors import InvalidNetworkConfig
from podnet.ipam.config import DEFAULT_DATA_DIR, load_host_local, load_static, store_location
from podnet.ipam.dns import parse_resolv_conf

ip = ipaddress.ip_address


def net(ipam: dict[str, Any], **top: Any) -> dict[str, Any]:
    """A network config; ``args_`` stands for the top-level ``args`` key."""
    extra = {("args" if k == "args_" else k): v for k, v in top.items()}
    return {"cniVersion": "1.0.0", "name": "n", "type": "bridge", "ipam": ipam, **extra}


def hl(ipam: dict[str, Any], args: list[tuple[str, str]] | None = None, version: str = "1.0.0",
       **top: Any) -> Any:
    return load_host_local(net({"type": "podnet-host-local", **ipam}, **top), args or [], version)


# ---- host-local: what parses ----------------------------------------------------------------


def test_defaults_of_a_range() -> None:
    conf = hl({"ranges": [[{"subnet": "10.1.2.0/24"}]]})
    (r,) = conf.range_sets[0].ranges
    assert (str(r.start), str(r.end), str(r.gateway)) == ("10.1.2.1", "10.1.2.254", "10.1.2.1")
    assert conf.data_dir == DEFAULT_DATA_DIR and conf.routes == [] and conf.requested == []
    assert conf.range_sets[0].capacity() == 253  # .2 - .254


def test_ipv6_range_defaults_include_the_last_address() -> None:
    (r,) = hl({"ranges": [[{"subnet": "fd00::/120"}]]}).range_sets[0].ranges
    assert (str(r.start), str(r.end), str(r.gateway)) == ("fd00::1", "fd00::ff", "fd00::1")


def test_host_bits_of_a_subnet_are_dropped() -> None:
    (r,) = hl({"ranges": [[{"subnet": "10.1.2.77/24"}]]}).range_sets[0].ranges
    assert str(r.subnet) == "10.1.2.0/24"


def test_legacy_single_range_comes_first_and_runtime_ranges_before_it() -> None:
    conf = hl({"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10", "gateway": "10.1.0.254",
               "ranges": [[{"subnet": "fd00::/64"}]]},
              runtimeConfig={"ipRanges": [[{"subnet": "10.9.0.0/24"}]]})
    assert [str(rs.ranges[0].subnet) for rs in conf.range_sets] == ["10.9.0.0/24", "10.1.0.0/24", "fd00::/64"]
    legacy = conf.range_sets[1].ranges[0]
    assert (str(legacy.start), str(legacy.gateway)) == ("10.1.0.10", "10.1.0.254")


def test_routes_data_dir_resolv_conf_and_requested_ips() -> None:
    conf = hl({"ranges": [[{"subnet": "10.1.0.0/16"}], [{"subnet": "fd00::/64"}]],
               "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.2.0.0/16", "gw": "10.1.0.1"}],
               "dataDir": "/tmp/x", "resolvConf": "/etc/resolv.conf"},
              args=[("IgnoreUnknown", "1"), ("IP", "10.1.0.5, fd00::5/64"), ("K8S_POD_NAME", "p")],
              args_={"cni": {"ips": ["10.1.0.6"]}}, runtimeConfig={"ips": ["10.1.0.7/16", "10.1.0.5"]})
    assert conf.data_dir == "/tmp/x" and conf.resolv_conf == "/etc/resolv.conf"
    assert [str(r.dst) for r in conf.routes] == ["0.0.0.0/0", "10.2.0.0/16"]
    assert conf.requested == [ip("10.1.0.5"), ip("fd00::5"), ip("10.1.0.6"), ip("10.1.0.7")]


def test_args_cni_ips_are_read() -> None:
    conf = load_host_local({"name": "n", "ipam": {"ranges": [[{"subnet": "10.1.0.0/16"}]]},
                            "args": {"cni": {"ips": ["10.1.0.6"]}}}, [], "1.0.0")
    assert conf.requested == [ip("10.1.0.6")]


def test_store_location_needs_no_ranges() -> None:
    assert store_location({"name": "n", "ipam": {"type": "x"}}) == (DEFAULT_DATA_DIR, "n")
    assert store_location({"name": "n", "ipam": {"dataDir": "/d", "ranges": "junk"}}) == ("/d", "n")


# ---- host-local: the validation table --------------------------------------------------------

BAD_HOST_LOCAL: list[tuple[str, dict[str, Any], dict[str, Any], list[tuple[str, str]], str]] = [
    # (id, ipam, top-level extras, CNI_ARGS, text the message must contain)
    ("no-ranges", {}, {}, [], "no IP ranges specified"),
    ("subnet-garbage", {"ranges": [[{"subnet": "banana"}]]}, {}, [], "'banana'"),
    ("subnet-prefix-too-long", {"ranges": [[{"subnet": "10.0.0.0/33"}]]}, {}, [], "'10.0.0.0/33'"),
    ("subnet-netmask-form", {"ranges": [[{"subnet": "10.0.0.0/255.0.0.0"}]]}, {}, [], "10.0.0.0/255.0.0.0"),
    ("subnet-too-small", {"ranges": [[{"subnet": "10.0.0.0/31"}]]}, {}, [], "10.0.0.0/31 is too small"),
    ("subnet-missing", {"ranges": [[{"rangeStart": "10.0.0.2"}]]}, {}, [], "has no 'subnet'"),
    ("start-outside", {"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.5"}]]}, {}, [],
     "rangeStart 10.0.1.5 is outside subnet 10.0.0.0/24"),
    ("end-outside", {"ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": "10.0.1.5"}]]}, {}, [],
     "rangeEnd 10.0.1.5 is outside subnet 10.0.0.0/24"),
    ("end-other-family", {"ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": "fd00::1"}]]}, {}, [],
     "rangeEnd fd00::1 is outside"),
    ("start-after-end", {"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.50",
                                      "rangeEnd": "10.0.0.40"}]]}, {}, [],
     "rangeStart 10.0.0.50 is after rangeEnd 10.0.0.40"),
    ("gateway-outside", {"ranges": [[{"subnet": "10.0.0.0/24", "gateway": "10.0.9.1"}]]}, {}, [],
     "gateway 10.0.9.1 is outside subnet 10.0.0.0/24"),
    ("gateway-garbage", {"ranges": [[{"subnet": "10.0.0.0/24", "gateway": "10.0.0"}]]}, {}, [], "'10.0.0'"),
    ("overlapping-sets", {"ranges": [[{"subnet": "10.0.0.0/16"}], [{"subnet": "10.0.5.0/24"}]]}, {}, [],
     "range set 1 (ipam.ranges[1]: 10.0.5.1-10.0.5.254 in 10.0.5.0/24) overlaps range set 0"),
    ("legacy-overlaps-ranges", {"subnet": "10.0.0.0/24", "ranges": [[{"subnet": "10.0.0.0/24"}]]}, {}, [],
     "overlaps range set 0 (ipam"),
    ("overlap-inside-set", {"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.0.0/25"}]]}, {}, [],
     "overlap"),
    ("mixed-families-in-set", {"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]}, {}, [],
     "mixes address families"),
    ("empty-set", {"ranges": [[]]}, {}, [], "ipam.ranges[0] is an empty range set"),
    ("ranges-not-list", {"ranges": {"subnet": "10.0.0.0/24"}}, {}, [], "ipam.ranges must be a list"),
    ("bad-route", {"ranges": [[{"subnet": "10.0.0.0/24"}]], "routes": [{"dst": "nope"}]}, {}, [],
     "ipam.routes"),
    ("bad-requested-arg", {"ranges": [[{"subnet": "10.0.0.0/24"}]]}, {}, [("IP", "10.0.0.300")],
     "10.0.0.300"),
    ("bad-runtime-ip", {"ranges": [[{"subnet": "10.0.0.0/24"}]]}, {"runtimeConfig": {"ips": ["x"]}}, [],
     "runtimeConfig.ips[0]"),
    ("bad-runtime-range", {}, {"runtimeConfig": {"ipRanges": [[{"subnet": "10.0.0.0/40"}]]}}, [],
     "runtimeConfig.ipRanges[0][0].subnet"),
    ("data-dir-not-string", {"ranges": [[{"subnet": "10.0.0.0/24"}]], "dataDir": 5}, {}, [], "ipam.dataDir"),
]


@pytest.mark.parametrize(("ipam", "top", "args", "text"), [c[1:] for c in BAD_HOST_LOCAL],
                         ids=[c[0] for c in BAD_HOST_LOCAL])
def test_invalid_host_local_config(ipam: dict[str, Any], top: dict[str, Any], args: list[tuple[str, str]],
                                   text: str) -> None:
    with pytest.raises(InvalidNetworkConfig) as exc:
        hl(ipam, args, **top)
    assert exc.value.code == 7
    assert text in str(exc.value)


def test_missing_ipam_section() -> None:
    with pytest.raises(InvalidNetworkConfig, match="no 'ipam'"):
        load_host_local({"name": "n"}, [], "1.0.0")


def test_old_versions_allow_one_address_per_family() -> None:
    ipam = {"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.1.0.0/24"}]]}
    with pytest.raises(InvalidNetworkConfig, match=r"CNI version 0\.2\.0 allows one address per family"):
        hl(ipam, version="0.2.0")
    assert len(hl(ipam, version="0.3.1").range_sets) == 2


# ---- static -----------------------------------------------------------------------------------


def st(ipam: dict[str, Any], args: list[tuple[str, str]] | None = None, version: str = "1.0.0",
       **top: Any) -> Any:
    return load_static(net({"type": "podnet-static", **ipam}, **top), args or [], version)


def test_static_addresses_routes_dns_and_args() -> None:
    conf = st({"addresses": [{"address": "10.10.0.5/24", "gateway": "10.10.0.254"},
                             {"address": "fd00::5/64"}],
               "routes": [{"dst": "0.0.0.0/0"}], "dns": {"nameservers": ["1.1.1.1"], "search": ["a"]}},
              args=[("IP", "10.20.0.9/16"), ("GATEWAY", "10.20.0.1,fd00::1")],
              args_={"cni": {"ips": ["10.30.0.9/32"]}}, runtimeConfig={"ips": ["10.40.0.9/24"]})
    got = [(str(a.address), str(a.gateway) if a.gateway else None) for a in conf.addresses]
    assert got == [("10.10.0.5/24", "10.10.0.254"), ("fd00::5/64", "fd00::1"), ("10.20.0.9/16", "10.20.0.1"),
                   ("10.30.0.9/32", None), ("10.40.0.9/24", None)]
    assert conf.dns.nameservers == ["1.1.1.1"] and conf.dns.search == ["a"]
    assert [str(r.dst) for r in conf.routes] == ["0.0.0.0/0"]


def test_static_gateway_may_be_outside_a_host_route() -> None:
    conf = st({"addresses": [{"address": "10.10.0.5/32", "gateway": "169.254.1.1"}]})
    assert str(conf.addresses[0].gateway) == "169.254.1.1"


BAD_STATIC: list[tuple[str, dict[str, Any], list[tuple[str, str]], str]] = [
    ("no-addresses", {}, [], "static IPAM has no addresses"),
    ("not-cidr", {"addresses": [{"address": "10.0.0.5"}]}, [], "'10.0.0.5': expected CIDR notation"),
    ("bad-prefix", {"addresses": [{"address": "10.0.0.5/40"}]}, [], "'10.0.0.5/40'"),
    ("gateway-family", {"addresses": [{"address": "10.0.0.5/24", "gateway": "fd00::1"}]}, [],
     "gateway fd00::1 is not of the address family of 10.0.0.5/24"),
    ("gateway-garbage", {"addresses": [{"address": "10.0.0.5/24", "gateway": "x"}]}, [], "'x'"),
    ("duplicate", {"addresses": [{"address": "10.0.0.5/24"}]}, [("IP", "10.0.0.5/16")],
     "10.0.0.5 is given twice"),
    ("arg-not-cidr", {}, [("IP", "10.0.0.5")], "CNI_ARGS IP[0]"),
    ("gateway-arg-matches-nothing", {"addresses": [{"address": "10.0.0.5/24"}]}, [("GATEWAY", "10.9.9.9")],
     "GATEWAY 10.9.9.9 is in none"),
]


@pytest.mark.parametrize(("ipam", "args", "text"), [c[1:] for c in BAD_STATIC],
                         ids=[c[0] for c in BAD_STATIC])
def test_invalid_static_config(ipam: dict[str, Any], args: list[tuple[str, str]], text: str) -> None:
    with pytest.raises(InvalidNetworkConfig) as exc:
        st(ipam, args)
    assert exc.value.code == 7
    assert text in str(exc.value)


def test_static_old_version_one_address_per_family() -> None:
    with pytest.raises(InvalidNetworkConfig, match="allows one address per family"):
        st({"addresses": [{"address": "10.0.0.5/24"}, {"address": "10.0.1.5/24"}]}, version="0.2.0")


# ---- resolv.conf -------------------------------------------------------------------------------


def test_resolv_conf(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_text("# comment\n; also\nnameserver 10.0.0.2\nnameserver fd00::2\ndomain example.com\n"
                    "search a.example b.example\noptions ndots:5 edns0\nbogus\n")
    dns = parse_resolv_conf(str(path))
    assert dns.nameservers == ["10.0.0.2", "fd00::2"] and dns.domain == "example.com"
    assert dns.search == ["a.example", "b.example"] and dns.options == ["ndots:5", "edns0"]
    with pytest.raises(InvalidNetworkConfig, match="missing"):
        parse_resolv_conf(str(tmp_path / "missing"))
