"""Which subnets can number pods: host-local refuses the ones that cannot (code 7, naming the range)
and keeps accepting every ordinary unicast subnet; static refuses addresses no interface can use."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_ipam_plugins import call, hl_conf, ip_files, static_conf

from podnet.cni.errors import InvalidNetworkConfig
from podnet.ipam.config import load_static, parse_range_set
from podnet.plugins import host_local

REFUSED = [
    # (subnet, text the message must contain besides the subnet)
    ("0.0.0.0/0", "every address"),
    ("::/0", "every address"),
    ("0.0.0.0/8", "unspecified"),
    ("0.0.0.0/24", "unspecified"),
    ("::/64", "unspecified"),
    ("::1/128", "too small"),  # the reference's size rule comes first
    ("::/120", "unspecified"),
    ("127.0.0.0/8", "loopback"),
    ("127.0.10.0/24", "loopback"),
    ("224.0.0.0/4", "multicast"),
    ("239.1.0.0/16", "multicast"),
    ("ff02::/64", "multicast"),
    ("ff00::/8", "multicast"),
    ("0.0.0.0/1", "unspecified"),
    ("128.0.0.0/1", "multicast"),
    ("255.255.255.0/24", "broadcast"),
    ("169.254.0.0/16", "link-local"),
    ("169.254.1.0/24", "link-local"),
    ("fe80::/64", "link-local"),
    ("::ffff:10.212.50.0/120", "IPv4-mapped"),
    ("::ffff:0:0/96", "IPv4-mapped"),
]

ACCEPTED = ["10.0.0.0/8", "10.1.2.0/24", "172.16.0.0/12", "192.168.1.0/30", "100.64.0.0/10",
            "198.18.0.0/15", "240.0.0.0/8", "1.0.0.0/24", "fd00::/8", "fd00:1::/64", "2001:db8::/32",
            "2600::/120", "fd00::/126", "64:ff9b::/96", "1.0.0.0/8", "8.0.0.0/7"]


@pytest.mark.parametrize(("subnet", "text"), REFUSED)
def test_subnet_that_cannot_number_pods_is_refused(subnet: str, text: str) -> None:
    with pytest.raises(InvalidNetworkConfig) as exc:
        parse_range_set([{"subnet": subnet}], "ipam.ranges[0]")
    assert exc.value.code == 7
    assert f"ipam.ranges[0][0].subnet {subnet}" in str(exc.value) and text in str(exc.value)


@pytest.mark.parametrize("subnet", ACCEPTED)
def test_ordinary_unicast_subnets_stay_accepted(subnet: str) -> None:
    assert str(parse_range_set([{"subnet": subnet}], "t").ranges[0].subnet) == subnet


@pytest.mark.parametrize("subnet", ["10.0.0.0/31", "10.0.0.0/32", "fd00::/127", "fd00::/128"])
def test_too_small_subnets_are_refused_as_the_reference_does(subnet: str) -> None:
    with pytest.raises(InvalidNetworkConfig, match="too small to allocate from"):
        parse_range_set([{"subnet": subnet}], "t")


def test_add_refuses_0_0_0_0_slash_0_and_del_succeeds(tmp_path: Path) -> None:
    conf = hl_conf(tmp_path, "1.1.0", {"ranges": [[{"subnet": "0.0.0.0/0", "rangeStart": "10.0.0.10",
                                                    "rangeEnd": "10.0.0.20"}]]})
    rc, err = call(host_local.PLUGIN, "ADD", conf)
    assert rc == 1 and err["code"] == 7 and "0.0.0.0/0" in err["msg"], err
    assert ip_files(tmp_path) == [] and not (tmp_path / "hlnet").exists()
    assert call(host_local.PLUGIN, "DEL", conf) == (0, {})
    rc, err = call(host_local.PLUGIN, "ADD", conf, cni_args="IP=10.0.0.11")  # requested IPs too
    assert rc == 1 and err["code"] == 7 and "0.0.0.0/0" in err["msg"], err


def test_runtime_ip_ranges_are_checked_alike() -> None:
    conf = {"name": "n", "ipam": {}, "runtimeConfig": {"ipRanges": [[{"subnet": "224.1.0.0/16"}]]}}
    with pytest.raises(InvalidNetworkConfig, match=r"runtimeConfig.ipRanges\[0\]\[0\].subnet 224.1.0.0/16"):
        host_local.load_host_local(conf, [], "1.1.0")


@pytest.mark.parametrize(("address", "text"), [
    ("0.0.0.0/24", "unspecified"), ("::/64", "unspecified"), ("127.0.0.5/8", "loopback"),
    ("::1/128", "loopback"), ("224.0.0.5/24", "multicast"), ("ff02::5/64", "multicast"),
    ("255.255.255.255/32", "broadcast"), ("::ffff:10.0.0.5/120", "IPv4-mapped"), ("10.0.0.5/0", "/0"),
])
def test_static_address_no_interface_can_use_is_refused(address: str, text: str) -> None:
    conf = static_conf("1.1.0", addresses=[{"address": address}])
    with pytest.raises(InvalidNetworkConfig) as exc:
        load_static(conf, [], "1.1.0")
    assert exc.value.code == 7 and address in str(exc.value) and text in str(exc.value)


@pytest.mark.parametrize("address", ["10.0.0.5/32", "10.0.0.5/31", "fd00::5/128", "169.254.10.5/16",
                                     "fe80::5/64", "192.168.1.5/24"])
def test_static_keeps_accepting_host_routes_and_link_local(address: str) -> None:
    conf = static_conf("1.1.0", addresses=[{"address": address}])
    assert str(load_static(conf, [], "1.1.0").addresses[0].address) == address


@pytest.mark.parametrize("gateway", ["224.0.0.1", "127.0.0.1", "0.0.0.0", "255.255.255.255"])
def test_static_gateway_that_is_no_host_is_refused(gateway: str) -> None:
    conf = static_conf("1.1.0", addresses=[{"address": "10.0.0.5/24", "gateway": gateway}])
    with pytest.raises(InvalidNetworkConfig, match=f"gateway {gateway} cannot be a gateway"):
        load_static(conf, [], "1.1.0")
