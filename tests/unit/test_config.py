"""Network configuration lists and single configs: parsing, validation, version picking, plugin stdin."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from podnet.cni.config import (
    NetConfList,
    PluginConf,
    parse_bool,
    parse_conf,
    parse_conflist,
    pick_version,
    plugin_stdin,
    runtime_config,
)
from podnet.cni.errors import DecodingFailure, IncompatibleVersion, InvalidNetworkConfig

LIST: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "name": "podnet-net",
    "plugins": [
        {
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": True,
            "ipam": {"type": "host-local", "subnet": "10.22.0.0/16", "routes": [{"dst": "0.0.0.0/0"}]},
            "dns": {"nameservers": ["10.22.0.1"]},
        },
        {"type": "tuning", "capabilities": {"mac": True}, "sysctl": {"net.core.somaxconn": "512"}},
        {"type": "portmap", "capabilities": {"portMappings": True, "bandwidth": False}, "snat": True},
    ],
}


def _list(**over: Any) -> bytes:
    doc = copy.deepcopy(LIST)
    for key, value in over.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return json.dumps(doc).encode()


def _raises(exc: type[Exception], data: bytes | str, code: int) -> str:
    with pytest.raises(exc) as info:
        parse_conflist(data, "10-test.conflist")
    assert getattr(info.value, "code", None) == code
    return str(info.value)


# ---- parsing ----------------------------------------------------------------------------------


def test_parse_conflist() -> None:
    raw = _list()
    conf = parse_conflist(raw, "/etc/cni/net.d/10-podnet.conflist")
    assert conf.name == "podnet-net"
    assert conf.cni_version == "1.0.0"
    assert [p.type for p in conf.plugins] == ["bridge", "tuning", "portmap"]
    assert conf.plugins[0].raw["ipam"]["subnet"] == "10.22.0.0/16"
    assert (conf.disable_check, conf.disable_gc, conf.load_only_inlined_plugins) == (False, False, False)
    assert conf.raw_bytes == raw
    assert conf.source == "/etc/cni/net.d/10-podnet.conflist"
    assert conf.cni_versions == []


def test_parse_conflist_from_text() -> None:
    conf = parse_conflist(_list().decode())
    assert conf.raw_bytes == _list()


def test_capabilities_only_true_ones() -> None:
    conf = parse_conflist(_list())
    assert conf.plugins[0].capabilities == {}
    assert conf.plugins[1].capabilities == {"mac": True}
    assert conf.plugins[2].capabilities == {"portMappings": True}


def test_parse_conf_becomes_list_of_one() -> None:
    single = {"cniVersion": "0.4.0", "name": "lo", "type": "loopback", "extra": 1}
    conf = parse_conf(json.dumps(single), "99-lo.conf")
    assert isinstance(conf, NetConfList)
    assert (conf.name, conf.cni_version) == ("lo", "0.4.0")
    assert len(conf.plugins) == 1
    assert conf.plugins[0].type == "loopback"
    assert conf.plugins[0].raw["extra"] == 1
    # The bytes kept for the cache describe a list around the config.
    cached = json.loads(conf.raw_bytes)
    assert cached["name"] == "lo"
    assert cached["cniVersion"] == "0.4.0"
    assert cached["plugins"] == [single]
    assert parse_conflist(conf.raw_bytes).plugins[0].raw == single


def test_parse_conf_needs_type() -> None:
    with pytest.raises(InvalidNetworkConfig, match="type") as info:
        parse_conf(b'{"cniVersion":"1.0.0","name":"x"}')
    assert info.value.code == 7


def test_parse_conf_picks_from_cni_versions() -> None:
    conf = parse_conf(b'{"cniVersions":["0.4.0","1.1.0"],"cniVersion":"0.4.0","name":"x","type":"y"}')
    assert conf.cni_version == "1.1.0"
    assert conf.cni_versions == ["0.4.0", "1.1.0"]


# ---- names and plugin types -------------------------------------------------------------------

BAD_NAMES = ["../x", "a/b", "", "n" * 300, "-x", " x", "x\n"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_network_names(name: str) -> None:
    _raises(InvalidNetworkConfig, _list(name=name), 7)
    with pytest.raises(InvalidNetworkConfig):
        parse_conf(json.dumps({"cniVersion": "1.0.0", "name": name, "type": "bridge"}))


@pytest.mark.parametrize("name", [None, 5, ["x"]])
def test_missing_or_mistyped_network_name(name: object) -> None:
    doc = copy.deepcopy(LIST)
    if name is None:
        del doc["name"]
    else:
        doc["name"] = name
    assert "name" in _raises(InvalidNetworkConfig, json.dumps(doc), 7)


@pytest.mark.parametrize("ptype", ["../x", "a/b", "", "p" * 300, None, 7, "..", "a\\b"])
def test_bad_plugin_types_name_the_plugin(ptype: object) -> None:
    plugins = copy.deepcopy(LIST["plugins"])
    if ptype is None:
        del plugins[1]["type"]
    else:
        plugins[1]["type"] = ptype
    assert "plugins[1]" in _raises(InvalidNetworkConfig, _list(plugins=plugins), 7)
    single = {"cniVersion": "1.0.0", "name": "n", **({} if ptype is None else {"type": ptype})}
    with pytest.raises(InvalidNetworkConfig):
        parse_conf(json.dumps(single))


# ---- versions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "chosen"),
    [
        ({"cniVersion": "0.3.1"}, "0.3.1"),
        ({}, "0.1.0"),
        ({"cniVersion": ""}, "0.1.0"),
        ({"cniVersion": "1.0"}, "1.0.0"),
        ({"cniVersions": ["0.3.1", "1.0.0", "1.1.0"]}, "1.1.0"),
        ({"cniVersions": ["1.1.0", "0.3.1", "1.0.0"]}, "1.1.0"),
        ({"cniVersions": ["1.0.0", "2.0.0", "1.7.0"]}, "1.0.0"),
        ({"cniVersions": ["x", "0.4.0", "1.0.0.0"]}, "0.4.0"),
        ({"cniVersions": ["0.4.0"], "cniVersion": "1.1.0"}, "0.4.0"),
        ({"cniVersions": ["9.0.0"], "cniVersion": "0.4.0"}, "0.4.0"),
        ({"cniVersions": [], "cniVersion": "1.0.0"}, "1.0.0"),
    ],
)
def test_pick_version(obj: dict[str, Any], chosen: str) -> None:
    version, versions = pick_version(obj, "test")
    assert version == chosen
    assert versions == obj.get("cniVersions", [])


def test_cni_versions_in_conflist() -> None:
    conf = parse_conflist(_list(cniVersion=None, cniVersions=["0.4.0", "1.0.0", "1.1.0", "2.0.0"]))
    assert conf.cni_version == "1.1.0"
    assert conf.cni_versions == ["0.4.0", "1.0.0", "1.1.0", "2.0.0"]


@pytest.mark.parametrize("version", ["0.5.0", "2.0.0", "1.2.0", "abc", "1.0.0-rc1", " 1.0.0"])
def test_unsupported_version_is_code_1(version: str) -> None:
    assert version in _raises(IncompatibleVersion, _list(cniVersion=version), 1)


def test_no_supported_cni_versions_is_code_1() -> None:
    msg = _raises(IncompatibleVersion, _list(cniVersion=None, cniVersions=["2.0.0", "3.0.0"]), 1)
    assert "2.0.0" in msg


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"cniVersion": 1.0}, "cniVersion"),
        ({"cniVersions": "1.0.0"}, "cniVersions"),
        ({"cniVersions": ["1.0.0", 1]}, "cniVersions"),
    ],
)
def test_mistyped_versions_are_code_7(over: dict[str, Any], field: str) -> None:
    assert field in _raises(InvalidNetworkConfig, _list(**over), 7)


# ---- booleans ---------------------------------------------------------------------------------

FLAGS = {"disableCheck": "disable_check", "disableGC": "disable_gc",
         "loadOnlyInlinedPlugins": "load_only_inlined_plugins"}


@pytest.mark.parametrize("key", FLAGS)
@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), ("true", True), ("false", False), ("True", True), ("FALSE", False)],
)
def test_boolean_flags_accept_strings(key: str, value: object, expected: bool) -> None:
    conf = parse_conflist(_list(**{key: value}))
    assert getattr(conf, FLAGS[key]) is expected


@pytest.mark.parametrize("key", FLAGS)
@pytest.mark.parametrize("value", ["yes", "1", "", 1, 0, [], {}])
def test_boolean_flags_reject_other_values(key: str, value: object) -> None:
    assert key in _raises(InvalidNetworkConfig, _list(**{key: value}), 7)


def test_boolean_null_is_rejected() -> None:
    doc = copy.deepcopy(LIST)
    doc["disableCheck"] = None
    _raises(InvalidNetworkConfig, json.dumps(doc), 7)


def test_parse_bool() -> None:
    assert parse_bool("tRuE", "k") is True
    assert parse_bool(False, "k") is False
    with pytest.raises(InvalidNetworkConfig, match="'k'"):
        parse_bool("on", "k")


# ---- malformed input --------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"{", b"{'name': 'x'}", b"\xff\xfe", b"[]", b"null", b"42", b'"x"',
                                  b'{"name": "x",}'])
def test_bad_json_is_code_6(data: bytes) -> None:
    _raises(DecodingFailure, data, 6)
    with pytest.raises(DecodingFailure):
        parse_conf(data)


def test_bad_json_names_source() -> None:
    assert "10-test.conflist" in _raises(DecodingFailure, b"{", 6)


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"plugins": {"type": "bridge"}}, "plugins"),
        ({"plugins": ["bridge"]}, "plugins[0]"),
        ({"plugins": [{"type": "bridge"}, 7]}, "plugins[1]"),
        ({"plugins": [{"type": "bridge", "capabilities": ["mac"]}]}, "capabilities"),
        ({"plugins": []}, "no plugins"),
        ({"plugins": None}, "no plugins"),
    ],
)
def test_structurally_wrong_config_is_code_7(over: dict[str, Any], field: str) -> None:
    assert field in _raises(InvalidNetworkConfig, _list(**over), 7)


def test_allow_empty_plugins() -> None:
    conf = parse_conflist(_list(plugins=None), allow_empty=True)
    assert conf.plugins == []


# ---- plugin stdin -----------------------------------------------------------------------------

PREV = {"cniVersion": "1.0.0", "ips": [{"address": "10.22.0.5/16"}], "dns": {}}
CAP_ARGS: dict[str, Any] = {
    "mac": "c2:11:22:33:44:55",
    "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
    "bandwidth": {"ingressRate": 1000},
    "ips": ["10.22.0.9/16"],
}


def _stdin(index: int, **kw: Any) -> dict[str, Any]:
    conf = parse_conflist(_list())
    before = copy.deepcopy(conf.plugins[index].raw)
    out = plugin_stdin(conf, conf.plugins[index], **kw)
    assert conf.plugins[index].raw == before, "plugin_stdin must not change the parsed config"
    assert isinstance(out, bytes)
    parsed: dict[str, Any] = json.loads(out)
    return parsed


def test_stdin_injects_name_and_version_and_keeps_the_rest() -> None:
    body = _stdin(0)
    assert body == {"cniVersion": "1.0.0", "name": "podnet-net", **LIST["plugins"][0]}
    assert "prevResult" not in body
    assert "runtimeConfig" not in body


def test_stdin_overrides_plugin_level_name_and_version() -> None:
    plugins = copy.deepcopy(LIST["plugins"])
    plugins[0].update({"name": "other", "cniVersion": "0.3.1", "cniVersions": ["0.3.1"]})
    conf = parse_conflist(_list(plugins=plugins))
    body = json.loads(plugin_stdin(conf, conf.plugins[0]))
    assert (body["name"], body["cniVersion"]) == ("podnet-net", "1.0.0")
    assert "cniVersions" not in body


def test_stdin_prev_result() -> None:
    body = _stdin(1, prev_result=PREV)
    assert body["prevResult"] == PREV


def test_stdin_runtime_config_only_declared_capabilities() -> None:
    tuning = _stdin(1, prev_result=PREV, capability_args=CAP_ARGS)
    assert tuning["runtimeConfig"] == {"mac": "c2:11:22:33:44:55"}
    assert "capabilities" not in tuning
    assert tuning["sysctl"] == {"net.core.somaxconn": "512"}
    portmap = _stdin(2, capability_args=CAP_ARGS)
    assert portmap["runtimeConfig"] == {"portMappings": CAP_ARGS["portMappings"]}  # bandwidth is false
    bridge = _stdin(0, capability_args=CAP_ARGS)
    assert "runtimeConfig" not in bridge


def test_stdin_no_runtime_config_without_matching_args() -> None:
    body = _stdin(1, capability_args={"portMappings": []})
    assert "runtimeConfig" not in body
    assert "capabilities" not in body


def test_stdin_runtime_config_replaces_a_static_one() -> None:
    plugins = copy.deepcopy(LIST["plugins"])
    plugins[1]["runtimeConfig"] = {"stale": 1, "mac": "00:00:00:00:00:01"}
    conf = parse_conflist(_list(plugins=plugins))
    body = json.loads(plugin_stdin(conf, conf.plugins[1], capability_args=CAP_ARGS))
    assert body["runtimeConfig"] == {"mac": "c2:11:22:33:44:55"}
    left = json.loads(plugin_stdin(conf, conf.plugins[1]))
    assert left["runtimeConfig"] == {"stale": 1, "mac": "00:00:00:00:00:01"}


def test_stdin_extra_keys() -> None:
    body = _stdin(0, extra={"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]})
    assert body["cni.dev/valid-attachments"] == [{"containerID": "c1", "ifname": "eth0"}]


def test_stdin_for_single_conf() -> None:
    conf = parse_conf(b'{"cniVersion":"0.4.0","name":"lo","type":"loopback","capabilities":{"io":true}}')
    body = json.loads(plugin_stdin(conf, conf.plugins[0], capability_args={"io": 1, "x": 2}))
    assert body == {"cniVersion": "0.4.0", "name": "lo", "type": "loopback", "runtimeConfig": {"io": 1}}


def test_runtime_config_helper() -> None:
    plugin = PluginConf(raw={"type": "x", "capabilities": {"a": True, "b": False, "c": "true"}})
    assert runtime_config(plugin, {"a": 1, "b": 2, "c": 3, "d": 4}) == {"a": 1}
    assert runtime_config(PluginConf(raw={"type": "x"}), {"a": 1}) == {}


@pytest.mark.parametrize("text", ['{"name":"n","x":NaN,"plugins":[{"type":"b"}]}',
                                  '{"name":"n","x":Infinity,"plugins":[{"type":"b"}]}',
                                  "[" * 100_000])
def test_non_json_constants_and_deep_nesting_are_decoding_errors(text: str) -> None:
    with pytest.raises(DecodingFailure) as info:
        parse_conflist(text)
    assert info.value.code == 6
