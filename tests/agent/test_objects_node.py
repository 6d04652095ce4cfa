"""agent.objects for Nodes: pod CIDRs, InternalIPs, readiness and labels; a bad Node is an
ObjectError naming the node and the field (a wrong pod CIDR must never become a route)."""

from __future__ import annotations

from ipaddress import ip_address, ip_network
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podnet.agent.model import Node
from podnet.agent.objects import Kind, ObjectError, key_of, kind_of, parse_object


def node(spec: Any = None, status: Any = None, **meta: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1.example", **meta}}
    if spec is not None:
        raw["spec"] = spec
    if status is not None:
        raw["status"] = status
    return raw


def parse_node(*args: Any, **kw: Any) -> Node:
    got = parse_object(node(*args, **kw))
    assert isinstance(got, Node)
    return got


def test_node_fields() -> None:
    got = parse_node(
        {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"]},
        {"addresses": [{"type": "Hostname", "address": "node-1"},
                       {"type": "InternalIP", "address": "192.168.1.11"},
                       {"type": "ExternalIP", "address": "203.0.113.9"},
                       {"type": "InternalIP", "address": "fd00::11"}],
         "conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}]},
        labels={"kubernetes.io/hostname": "node-1"})
    assert got == Node("node-1.example", (ip_network("10.244.1.0/24"), ip_network("fd00:10:244:1::/64")),
                       (ip_address("192.168.1.11"), ip_address("fd00::11")), True,
                       {"kubernetes.io/hostname": "node-1"})
    assert kind_of(got) is Kind.NODE and key_of(got) == "node-1.example"


def test_pod_cidr_alone_host_bits_masked_and_namespace_ignored() -> None:
    got = parse_node({"podCIDR": "10.244.2.7/24"}, namespace="ignored")
    assert got.pod_cidrs == (ip_network("10.244.2.0/24"),)
    assert parse_node().pod_cidrs == () and parse_node().internal_ips == ()


@pytest.mark.parametrize(("conditions", "ready"), [
    (None, True),  # no report at all (a hand-written manifest): nothing to distrust
    ([], True),
    ([{"type": "Ready", "status": "True"}], True),
    ([{"type": "Ready", "status": "False"}], False),
    ([{"type": "Ready", "status": "Unknown"}], False),
    ([{"type": "DiskPressure", "status": "True"}], True),
])
def test_readiness(conditions: Any, ready: bool) -> None:
    status = {} if conditions is None else {"conditions": conditions}
    assert parse_node(status=status).ready is ready


@pytest.mark.parametrize(("fields", "field"), [
    ({"spec": {"podCIDR": "10.244.1.0"}}, "spec.podCIDR"),
    ({"spec": {"podCIDR": "10.244.1.0/33"}}, "spec.podCIDR"),
    ({"spec": {"podCIDRs": ["10.244.1.0/24", "10.244.2.0/24"]}}, "spec.podCIDRs"),
    ({"spec": {"podCIDRs": ["10.244.1.0/24", "fd00::/64", "fd01::/64"]}}, "spec.podCIDRs"),
    ({"spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.9.0/24"]}}, "spec.podCIDRs[0]"),
    ({"spec": {"podCIDRs": "10.244.1.0/24"}}, "spec.podCIDRs"),
    ({"spec": {"podCIDRs": [7]}}, "spec.podCIDRs[0]"),
    ({"status": {"addresses": [{"type": "InternalIP", "address": "node-1"}]}}, "status.addresses[0].address"),
    ({"status": {"addresses": [{"address": "10.0.0.1"}]}}, "status.addresses[0].type"),
    ({"status": {"addresses": ["10.0.0.1"]}}, "status.addresses[0]"),
    ({"status": {"conditions": [{"type": "Ready", "status": True}]}}, "status.conditions[0].status"),
    ({"status": []}, "status"),
    ({"spec": "x"}, "spec"),
])
def test_bad_node_names_object_and_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ObjectError) as info:
        parse_object(node(**fields))
    assert str(info.value).startswith("Node node-1.example:") and field in str(info.value), info.value


def test_bad_node_name() -> None:
    raw = node()
    raw["metadata"]["name"] = "Node_1"
    with pytest.raises(ObjectError, match=r"^Node Node_1: metadata\.name"):
        parse_object(raw)


leaf = st.none() | st.booleans() | st.integers(-1, 300) | st.sampled_from(
    ["", "True", "False", "Ready", "InternalIP", "Hostname", "10.244.0.0/24", "fd00::/64", "10.0.0.1",
     "fd00::1", "n1", "10.244.0.0"])
value = st.recursive(leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["name", "labels", "podCIDR", "podCIDRs", "addresses", "type", "address", "conditions",
                     "status", "a"]), inner, max_size=4), max_leaves=25)


@settings(max_examples=150, deadline=None)
@given(metadata=value, spec=value, status=value)
def test_fuzz_node(metadata: Any, spec: Any, status: Any) -> None:
    raw = {"apiVersion": "v1", "kind": "Node", "metadata": metadata, "spec": spec, "status": status}
    try:
        got = parse_object(raw)
    except ObjectError as exc:
        assert str(exc).startswith("Node ")
        return
    assert isinstance(got, Node) and len(got.pod_cidrs) <= 2
