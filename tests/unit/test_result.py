"""Results: one model, JSON for every spec version, conversion both ways, strict decoding."""

from __future__ import annotations

import copy
import ipaddress
import itertools
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from podnet.cni import version as ver
from podnet.cni.errors import CNIError, DecodingFailure, IncompatibleVersion
from podnet.cni.result import DNS, Interface, IPAddress, IPConfig, Result, Route

VERSIONS = list(ver.SUPPORTED)
LEGACY = ("0.1.0", "0.2.0")
WITH_FAMILY = ("0.3.0", "0.3.1", "0.4.0")


def _rich() -> Result:
    """A 1.1.0 result using every field the model has."""
    return Result.from_json({
        "cniVersion": "1.1.0",
        "interfaces": [
            {"name": "cni0", "mac": "0a:58:0a:16:00:01", "mtu": 9001},
            {"name": "veth3f69", "mac": "6e:1f:22:33:44:55", "mtu": 9001},
            {"name": "eth0", "mac": "0a:58:0a:16:00:05", "sandbox": "/var/run/netns/cni-1234", "mtu": 9001,
             "socketPath": "/run/vhost/eth0.sock", "pciID": "0000:00:1f.6"},
        ],
        "ips": [
            {"interface": 2, "address": "10.22.0.5/16", "gateway": "10.22.0.1"},
            {"interface": 2, "address": "10.23.0.5/24"},
            {"interface": 2, "address": "fd00:22::5/64", "gateway": "fd00:22::1"},
            {"address": "fd00:99::7/128"},
        ],
        "routes": [
            {"dst": "0.0.0.0/0", "gw": "10.22.0.1"},
            {"dst": "fd00::/8", "gw": "fd00:22::1", "priority": 100},
            {"dst": "192.168.0.0/16", "mtu": 1400, "advmss": 1360, "priority": 5, "table": 100, "scope": 0},
            {"dst": "::/0", "gw": "fd00:22::1", "table": 0},
        ],
        "dns": {"nameservers": ["10.96.0.10", "fd00:96::a"], "domain": "cluster.local",
                "search": ["default.svc.cluster.local", "svc.cluster.local"], "options": ["ndots:5"]},
    })


def _level(version: str) -> int:
    """0: ip4/ip6 blocks; 1: interfaces/ips/routes (0.3.0-1.0.0); 2: 1.1.0 extras."""
    if version in LEGACY:
        return 0
    return 2 if ver.at_least(version, "1.1.0") else 1


def _dns(r: Result) -> tuple[Any, ...]:
    return (tuple(r.dns.nameservers), r.dns.domain, tuple(r.dns.search), tuple(r.dns.options))


def project(r: Result, level: int) -> dict[str, Any]:
    """What a version of ``level`` can carry, computed independently of the code under test."""
    if level == 0:
        out: dict[str, Any] = {"dns": _dns(r)}
        for fam in (4, 6):
            first = next((ip for ip in r.ips if ip.address.version == fam), None)
            if first is not None:
                out[f"ip{fam}"] = (str(first.address), str(first.gateway) if first.gateway else None,
                                   [(str(rt.dst), rt.gw and str(rt.gw)) for rt in r.routes
                                    if rt.dst.version == fam])
        return out
    rich = level >= 2
    return {
        "interfaces": [(i.name, i.mac, i.sandbox) + ((i.mtu, i.socket_path, i.pci_id) if rich else ())
                       for i in r.interfaces],
        "ips": [(str(ip.address), ip.gateway and str(ip.gateway), ip.interface) for ip in r.ips],
        "routes": [(str(rt.dst), rt.gw and str(rt.gw))
                   + ((rt.mtu, rt.advmss, rt.priority, rt.table, rt.scope) if rich else ())
                   for rt in r.routes],
        "dns": _dns(r),
    }


def _wire(r: Result, version: str) -> Result:
    """Serialize, go through real JSON text, parse back."""
    return Result.from_json(json.loads(json.dumps(r.to_json(version))))


