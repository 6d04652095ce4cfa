"""agent.objects: raw Kubernetes dicts -> model values, with the API server's validation and
defaulting; an invalid NetworkPolicy becomes a fail-closed one, never a dropped one."""

from __future__ import annotations

from ipaddress import ip_address, ip_network
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podnet.agent.model import (
    EVERYTHING,
    ContainerPort,
    Direction,
    IPBlock,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    Operator,
    Peer,
    PolicyPort,
    Protocol,
    Requirement,
    Rule,
)
from podnet.agent.objects import Kind, ObjectError, UnsupportedKind, failed_policy, parse_object

BOTH = frozenset({Direction.INGRESS, Direction.EGRESS})


def policy(spec: Any, name: str = "p", namespace: str | None = "x") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta, "spec": spec}


def parse_policy(spec: Any) -> NetworkPolicy:
    result = parse_object(policy(spec))
    assert isinstance(result, NetworkPolicy)
    return result


def pod(**fields: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "x"}}
    raw.update(fields)
    return raw


def test_namespace_labels() -> None:
    ns = parse_object({"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": "x", "labels": {"ns": "x", "kubernetes.io/metadata.name": "x"}}})
    assert ns == Namespace("x", {"ns": "x", "kubernetes.io/metadata.name": "x"})


