"""agent.objects for Services and EndpointSlices: raw dicts -> model values, with the API server's
validation and defaulting. An invalid Service is kept with ``error`` set (reported, not proxied);
an invalid EndpointSlice is an ObjectError naming the object and the field."""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podnet.agent.model import (
    Endpoint,
    EndpointPort,
    EndpointSlice,
    Protocol,
    Service,
    ServicePort,
    ServiceType,
    TrafficPolicy,
)
from podnet.agent.objects import Kind, ObjectError, failed_object, key_of, kind_of, parse_object


def service(spec: Any, name: str = "web", namespace: str = "x") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": spec}


def parse_service(spec: Any) -> Service:
    got = parse_object(service(spec))
    assert isinstance(got, Service)
    return got


def endpoint_slice(*, address_type: Any = "IPv4", endpoints: Any = (), ports: Any = (),
                   labels: Any = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "web-abc", "namespace": "x",
                            "labels": {"kubernetes.io/service-name": "web"} if labels is None else labels}
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": meta,
            "addressType": address_type, "endpoints": list(endpoints), "ports": list(ports)}


def parse_slice(**fields: Any) -> EndpointSlice:
    got = parse_object(endpoint_slice(**fields))
    assert isinstance(got, EndpointSlice)
    return got


# ---- Service ----------------------------------------------------------------------------------

TIMEOUT = "spec.sessionAffinityConfig.clientIP.timeoutSeconds"


def test_cluster_ip_service_defaults() -> None:
    got = parse_service({"clusterIP": "10.96.0.10", "ports": [{"port": 53, "protocol": "UDP"}]})
    assert got == Service("x", "web", ServiceType.CLUSTER_IP, (ip_address("10.96.0.10"),),
                          ports=(ServicePort("", 53, Protocol.UDP, None, 53),), ip_families=("IPv4",))
    assert got.proxied and got.key == ("x", "web") and kind_of(got) is Kind.SERVICE
    assert key_of(got) == ("x", "web")
    assert got.session_affinity_seconds is None
    assert got.external_traffic_policy is TrafficPolicy.CLUSTER
    assert got.internal_traffic_policy is TrafficPolicy.CLUSTER


def test_every_field() -> None:
    got = parse_service({
        "type": "NodePort", "clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1", "fd00::1"],
        "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack",
        "externalIPs": ["192.0.2.7", "2001:db8::7", "192.0.2.7"],
        "ports": [{"name": "http", "port": 80, "targetPort": "web", "nodePort": 30080},
                  {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353, "nodePort": 30053},
                  {"name": "assoc", "port": 9, "protocol": "SCTP"}],
        "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
        "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Local"})
    assert got.error is None and got.type is ServiceType.NODE_PORT
    assert got.cluster_ips == (ip_address("10.96.0.1"), ip_address("fd00::1"))
    assert got.ip_families == ("IPv4", "IPv6")
    assert got.external_ips == (ip_address("192.0.2.7"), ip_address("2001:db8::7"))
    assert got.ports == (ServicePort("http", 80, Protocol.TCP, 30080, "web"),
                         ServicePort("dns", 53, Protocol.UDP, 30053, 5353),
                         ServicePort("assoc", 9, Protocol.SCTP, None, 9))
    assert got.session_affinity_seconds == 60
    # Upstream defaulting reads targetPort 0 or "" as unset, and nodePort 0 as not allocated.
    zeros = parse_service({"ports": [{"name": "a", "port": 81, "targetPort": 0, "nodePort": 0},
                                     {"name": "b", "port": 82, "targetPort": ""}]})
    assert zeros.error is None
    assert [(p.target_port, p.node_port) for p in zeros.ports] == [(81, None), (82, None)]
    assert got.external_traffic_policy is TrafficPolicy.LOCAL
    assert got.internal_traffic_policy is TrafficPolicy.LOCAL


def test_legacy_leading_zero_addresses_read_as_decimal() -> None:
    # What Kubernetes' own sloppy parser does with values stored before it became strict.
    got = parse_service({"clusterIP": "010.096.000.010", "externalIPs": ["192.000.002.001"],
                         "ports": [{"port": 80}]})
    assert got.cluster_ips == (ip_address("10.96.0.10"),) and got.external_ips == (ip_address("192.0.2.1"),)
    for bad in ("010.096.000.256", "1.2.3", "1.2.3.0004", "\uff11.2.3.4"):
        error = parse_service({"clusterIP": bad, "ports": [{"port": 80}]}).error
        assert error is not None and error.startswith("spec.clusterIPs[0]")