# ---- every ordered version pair ---------------------------------------------------------------


@pytest.mark.parametrize(("a", "b"), list(itertools.product(VERSIONS, VERSIONS)), ids="{0[0]}->{0[1]}".format)
def test_version_pair_round_trip_keeps_shared_fields(a: str, b: str) -> None:
    rich = _rich()
    mid = _wire(rich, a)
    assert mid.cni_version == a
    final = _wire(mid, b)
    assert final.cni_version == b
    shared = min(_level(a), _level(b))
    assert project(final, shared) == project(rich, shared)
    # Nothing the narrower version dropped comes back, and the path does not matter.
    assert final.to_json("1.1.0") == _wire(rich, VERSIONS[min(VERSIONS.index(a), VERSIONS.index(b))]).to_json(
        "1.1.0")


@pytest.mark.parametrize("v", VERSIONS)
def test_same_version_json_is_a_fixed_point(v: str) -> None:
    once = _rich().to_json(v)
    assert Result.from_json(once).to_json(v) == once
    assert Result.from_json(once).to_json() == once


def test_convert_sets_version_and_drops() -> None:
    down = _rich().convert("0.2.0")
    assert down.cni_version == "0.2.0"
    assert down.interfaces == []
    assert [str(ip.address) for ip in down.ips] == ["10.22.0.5/16", "fd00:22::5/64"]
    assert _rich().convert("1.1.0") == _rich()


# ---- spec-shaped examples for each version ----------------------------------------------------