@pytest.mark.parametrize(("meta", "field"), [
    ({}, "metadata.name"),
    ({"name": "Upper"}, "metadata.name"),
    ({"name": "x", "labels": {"a": 1}}, "metadata.labels[a]"),
    ({"name": "x", "labels": {"-bad": "v"}}, "metadata.labels"),
    ({"name": "x", "labels": ["a"]}, "metadata.labels"),
])
def test_bad_namespace_names_object_and_field(meta: dict[str, Any], field: str) -> None:
    with pytest.raises(ObjectError) as info:
        parse_object({"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
    assert field in str(info.value) and str(info.value).startswith("Namespace")


def test_pod_fields() -> None:
    got = parse_object(pod(
        metadata={"name": "a", "namespace": "x", "uid": "u1", "labels": {"pod": "a"}},
        spec={"nodeName": "n1", "containers": [
            {"name": "c", "ports": [{"name": "serve-80", "containerPort": 80},
                                    {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                    {"containerPort": 9000}]},
            {"name": "d", "ports": [{"name": "sctp", "containerPort": 81, "protocol": "SCTP"}]}]},
        status={"phase": "Running", "podIP": "10.0.0.5",
                "podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}]}))
    assert got.labels == {"pod": "a"} and got.uid == "u1" and got.node_name == "n1"
    assert got.ips == (ip_address("10.0.0.5"), ip_address("fd00::5"))
    assert got.ports == (ContainerPort("serve-80", 80), ContainerPort("dns", 53, Protocol.UDP),
                         ContainerPort("sctp", 81, Protocol.SCTP))
    assert not got.terminal and not got.host_network


def test_pod_ip_fallback_terminal_host_network_default_namespace() -> None:
    raw = pod(spec={"hostNetwork": True}, status={"phase": "Succeeded", "podIP": "192.0.2.1"})
    del raw["metadata"]["namespace"]
    got = parse_object(raw)
    assert got.namespace == "default" and got.ips == (ip_address("192.0.2.1"),)
    assert got.terminal and got.host_network
    assert parse_object(pod(status={"phase": "Failed"})).terminal
    assert parse_object(pod()).ips == ()


@pytest.mark.parametrize(("fields", "field"), [
    ({"status": {"podIP": "10.0.0.300"}}, "status.podIP"),
    ({"status": {"podIPs": [{"ip": 5}]}}, "status.podIPs[0].ip"),
    ({"spec": {"containers": [{"ports": [{"containerPort": 0}]}]}},
     "spec.containers[0].ports[0].containerPort"),
    ({"spec": {"containers": [{"ports": [{"containerPort": True}]}]}}, "containerPort"),
    ({"spec": {"containers": [{"ports": [{"containerPort": 80, "protocol": "tcp"}]}]}}, "protocol"),
    ({"spec": {"containers": [{"ports": [{"containerPort": 80, "name": "Web"}]}]}}, "ports[0].name"),
    ({"spec": {"hostNetwork": "yes"}}, "spec.hostNetwork"),
    ({"spec": []}, "spec"),
])
def test_bad_pod_names_object_and_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ObjectError) as info:
        parse_object(pod(**fields))
    assert str(info.value).startswith("Pod x/a:") and field in str(info.value)


def test_unsupported_kinds_and_expected_kind() -> None:
    with pytest.raises(UnsupportedKind):
        parse_object({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}})
    with pytest.raises(UnsupportedKind):
        parse_object({"apiVersion": "extensions/v1beta1", "kind": "NetworkPolicy"})
    with pytest.raises(UnsupportedKind):
        parse_object(pod(), expected=Kind.NAMESPACE)
    # API list items carry no apiVersion/kind: the expected kind supplies it.
    assert parse_object({"metadata": {"name": "y"}}, expected=Kind.NAMESPACE) == Namespace("y", {})
    with pytest.raises(ObjectError):
        parse_object(pod(metadata={"name": "a"}), default_namespace=None)


def test_policy_defaulting_upstream() -> None:
    assert parse_policy({"podSelector": {}}).directions == {Direction.INGRESS}
    # Egress is added only for a non-empty egress list (an empty one adds nothing).
    assert parse_policy({"podSelector": {}, "egress": []}).directions == {Direction.INGRESS}
    assert parse_policy({"podSelector": {}, "egress": [{}]}).directions == BOTH
    assert parse_policy({"podSelector": {}, "policyTypes": []}).directions == {Direction.INGRESS}
    assert parse_policy({"policyTypes": ["Egress"], "ingress": [{}]}).directions == {Direction.EGRESS}
    got = parse_policy({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress", "Egress"]})
    assert got.directions == BOTH and got.ingress == () and got.egress == () and got.error is None
    assert got.pod_selector == LabelSelector((("pod", "a"),))


def test_policy_full() -> None:
    got = parse_policy({
        "podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "b"]},
                                             {"key": "t", "operator": "DoesNotExist"}]},
        "ingress": [
            {"from": [{"podSelector": {"matchLabels": {"pod": "b"}},
                       "namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn",
                                                                   "values": ["y"]}]}},
                      {"namespaceSelector": {}},
                      {"ipBlock": {"cidr": "10.0.0.1/8", "except": ["10.1.0.0/16"]}}],
             "ports": [{"port": 80}, {"port": "serve-81", "protocol": "UDP"},
                       {"port": 1000, "endPort": 2000, "protocol": "SCTP"}, {"protocol": "UDP"}]},
            {}],
        "egress": [{"to": None, "ports": None}]})
    assert got.error is None and got.directions == BOTH
    assert got.pod_selector.requirements == (Requirement("pod", Operator.IN, frozenset({"a", "b"})),
                                             Requirement("t", Operator.DOES_NOT_EXIST))
    first = got.ingress[0]
    assert first.peers == (
        Peer(LabelSelector((("pod", "b"),)),
             LabelSelector((), (Requirement("ns", Operator.NOT_IN, frozenset({"y"})),))),
        Peer(namespace_selector=EVERYTHING),
        Peer(ip_block=IPBlock(ip_network("10.0.0.0/8"), (ip_network("10.1.0.0/16"),))))
    assert first.ports == (PolicyPort(Protocol.TCP, 80), PolicyPort(Protocol.UDP, "serve-81"),
                           PolicyPort(Protocol.SCTP, 1000, 2000), PolicyPort(Protocol.UDP))
    assert got.ingress[1] == Rule() and got.egress == (Rule(),)


@pytest.mark.parametrize(("spec", "field"), [
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
     "spec.podSelector.matchExpressions[0].values"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}},
     "spec.podSelector.matchExpressions[0].values"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}},
     "spec.podSelector.matchExpressions[0].operator"),
    ({"policyTypes": ["ingress"]}, "spec.policyTypes[0]"),
    ({"policyTypes": ["Ingress", "Ingress"]}, "spec.policyTypes[1]"),
    ({"ingress": [{"from": [{}]}]}, "spec.ingress[0].from[0]"),
    ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]},
     "spec.ingress[0].from[0]"),
    ({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]},
     "spec.egress[0].to[0].ipBlock.except[0]"),
    ({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]}}]}]},
     "spec.egress[0].to[0].ipBlock.except[0]"),
    ({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["fd00::/64"]}}]}]},
     "spec.egress[0].to[0].ipBlock.except[0]"),
    ({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0"}}]}]}, "spec.egress[0].to[0].ipBlock.cidr"),
    ({"egress": [{"to": [{"ipBlock": {"cidr": "nonsense/8"}}]}]}, "spec.egress[0].to[0].ipBlock.cidr"),
    ({"ingress": [{"ports": [{"port": 0}]}]}, "spec.ingress[0].ports[0].port"),
    ({"ingress": [{"ports": [{"port": 70000}]}]}, "spec.ingress[0].ports[0].port"),
    ({"ingress": [{"ports": [{"port": "80"}]}]}, "spec.ingress[0].ports[0].port"),
    ({"ingress": [{"ports": [{"port": "a--b"}]}]}, "spec.ingress[0].ports[0].port"),
    ({"ingress": [{"ports": [{"port": "web", "endPort": 90}]}]}, "spec.ingress[0].ports[0].endPort"),
    ({"ingress": [{"ports": [{"endPort": 90}]}]}, "spec.ingress[0].ports[0].endPort"),
    ({"ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}, "spec.ingress[0].ports[0].endPort"),
    ({"ingress": [{"ports": [{"port": 80, "protocol": "ICMP"}]}]}, "spec.ingress[0].ports[0].protocol"),
    ({"ingress": {"from": []}}, "spec.ingress"),
    ({"ingress": [{"ports": [80]}]}, "spec.ingress[0].ports[0]"),
])
def test_invalid_policy_fails_closed_with_the_field_named(spec: dict[str, Any], field: str) -> None:
    spec = {"podSelector": {"matchLabels": {"pod": "a"}}, **spec}
    got = parse_policy(spec)
    assert got.error is not None and got.error.startswith(field), got.error
    assert got.directions == BOTH and got.ingress == () and got.egress == ()
    if "podSelector" not in field:
        assert got.pod_selector == LabelSelector((("pod", "a"),))  # its own pods, isolated
    else:
        assert got.pod_selector == EVERYTHING  # unreadable selector: the whole namespace


def test_policy_without_spec_or_metadata() -> None:
    got = parse_object(policy(None))
    assert isinstance(got, NetworkPolicy) and got.error and got.pod_selector == EVERYTHING
    with pytest.raises(ObjectError, match=r"NetworkPolicy.*metadata\.name"):
        parse_object({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {}})
    assert parse_object(policy({}, namespace=None)).key == ("default", "p")


def test_failed_policy_keeps_selector() -> None:
    got = failed_policy(policy({"podSelector": {"matchLabels": {"a": "b"}}, "bogus": 1}), "schema: bogus")
    assert got.error == "schema: bogus" and got.pod_selector == LabelSelector((("a", "b"),))
    assert got.directions == BOTH


json_leaf = st.none() | st.booleans() | st.integers(-5, 70000) | st.sampled_from(
    ["", "a", "x", "In", "NotIn", "Exists", "TCP", "UDP", "SCTP", "Ingress", "Egress", "10.0.0.0/8",
     "10.1.0.0/16", "fd00::/64", "10.0.0.5", "web", "-", "A_B"])
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["name", "namespace", "labels", "podSelector", "namespaceSelector", "ipBlock", "cidr",
                     "except", "matchLabels", "matchExpressions", "key", "operator", "values", "ingress",
                     "egress", "from", "to", "ports", "port", "endPort", "protocol", "policyTypes",
                     "containers", "containerPort", "podIPs", "podIP", "ip", "phase", "nodeName",
                     "hostNetwork", "a"]), inner, max_size=4), max_leaves=25)


@settings(max_examples=400, deadline=None)
@given(kind=st.sampled_from(list(Kind)), metadata=json_value, spec=json_value, status=json_value)
def test_fuzz_never_a_traceback(kind: Kind, metadata: Any, spec: Any, status: Any) -> None:
    raw = {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": metadata, "spec": spec,
           "status": status}
    try:
        got = parse_object(raw)
    except ObjectError as exc:
        assert str(exc)
        return
    if isinstance(got, NetworkPolicy) and got.error is not None:
        assert got.error.startswith("spec") and got.directions == BOTH


@settings(max_examples=200, deadline=None)
@given(raw=json_value)
def test_fuzz_any_top_level_value(raw: Any) -> None:
    try:
        parse_object(raw)
    except ObjectError as exc:
        assert str(exc)
