"""sources.schemas compiles each kind's validator once; it must judge every object exactly as
kubernetes-validate's own validate() does (strict, at the pinned version)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
from hypothesis import given, settings
from hypothesis import strategies as st

from podnet.agent.sources.schemas import KUBERNETES_VERSION, schema_error

KINDS = [("v1", "Pod"), ("v1", "Namespace"), ("networking.k8s.io/v1", "NetworkPolicy"), ("v1", "Service"),
         ("discovery.k8s.io/v1", "EndpointSlice"), ("v1", "Node")]
values = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 70000)
    | st.sampled_from(["", "a", "TCP", "10.0.0.0/8", "In"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(
        ["podSelector", "ingress", "egress", "from", "ports", "port", "protocol", "containers", "name",
         "image", "containerPort", "matchLabels", "ipBlock", "cidr", "policyTypes", "clusterIP", "targetPort",
         "podCIDR", "podCIDRs", "bogus"]),
        inner, max_size=3),
    max_leaves=12)


def reference(raw: dict[str, Any]) -> str | None:
    try:
        kubernetes_validate.validate(raw, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return ".".join(str(p) for p in exc.absolute_path) or "(object)"
    return None


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(KINDS), spec=values)
def test_same_verdict_and_field_as_kubernetes_validate(kind: tuple[str, str], spec: Any) -> None:
    raw = {"apiVersion": kind[0], "kind": kind[1], "metadata": {"name": "a", "namespace": "x"}, "spec": spec}
    if kind[1] == "EndpointSlice":  # no spec: its fields are at the top
        del raw["spec"]
        raw.update(addressType="IPv4", ports=spec)
    ours, theirs = schema_error(raw), reference(raw)
    assert (ours is None) == (theirs is None), (ours, theirs)
    if ours is not None:
        assert ours.startswith(f"{theirs}: ")


def test_known_cases() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"},
           "spec": {"containers": [{"name": "c", "ports": [{"containerPort": "x"}]}]}}
    assert schema_error(pod) == "spec.containers.0.ports.0.containerPort: 'x' is not of type 'integer'"
    pod["spec"]["containers"][0]["ports"][0]["containerPort"] = 80
    assert schema_error(pod) is None
    assert "no schema" in (schema_error({"apiVersion": "v9", "kind": "Nothing"}) or "")