LEGACY_EXAMPLE: dict[str, Any] = {
    "ip4": {"ip": "10.1.0.5/16", "gateway": "10.1.0.1",
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "172.16.0.0/12", "gw": "10.1.0.254"}]},
    "ip6": {"ip": "2001:db8:1::5/64", "gateway": "2001:db8:1::1", "routes": [{"dst": "::/0"}]},
    "dns": {"nameservers": ["10.1.0.1"], "domain": "example.org", "search": ["example.org"],
            "options": ["rotate"]},
}
V03_EXAMPLE: dict[str, Any] = {
    "interfaces": [
        {"name": "cni0", "mac": "00:11:22:33:44:55"},
        {"name": "veth0a1b", "mac": "00:11:22:33:44:66"},
        {"name": "eth0", "mac": "00:11:22:33:44:77", "sandbox": "/proc/4242/ns/net"},
    ],
    "ips": [
        {"version": "4", "interface": 2, "address": "10.1.0.5/16", "gateway": "10.1.0.1"},
        {"version": "6", "interface": 2, "address": "2001:db8:1::5/64", "gateway": "2001:db8:1::1"},
    ],
    "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "2001:db8:1::1"}],
    "dns": {"nameservers": ["10.1.0.1"], "search": ["example.org"]},
}
V10_EXAMPLE: dict[str, Any] = {
    "interfaces": [
        {"name": "cni0", "mac": "00:11:22:33:44:55"},
        {"name": "veth3243", "mac": "55:44:33:22:11:11"},
        {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/blue"},
    ],
    "ips": [{"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2}],
    "routes": [{"dst": "0.0.0.0/0"}],
    "dns": {"nameservers": ["10.1.0.1"]},
}
V11_EXAMPLE: dict[str, Any] = {
    "interfaces": [
        {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/blue", "mtu": 1450,
         "socketPath": "/var/run/vhost-user/sock0", "pciID": "0000:03:00.1"},
    ],
    "ips": [{"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 0},
            {"address": "2001:db8::5/64", "interface": 0}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1", "mtu": 1400, "advmss": 1360, "priority": 10,
                "table": 254, "scope": 0},
               {"dst": "10.96.0.0/12", "scope": 253}],
    "dns": {"nameservers": ["10.1.0.1"], "domain": "cluster.local", "options": ["ndots:5"]},
}
IPAM_EXAMPLE: dict[str, Any] = {
    "ips": [{"address": "10.22.0.9/16", "gateway": "10.22.0.1"}],
    "routes": [{"dst": "0.0.0.0/0"}],
    "dns": {},
}

EXAMPLES: list[tuple[str, dict[str, Any]]] = (
    [(v, LEGACY_EXAMPLE) for v in LEGACY]
    + [(v, V03_EXAMPLE) for v in WITH_FAMILY]
    + [("1.0.0", V10_EXAMPLE), ("1.1.0", V10_EXAMPLE), ("1.1.0", V11_EXAMPLE)]
    + [(v, IPAM_EXAMPLE) for v in ("1.0.0", "1.1.0")]
    + [("0.4.0", {**IPAM_EXAMPLE, "ips": [{"version": "4", **IPAM_EXAMPLE["ips"][0]}]})]
)


@pytest.mark.parametrize(("v", "body"), EXAMPLES, ids=[f"{v}-{i}" for i, (v, _) in enumerate(EXAMPLES)])
def test_spec_shaped_examples_reserialize_equal(v: str, body: dict[str, Any]) -> None:
    doc = {"cniVersion": v, **copy.deepcopy(body)}
    text = json.dumps(doc, sort_keys=True)
    parsed = Result.from_json(json.loads(text))
    assert parsed.cni_version == v
    assert parsed.to_json() == doc


def test_default_version_used_when_result_has_none() -> None:
    body = copy.deepcopy(V10_EXAMPLE)
    assert Result.from_json(body, default_version="1.0.0").cni_version == "1.0.0"
    with pytest.raises(DecodingFailure, match="cniVersion"):
        Result.from_json(body)


def test_route_destination_host_bits_are_masked() -> None:
    r = Result.from_json({"cniVersion": "1.0.0", "routes": [{"dst": "10.1.2.3/8"}]})
    assert r.to_json()["routes"] == [{"dst": "10.0.0.0/8"}]


def test_empty_gateway_strings_mean_unset() -> None:
    r = Result.from_json({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24", "gateway": ""}],
                          "routes": [{"dst": "0.0.0.0/0", "gw": ""}]})
    assert r.ips[0].gateway is None
    assert r.routes[0].gw is None


# ---- legacy 0.1.0/0.2.0 <-> current -----------------------------------------------------------


@pytest.mark.parametrize("legacy", LEGACY)
def test_legacy_to_current(legacy: str) -> None:
    r = Result.from_json({"cniVersion": legacy, **copy.deepcopy(LEGACY_EXAMPLE)})
    out = r.to_json("1.0.0")
    assert out["ips"] == [{"address": "10.1.0.5/16", "gateway": "10.1.0.1"},
                          {"address": "2001:db8:1::5/64", "gateway": "2001:db8:1::1"}]
    assert out["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "172.16.0.0/12", "gw": "10.1.0.254"},
                             {"dst": "::/0"}]
    assert "interfaces" not in out
    assert out["dns"] == LEGACY_EXAMPLE["dns"]
    assert [ip["version"] for ip in r.to_json("0.3.1")["ips"]] == ["4", "6"]


@pytest.mark.parametrize("legacy", LEGACY)
def test_current_to_legacy_takes_first_address_per_family_and_splits_routes(legacy: str) -> None:
    out = _rich().to_json(legacy)
    assert out == {
        "cniVersion": legacy,
        "ip4": {"ip": "10.22.0.5/16", "gateway": "10.22.0.1",
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.22.0.1"}, {"dst": "192.168.0.0/16"}]},
        "ip6": {"ip": "fd00:22::5/64", "gateway": "fd00:22::1",
                "routes": [{"dst": "fd00::/8", "gw": "fd00:22::1"}, {"dst": "::/0", "gw": "fd00:22::1"}]},
        "dns": {"nameservers": ["10.96.0.10", "fd00:96::a"], "domain": "cluster.local",
                "search": ["default.svc.cluster.local", "svc.cluster.local"], "options": ["ndots:5"]},
    }


def test_legacy_second_ipv4_is_not_put_in_the_ipv6_block() -> None:
    """libcni's 0.2.0 conversion can land a second IPv4 address in ip6; podnet must not."""
    r = Result(ips=[IPConfig(ipaddress.ip_interface("10.0.0.2/24")),
                    IPConfig(ipaddress.ip_interface("10.0.1.2/24"))])
    out = r.to_json("0.2.0")
    assert out["ip4"] == {"ip": "10.0.0.2/24"}
    assert "ip6" not in out


def test_legacy_drops_routes_of_a_family_without_address() -> None:
    r = Result(ips=[IPConfig(ipaddress.ip_interface("fd00::2/64"))],
               routes=[Route(ipaddress.ip_network("0.0.0.0/0")), Route(ipaddress.ip_network("::/0"))])
    out = r.to_json("0.2.0")
    assert "ip4" not in out
    assert out["ip6"] == {"ip": "fd00::2/64", "routes": [{"dst": "::/0"}]}


@pytest.mark.parametrize("legacy", LEGACY)
def test_legacy_needs_an_address(legacy: str) -> None:
    r = Result(interfaces=[Interface("eth0")], routes=[Route(ipaddress.ip_network("0.0.0.0/0"))])
    with pytest.raises(IncompatibleVersion, match=legacy) as info:
        r.to_json(legacy)
    assert info.value.code == 1
    with pytest.raises(IncompatibleVersion):
        r.convert(legacy)


# ---- version-specific fields ------------------------------------------------------------------


@pytest.mark.parametrize("v", [v for v in VERSIONS if v not in LEGACY])
def test_ips_version_field_only_in_03x_04x(v: str) -> None:
    ips = _rich().to_json(v)["ips"]
    if v in WITH_FAMILY:
        assert [ip["version"] for ip in ips] == ["4", "4", "6", "6"]
    else:
        assert all("version" not in ip for ip in ips)


@pytest.mark.parametrize("v", [v for v in VERSIONS if v not in LEGACY and v != "1.1.0"])
def test_11_only_fields_dropped_going_down(v: str) -> None:
    out = _rich().to_json(v)
    for iface in out["interfaces"]:
        assert set(iface) <= {"name", "mac", "sandbox"}
    for route in out["routes"]:
        assert set(route) <= {"dst", "gw"}
    assert out["interfaces"][2] == {"name": "eth0", "mac": "0a:58:0a:16:00:05",
                                    "sandbox": "/var/run/netns/cni-1234"}


def test_11_fields_written_in_11() -> None:
    out = _rich().to_json("1.1.0")
    assert out["interfaces"][2]["mtu"] == 9001
    assert out["interfaces"][2]["socketPath"] == "/run/vhost/eth0.sock"
    assert out["interfaces"][2]["pciID"] == "0000:00:1f.6"
    assert out["routes"][2] == {"dst": "192.168.0.0/16", "mtu": 1400, "advmss": 1360, "priority": 5,
                                "table": 100, "scope": 0}
    # table 0 and scope 0 are values, not "unset"
    assert out["routes"][3] == {"dst": "::/0", "gw": "fd00:22::1", "table": 0}


# ---- bad results ------------------------------------------------------------------------------


def _doc(**over: Any) -> dict[str, Any]:
    doc = {"cniVersion": "1.1.0", **copy.deepcopy(V11_EXAMPLE)}
    doc.update(over)
    return doc


def _ip(**over: Any) -> list[dict[str, Any]]:
    return [{"address": "10.1.0.5/16", "interface": 0, **over}]


def _route(**over: Any) -> list[dict[str, Any]]:
    return [{"dst": "0.0.0.0/0", **over}]


def _iface(**over: Any) -> list[dict[str, Any]]:
    return [{"name": "eth0", **over}]


BAD: list[tuple[str, object, str]] = [
    ("list", [], "not a JSON object"),
    ("string", "result", "not a JSON object"),
    ("null", None, "not a JSON object"),
    ("no version", {"ips": []}, "cniVersion"),
    ("version type", {"cniVersion": 1}, "cniVersion"),
    ("bad cidr", _doc(ips=_ip(address="10.1.0.300/16")), "ips[0].address"),
    ("no prefix", _doc(ips=_ip(address="10.1.0.5")), "ips[0].address"),
    ("prefix too long", _doc(ips=_ip(address="10.1.0.5/33")), "ips[0].address"),
    ("netmask prefix", _doc(ips=_ip(address="10.1.0.5/255.255.0.0")), "ips[0].address"),
    ("zone", _doc(ips=_ip(address="fe80::1%eth0/64")), "ips[0].address"),
    ("address type", _doc(ips=_ip(address=167837957)), "ips[0].address"),
    ("gateway family", _doc(ips=_ip(gateway="2001:db8::1")), "ips[0].gateway"),
    ("gateway garbage", _doc(ips=_ip(gateway="10.1.0")), "ips[0].gateway"),
    ("gateway type", _doc(ips=_ip(gateway=5)), "ips[0].gateway"),
    ("interface out of range", _doc(ips=_ip(interface=1)), "ips[0].interface"),
    ("interface negative", _doc(ips=_ip(interface=-1)), "ips[0].interface"),
    ("interface type", _doc(ips=_ip(interface="0")), "ips[0].interface"),
    ("interface bool", _doc(ips=_ip(interface=True)), "ips[0].interface"),
    ("no interfaces for index", _doc(interfaces=[], ips=_ip()), "ips[0].interface"),
    ("ips type", _doc(ips={"address": "10.1.0.5/16"}), "ips"),
    ("ip item type", _doc(ips=["10.1.0.5/16"]), "ips[0]"),
    ("version mismatch", {"cniVersion": "0.4.0", "ips": [{"version": "6", "address": "10.1.0.5/16"}]},
     "ips[0].version"),
    ("version type", {"cniVersion": "0.4.0", "ips": [{"version": 4, "address": "10.1.0.5/16"}]},
     "ips[0].version"),
    ("interfaces type", _doc(interfaces="eth0"), "interfaces"),
    ("interface item type", _doc(interfaces=["eth0"]), "interfaces[0]"),
    ("interface name type", _doc(interfaces=_iface(name=0)), "interfaces[0].name"),
    ("interface mtu type", _doc(interfaces=_iface(mtu="1500")), "interfaces[0].mtu"),
    ("interface mtu negative", _doc(interfaces=_iface(mtu=-1)), "interfaces[0].mtu"),
    ("interface mtu float", _doc(interfaces=_iface(mtu=1500.5)), "interfaces[0].mtu"),
    ("interface pciID type", _doc(interfaces=_iface(pciID=3)), "interfaces[0].pciID"),
    ("routes type", _doc(routes={"dst": "0.0.0.0/0"}), "routes"),
    ("route dst missing", _doc(routes=[{"gw": "10.1.0.1"}]), "routes[0].dst"),
    ("route dst bad", _doc(routes=_route(dst="default")), "routes[0].dst"),
    ("route gw bad", _doc(routes=_route(gw="gateway")), "routes[0].gw"),
    ("route table type", _doc(routes=_route(table="main")), "routes[0].table"),
    ("route scope negative", _doc(routes=_route(scope=-1)), "routes[0].scope"),
    ("route mtu bool", _doc(routes=_route(mtu=False)), "routes[0].mtu"),
    ("route priority type", _doc(routes=_route(priority="1")), "routes[0].priority"),
    ("dns type", _doc(dns=["10.1.0.1"]), "dns"),
    ("dns nameservers type", _doc(dns={"nameservers": "10.1.0.1"}), "dns.nameservers"),
    ("dns search items", _doc(dns={"search": [1]}), "dns.search"),
    ("dns domain type", _doc(dns={"domain": ["a"]}), "dns.domain"),
    ("legacy ip4 is v6", {"cniVersion": "0.2.0", "ip4": {"ip": "2001:db8::5/64"}}, "ip4.ip"),
    ("legacy ip6 is v4", {"cniVersion": "0.2.0", "ip6": {"ip": "10.0.0.5/8"}}, "ip6.ip"),
    ("legacy gateway family", {"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.5/8", "gateway": "fd00::1"}},
     "ip4.gateway"),
    ("legacy block type", {"cniVersion": "0.1.0", "ip4": "10.0.0.5/8"}, "ip4"),
    ("legacy routes type", {"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.5/8", "routes": {}}}, "ip4.routes"),
    ("legacy route dst", {"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.5/8", "routes": [{"dst": "x"}]}},
     "ip4.routes[0].dst"),
]


@pytest.mark.parametrize(("data", "field"), [(d, f) for _, d, f in BAD], ids=[n for n, _, _ in BAD])
def test_bad_results_are_decoding_failures_naming_the_field(data: object, field: str) -> None:
    with pytest.raises(DecodingFailure) as info:
        Result.from_json(data)
    assert info.value.code == 6
    assert field in str(info.value)


@pytest.mark.parametrize("version", ["9.9.9", "0.5.0", "abc", "1.0.0.0", "1.1.0\n"])
def test_unsupported_result_version_is_code_1(version: str) -> None:
    with pytest.raises(IncompatibleVersion):
        Result.from_json({"cniVersion": version})
    with pytest.raises(IncompatibleVersion):
        _rich().to_json(version)


def test_decoding_errors_are_cni_errors_not_value_errors() -> None:
    with pytest.raises(CNIError):
        Result.from_json({"cniVersion": "1.0.0", "ips": [{"address": "::ffff:zz/64"}]})


# ---- properties -------------------------------------------------------------------------------

_v4: st.SearchStrategy[IPAddress] = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
_v6: st.SearchStrategy[IPAddress] = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1))