def test_affinity_timeout_defaults_to_three_hours() -> None:
    got = parse_service({"clusterIP": "10.96.0.2", "ports": [{"port": 80}], "sessionAffinity": "ClientIP"})
    assert got.session_affinity_seconds == 10800
    got = parse_service({"clusterIP": "10.96.0.2", "ports": [{"port": 80}], "sessionAffinity": "ClientIP",
                         "sessionAffinityConfig": {"clientIP": {}}})
    assert got.session_affinity_seconds == 10800
    got = parse_service({"ports": [{"port": 80}], "sessionAffinity": "None"})
    assert got.session_affinity_seconds is None


def test_headless_external_name_and_unallocated() -> None:
    headless = parse_service({"clusterIP": "None", "clusterIPs": ["None"]})
    assert headless.headless and headless.cluster_ips == () and headless.error is None
    assert not headless.proxied
    name = parse_service({"type": "ExternalName", "externalName": "db.example.com"})
    assert name.type is ServiceType.EXTERNAL_NAME and not name.proxied and name.error is None
    # A manifest with no cluster IP allocated: not headless, but skipped as kube-proxy skips it.
    bare = parse_service({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30001}]})
    assert bare.cluster_ips == () and not bare.headless and bare.error is None and not bare.proxied
    assert bare.ports[0].node_port == 30001
    assert parse_service({"type": "LoadBalancer", "ports": [{"port": 80}],
                          "externalTrafficPolicy": "Local"}).external_traffic_policy is TrafficPolicy.LOCAL
    # ExternalIPs make a ClusterIP service externally accessible: its externalTrafficPolicy counts.
    ext = parse_service({"ports": [{"port": 80}], "externalIPs": ["192.0.2.1"],
                         "externalTrafficPolicy": "Local"})
    assert ext.error is None and ext.external_traffic_policy is TrafficPolicy.LOCAL


