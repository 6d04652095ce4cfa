"""Per-invocation parameters: container IDs, interface names, network names, plugin types, CNI_ARGS."""

from __future__ import annotations

import os

import pytest

from podnet.cni import args
from podnet.cni.errors import InvalidEnvironment, InvalidNetworkConfig

GOOD_IDS = [
    "a",
    "0",
    "cont-1",
    "pod_abc.def-1",
    "3f6940ab5ab43bc522569d15b23f8c1bbde1d7678b080398506924fc01d72755",
    "A" * 255,
]
BAD_IDS = ["../x", "a/b", "-leading", "_leading", ".hidden", "x y", "x\n", "abc\n", "tab\t", "ü", "a:b",
           "A" * 300]


@pytest.mark.parametrize("cid", GOOD_IDS)
def test_valid_container_ids(cid: str) -> None:
    assert args.validate_container_id(cid) == cid


@pytest.mark.parametrize("cid", BAD_IDS)
def test_invalid_container_ids_are_code_4_naming_value(cid: str) -> None:
    with pytest.raises(InvalidEnvironment) as info:
        args.validate_container_id(cid)
    assert info.value.code == 4
    text = str(info.value)
    assert repr(cid) in text or str(len(cid)) in text


def test_empty_container_id_names_variable() -> None:
    with pytest.raises(InvalidEnvironment, match="CNI_CONTAINERID"):
        args.validate_container_id("")


@pytest.mark.parametrize("ifname", ["eth0", "e", "net1", "a" * 15, "veth-1_2.3", "ü" * 7])
def test_valid_ifnames(ifname: str) -> None:
    assert args.validate_ifname(ifname) == ifname


@pytest.mark.parametrize(
    "ifname",
    ["a" * 16, "eth/0", ".", "..", "eth:0", "eth 0", "eth\t0", "eth0\n", "\u00a0x", "ü" * 8, "a\x00b"],
)
def test_invalid_ifnames_are_code_4_naming_value(ifname: str) -> None:
    with pytest.raises(InvalidEnvironment) as info:
        args.validate_ifname(ifname)
    assert info.value.code == 4
    assert repr(ifname) in str(info.value)


def test_empty_ifname_names_variable() -> None:
    with pytest.raises(InvalidEnvironment, match="CNI_IFNAME"):
        args.validate_ifname("")


@pytest.mark.parametrize("name", ["net1", "k8s-pod-network", "a.b_c-d", "N" * 255])
def test_valid_network_names(name: str) -> None:
    assert args.validate_network_name(name) == name


@pytest.mark.parametrize("name", ["", None, 5, "../x", "a/b", "-x", "x y", "net\n", "N" * 300])
def test_invalid_network_names_are_code_7(name: object) -> None:
    with pytest.raises(InvalidNetworkConfig) as info:
        args.validate_network_name(name)
    assert info.value.code == 7


@pytest.mark.parametrize("ptype", ["bridge", "host-local", "aws-cni", "calico_ipam", "p" * 255])
def test_valid_plugin_types(ptype: str) -> None:
    assert args.validate_plugin_type(ptype) == ptype


@pytest.mark.parametrize("ptype", ["", None, 3, "../x", "a/b", "/usr/bin/x", "a\\b", ".", "..", "a\x00b",
                                   "p" * 300])
def test_invalid_plugin_types_are_code_7(ptype: object) -> None:
    with pytest.raises(InvalidNetworkConfig) as info:
        args.validate_plugin_type(ptype)
    assert info.value.code == 7


@pytest.mark.parametrize(
    ("raw", "pairs"),
    [
        ("", []),
        ("FOO=BAR", [("FOO", "BAR")]),
        ("FOO=BAR;ABC=123", [("FOO", "BAR"), ("ABC", "123")]),
        ("K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;IgnoreUnknown=1",
         [("K8S_POD_NAMESPACE", "default"), ("K8S_POD_NAME", "web-0"), ("IgnoreUnknown", "1")]),
        ("A=;B=2", [("A", ""), ("B", "2")]),
        ("A=x=y", [("A", "x=y")]),
        ("A=1;;B=2;", [("A", "1"), ("B", "2")]),
        ("A=1;A=2", [("A", "1"), ("A", "2")]),
    ],
)
def test_parse_cni_args(raw: str, pairs: list[tuple[str, str]]) -> None:
    assert args.parse_cni_args(raw) == pairs


@pytest.mark.parametrize("raw", ["FOO", "A=1;BAR", "=value", "A=1;=2"])
def test_bad_cni_args_are_code_4_naming_item(raw: str) -> None:
    with pytest.raises(InvalidEnvironment) as info:
        args.parse_cni_args(raw)
    assert info.value.code == 4
    assert "CNI_ARGS" in str(info.value)


def test_format_cni_args_round_trips() -> None:
    pairs = [("K8S_POD_NAME", "web-0"), ("IP", "10.1.0.5")]
    assert args.format_cni_args(pairs) == "K8S_POD_NAME=web-0;IP=10.1.0.5"
    assert args.parse_cni_args(args.format_cni_args(pairs)) == pairs


@pytest.mark.parametrize("own", ["/proc/self/ns/net", "/proc/thread-self/ns/net",
                                 f"/proc/{os.getpid()}/ns/net"])
def test_the_callers_own_namespace_is_never_a_pod(own: str) -> None:
    """Only looks at namespaces (stat), never enters or changes one: safe outside a test namespace."""
    for command in ("ADD", "CHECK"):
        with pytest.raises(InvalidEnvironment) as info:
            args.pod_netns(command, own)
        assert info.value.code == 4 and own in str(info.value)
    assert args.pod_netns("DEL", own) == ""  # DEL goes on without a pod namespace
    assert args.pod_netns("GC", own) == own  # commands that take no namespace are not judged by it


@pytest.mark.parametrize("other", ["", "/run/netns/podnet-no-such-ns", "/etc/hostname", "x" * 5000])
def test_paths_that_are_not_the_callers_namespace_pass_unchanged(other: str) -> None:
    for command in ("ADD", "CHECK", "DEL"):
        assert args.pod_netns(command, other) == other