@st.composite
def _ipconf(draw: st.DrawFn, n_ifaces: int) -> IPConfig:
    fam6 = draw(st.booleans())
    addr = draw(_v6 if fam6 else _v4)
    plen = draw(st.integers(0, 128 if fam6 else 32))
    gw = draw(st.none() | (_v6 if fam6 else _v4))
    idx = draw(st.none() | st.integers(0, n_ifaces - 1)) if n_ifaces else None
    return IPConfig(ipaddress.ip_interface(f"{addr}/{plen}"), gw, idx)


@st.composite
def _routes(draw: st.DrawFn) -> Route:
    fam6 = draw(st.booleans())
    plen = draw(st.integers(0, 128 if fam6 else 32))
    dst = ipaddress.ip_network(f"{draw(_v6 if fam6 else _v4)}/{plen}", strict=False)
    u = st.integers(0, 2**31 - 1)
    return Route(dst, draw(st.none() | _v4 | _v6), draw(u), draw(u), draw(u), draw(st.none() | u),
                 draw(st.none() | st.integers(0, 255)))


_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)


@st.composite
def _result(draw: st.DrawFn) -> Result:
    ifaces = draw(st.lists(st.builds(Interface, _text, _text, _text, st.integers(0, 65535), _text, _text),
                           max_size=3))
    return Result(
        cni_version="1.1.0",
        interfaces=ifaces,
        ips=draw(st.lists(_ipconf(len(ifaces)), max_size=4)),
        routes=draw(st.lists(_routes(), max_size=4)),
        dns=draw(st.builds(DNS, st.lists(_text, max_size=2), _text, st.lists(_text, max_size=2),
                           st.lists(_text, max_size=2))),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_result(), st.sampled_from(VERSIONS), st.sampled_from(VERSIONS))
def test_property_pair_round_trip(r: Result, a: str, b: str) -> None:
    if a in LEGACY or b in LEGACY:
        assume(r.ips)
    final = _wire(_wire(r, a), b)
    shared = min(_level(a), _level(b))
    assert project(final, shared) == project(r, shared)
    assert Result.from_json(final.to_json()).to_json() == final.to_json()


@settings(max_examples=100, deadline=None)
@given(_result())
def test_property_11_is_lossless(r: Result) -> None:
    assert _wire(r, "1.1.0") == r