@pytest.mark.parametrize(("spec", "field"), [
    ({"type": "Magic", "ports": [{"port": 80}]}, "spec.type"),
    ({"clusterIP": "10.96.0.300", "ports": [{"port": 80}]}, "spec.clusterIPs[0]"),
    ({"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.2"], "ports": [{"port": 80}]}, "spec.clusterIPs[0]"),
    ({"clusterIPs": ["10.96.0.1", "10.96.0.2"], "ports": [{"port": 80}]}, "spec.clusterIPs"),
    ({"clusterIPs": ["10.96.0.1", "fd00::1", "fd00::2"], "ports": [{"port": 80}]}, "spec.clusterIPs"),
    ({"clusterIPs": ["None", "10.96.0.1"]}, "spec.clusterIPs"),
    ({"type": "NodePort", "clusterIP": "None", "ports": [{"port": 80}]}, "spec.clusterIP"),
    ({"type": "ExternalName", "clusterIP": "10.96.0.1", "externalName": "a.b"}, "spec.clusterIP"),
    ({"clusterIP": 5, "ports": [{"port": 80}]}, "spec.clusterIP"),
    ({"clusterIP": "10.96.0.1"}, "spec.ports"),
    ({"ports": [{"port": 0}]}, "spec.ports[0].port"),
    ({"ports": [{"port": "80"}]}, "spec.ports[0].port"),
    ({"ports": [{"port": 80, "protocol": "tcp"}]}, "spec.ports[0].protocol"),
    ({"ports": [{"port": 80, "targetPort": "8080"}]}, "spec.ports[0].targetPort"),
    ({"ports": [{"port": 80, "targetPort": 70000}]}, "spec.ports[0].targetPort"),
    ({"ports": [{"port": 80, "targetPort": False}]}, "spec.ports[0].targetPort"),
    ({"type": "NodePort", "ports": [{"port": 80, "nodePort": False}]}, "spec.ports[0].nodePort"),
    ({"ports": [{"port": 80, "nodePort": 30000}]}, "spec.ports[0].nodePort"),
    ({"ports": [{"name": "a", "port": 80}, {"port": 81}]}, "spec.ports[1].name"),
    ({"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]}, "spec.ports[1].name"),
    ({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]}, "spec.ports[1]"),
    ({"type": "NodePort", "ports": [{"name": "a", "port": 80, "nodePort": 30000},
                                    {"name": "b", "port": 81, "nodePort": 30000}]}, "spec.ports[1].nodePort"),
    ({"ports": [{"name": "Upper", "port": 80}]}, "spec.ports[0].name"),
    ({"ports": [{"port": 80}], "externalIPs": ["nope"]}, "spec.externalIPs[0]"),
    ({"ports": [{"port": 80}], "sessionAffinity": "Sticky"}, "spec.sessionAffinity"),
    ({"ports": [{"port": 80}], "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 5}}},
     "spec.sessionAffinityConfig"),
    ({"ports": [{"port": 80}], "sessionAffinity": "ClientIP",
      "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}}, TIMEOUT),
    ({"ports": [{"port": 80}], "sessionAffinity": "ClientIP",
      "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}}}, TIMEOUT),
    ({"ports": [{"port": 80}], "sessionAffinity": "ClientIP",
      "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": True}}}, TIMEOUT),
    ({"ports": [{"port": 80}], "externalTrafficPolicy": "Local"}, "spec.externalTrafficPolicy"),
    ({"type": "NodePort", "ports": [{"port": 80}], "externalTrafficPolicy": "Global"},
     "spec.externalTrafficPolicy"),
    ({"ports": [{"port": 80}], "internalTrafficPolicy": "local"}, "spec.internalTrafficPolicy"),
    ({"clusterIP": "10.96.0.1", "ipFamilies": ["IPv6"], "ports": [{"port": 80}]}, "spec.ipFamilies[0]"),
    ({"ipFamilies": ["IPv4", "IPv4"], "ports": [{"port": 80}]}, "spec.ipFamilies[1]"),
    ({"ipFamilies": ["IPv5"], "ports": [{"port": 80}]}, "spec.ipFamilies[0]"),
    ([], "spec"),
])
def test_invalid_service_is_kept_with_its_error(spec: Any, field: str) -> None:
    got = parse_service(spec)
    assert got.error is not None and got.error.startswith(field), got.error
    assert not got.proxied and got.ports == () and got.cluster_ips == ()


def test_service_without_a_readable_name_is_an_error() -> None:
    with pytest.raises(ObjectError, match=r"^Service \(unnamed\): metadata\.name"):
        parse_object({"apiVersion": "v1", "kind": "Service", "metadata": {}, "spec": {}})
    # Service names are DNS labels (they become DNS names): no dots.
    with pytest.raises(ObjectError, match=r"metadata\.name"):
        parse_object(service({"ports": [{"port": 80}]}, name="a.b"))


def test_schema_failure_stand_in() -> None:
    raw = service({"ports": [{"port": 80}], "bogus": 1})
    got = failed_object(Kind.SERVICE, raw, "spec.bogus: unknown field")
    assert got == Service("x", "web", error="spec.bogus: unknown field")
    assert failed_object(Kind.POD, raw, "whatever") is None
    with pytest.raises(ObjectError, match=r"metadata\.name"):
        failed_object(Kind.SERVICE, {"metadata": {"name": ""}}, "bad")


# ---- EndpointSlice ----------------------------------------------------------------------------


def test_slice_fields_and_condition_defaults() -> None:
    got = parse_slice(endpoints=[
        {"addresses": ["10.0.0.1"], "nodeName": "n1"},  # no conditions: ready, serving, not terminating
        {"addresses": ["10.0.0.2", "10.0.0.2"], "conditions": {"ready": False}},
        {"addresses": ["10.0.0.3"], "conditions": {"ready": False, "serving": True, "terminating": True}},
        {"addresses": ["10.0.0.4"], "conditions": {"ready": False, "terminating": True}},
        {"addresses": ["10.0.0.5"], "conditions": {"ready": None, "serving": False, "terminating": None}},
    ], ports=[{"name": "http", "port": 8080}, {"name": "dns", "port": 53, "protocol": "UDP"},
              {"name": "any"}])
    assert got.key == ("x", "web-abc") and got.service == "web" and got.address_type == "IPv4"
    assert kind_of(got) is Kind.ENDPOINT_SLICE
    ip = ip_address
    assert got.endpoints == (
        Endpoint((ip("10.0.0.1"),), True, True, False, "n1"),
        Endpoint((ip("10.0.0.2"),), False, True, False),
        Endpoint((ip("10.0.0.3"),), False, True, True),
        # serving absent reads true (the API's documented default and kube-proxy's reading)
        Endpoint((ip("10.0.0.4"),), False, True, True),
        Endpoint((ip("10.0.0.5"),), True, False, False))
    # A port with no number restricts nothing and names nothing to forward to: dropped.
    assert got.ports == (EndpointPort("http", 8080), EndpointPort("dns", 53, Protocol.UDP))


def test_ipv6_fqdn_and_unlabelled_slices() -> None:
    v6 = parse_slice(address_type="IPv6", endpoints=[{"addresses": ["fd00::5"]}], ports=[{"port": 80}])
    assert v6.endpoints[0].addresses == (ip_address("fd00::5"),) and v6.ports == (EndpointPort("", 80),)
    fqdn = parse_slice(address_type="FQDN", endpoints=[{"addresses": ["db.example.com"]}])
    assert fqdn.address_type == "FQDN" and fqdn.endpoints == ()
    assert parse_slice(labels={"app": "x"}).service == ""
    assert parse_slice(endpoints=[]).endpoints == ()


@pytest.mark.parametrize(("fields", "field"), [
    ({"address_type": None}, "addressType"),
    ({"address_type": "IPv5"}, "addressType"),
    ({"endpoints": [{"addresses": []}]}, "endpoints[0].addresses"),
    ({"endpoints": [{}]}, "endpoints[0].addresses"),
    ({"endpoints": [{"addresses": ["10.0.0.1"] * 101}]}, "endpoints[0].addresses"),
    ({"endpoints": [{"addresses": ["fd00::1"]}]}, "endpoints[0].addresses[0]"),
    ({"address_type": "IPv6", "endpoints": [{"addresses": ["10.0.0.1"]}]}, "endpoints[0].addresses[0]"),
    ({"endpoints": [{"addresses": ["10.0.0.999"]}]}, "endpoints[0].addresses[0]"),
    ({"endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": "yes"}}]},
     "endpoints[0].conditions.ready"),
    ({"endpoints": [{"addresses": ["10.0.0.1"], "conditions": []}]}, "endpoints[0].conditions"),
    ({"endpoints": [{"addresses": ["10.0.0.1"], "nodeName": 3}]}, "endpoints[0].nodeName"),
    ({"endpoints": ["10.0.0.1"]}, "endpoints[0]"),
    ({"ports": [{"port": 0}]}, "ports[0].port"),
    ({"ports": [{"port": 80, "protocol": "ICMP"}]}, "ports[0].protocol"),
    ({"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]}, "ports[1].name"),
    ({"ports": [{"name": "A", "port": 80}]}, "ports[0].name"),
    ({"labels": {"kubernetes.io/service-name": 7}}, "metadata.labels"),
])
def test_bad_slice_names_object_and_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ObjectError) as info:
        parse_object(endpoint_slice(**fields))
    assert str(info.value).startswith("EndpointSlice x/web-abc:") and field in str(info.value), info.value


# ---- fuzz: never a traceback ------------------------------------------------------------------

leaf = st.none() | st.booleans() | st.integers(-2, 70000) | st.sampled_from(
    ["", "None", "ClientIP", "Local", "Cluster", "NodePort", "ExternalName", "LoadBalancer", "IPv4", "IPv6",
     "FQDN", "TCP", "UDP", "SCTP", "10.96.0.1", "fd00::1", "http", "web", "a.b", "10.0.0.0/8"])
value = st.recursive(leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["type", "clusterIP", "clusterIPs", "externalIPs", "ports", "name", "port", "protocol",
                     "nodePort", "targetPort", "sessionAffinity", "sessionAffinityConfig", "clientIP",
                     "timeoutSeconds", "externalTrafficPolicy", "internalTrafficPolicy", "ipFamilies",
                     "addresses", "conditions", "ready", "serving", "terminating", "nodeName", "labels",
                     "kubernetes.io/service-name", "namespace"]), inner, max_size=4), max_leaves=25)


@settings(max_examples=100, deadline=None)
@given(metadata=value, spec=value)
def test_fuzz_service(metadata: Any, spec: Any) -> None:
    raw = {"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": spec}
    try:
        got = parse_object(raw)
    except ObjectError as exc:
        assert str(exc).startswith("Service ")
        return
    assert isinstance(got, Service)
    if got.error is not None:
        assert got.error.startswith("spec") and not got.proxied


@settings(max_examples=100, deadline=None)
@given(metadata=value, address_type=value, endpoints=value, ports=value)
def test_fuzz_endpoint_slice(metadata: Any, address_type: Any, endpoints: Any, ports: Any) -> None:
    raw = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": metadata,
           "addressType": address_type, "endpoints": endpoints, "ports": ports}
    try:
        got = parse_object(raw)
    except ObjectError as exc:
        assert str(exc).startswith("EndpointSlice ")
        return
    assert isinstance(got, EndpointSlice)
