"""The service compiler's output as data: structure, endpoint picking, traffic policies, affinity,
no-endpoint verdicts, masquerade, scale (rules do not grow with services) and stable names."""

from __future__ import annotations

import dataclasses
import random
import re
from ipaddress import ip_network

import pytest

from podnet.agent.model import EndpointPort, Protocol, ServicePort, ServiceType, TrafficPolicy
from podnet.agent.services import (
    EndpointKey,
    ServiceCompiler,
    affected_endpoints,
    compile,
    programmed_endpoints,
    service_ips_set,
)
from podnet.agent.services.names import FAMILIES, endpoint_chain, service_chain, slot_map
from podnet.dataplane.contribution import Contribution
from podnet.dataplane.writer import TableWriter
from podnet.kernel.nft import FakeNft

from .world import NODE, endpoint, ip, many, service, slice_, tcp, udp

FIXED = {"services-prerouting", "services-output", "services-postrouting", "services-filter-prerouting",
         "services-filter-output", "services-dispatch", "services-no-endpoints", "services-mark-masq",
         "services-reject"}
KEY = ("default", "web")


def chains(c: Contribution) -> dict[str, tuple[str, ...]]:
    return {ch.name: ch.rules for ch in c.chains}


def svc_chain(port: str = "http", family: int = 4, protocol: Protocol = Protocol.TCP) -> str:
    return service_chain(KEY, port, protocol, family)


def listed(c: Contribution, key: str = "10.96.0.10 . tcp . 80", *, family: int = 4, nodeport: bool = False,
           local: bool = False) -> list[str]:
    """The endpoints (``address:port``) the slot maps give ``key``, in slot order."""
    out = []
    for i in range(10_000):
        found = c.elements.get(slot_map(family, i, nodeport=nodeport, local=local), {})
        if key not in found:
            break
        address, port = str(found[key]).split(" . ")
        out.append(f"{address}:{port}")
    return out


def pick_rule(count: int, family: int = 4, kind: str = "eps") -> str:
    slots = [f"services-{family}-{kind}-{i}" for i in range(count)]
    if count == 1:
        return f"goto {slots[0]}"
    picks = ", ".join(f"{i} : goto {c}" for i, c in enumerate(slots))
    return f"numgen random mod {count} vmap {{ {picks} }}"


def ep(address: str, port: int = 8080, name: str = "http") -> str:
    return endpoint_chain(KEY, name, Protocol.TCP, address, port)


def web(*endpoints, **kw) -> Contribution:  # type: ignore[no-untyped-def]
    pod_cidrs = kw.pop("pod_cidrs", ())
    svc = service("web", "10.96.0.10", *kw.pop("ports", ()), **kw)
    return compile([svc], [slice_("web", *endpoints)], node_name=NODE, pod_cidrs=pod_cidrs)


# ---- structure ----

def test_fixed_chains_hooks_and_maps() -> None:
    c = web(endpoint("10.244.0.2"))
    by_name = {ch.name: ch for ch in c.chains}
    assert set(by_name) >= FIXED
    hooks = {n: (ch.type, ch.hook, ch.priority) for n, ch in by_name.items() if ch.hook}
    assert hooks == {"services-prerouting": ("nat", "prerouting", -100),
                     "services-output": ("nat", "output", -100),
                     "services-postrouting": ("nat", "postrouting", 100),
                     "services-filter-prerouting": ("filter", "prerouting", -110),
                     "services-filter-output": ("filter", "output", -110)}
    assert by_name["services-dispatch"].rules[0] == "ip daddr . meta l4proto . th dport vmap @svc-ips4"
    assert "fib daddr type local" in by_name["services-dispatch"].rules[1]
    sets = {s.name: s for s in c.sets}
    assert sets["svc-ips4"].type == ("ipv4_addr", "inet_proto", "inet_service")
    assert sets["svc-ips4"].value_type == "verdict"
    assert sets["service-ips6"] == service_ips_set(6)
    assert c.elements["svc-ips4"] == {"10.96.0.10 . tcp . 80": "goto services-4-cluster-1"}
    assert chains(c)["services-4-cluster-1"] == ("goto services-4-eps-0",)
    assert chains(c)["services-4-eps-0"] == (
        "meta l4proto { tcp, udp, sctp } dnat ip to ip daddr . meta l4proto . th dport map @svc-eps4-0",)
    assert c.elements["svc-eps4-0"] == {"10.96.0.10 . tcp . 80": "10.244.0.2 . 8080"}
    assert c.elements["svc-hairpin4"] == {"10.244.0.2 . 10.244.0.2": None}
    # No chain of its own for a service or an endpoint without affinity.
    assert not [n for n in by_name if n.startswith(("ep-", "svc-"))]


def test_node_ports_on_given_addresses_only() -> None:
    svc = service("web", "10.96.0.10", tcp("http", 80, 30080), type=ServiceType.NODE_PORT)
    c = compile([svc], [slice_("web", endpoint("10.244.0.2"))], node_name=NODE,
                node_ips=(service("x", "192.168.1.5").cluster_ips[0],))
    assert c.elements["svc-node-ips4"] == {"192.168.1.5": None}
    assert chains(c)["services-dispatch"][1] == (
        "ip daddr @svc-node-ips4 meta l4proto . th dport vmap @svc-nodeports4")
    assert c.elements["svc-nodeports4"] == {"tcp . 30080": "goto services-4-nodeport-1"}
    assert listed(c, "tcp . 30080", nodeport=True) == ["10.244.0.2:8080"]
    assert chains(c)["services-4-np-eps-0"] == (
        "meta l4proto { tcp, udp, sctp } dnat ip to meta l4proto . th dport map @svc-np-eps4-0",)


def test_every_rule_uses_protocol_independent_forms() -> None:
    svc = service("web", "10.96.0.10", ServicePort("s", 9, Protocol.SCTP, 30009), type=ServiceType.NODE_PORT)
    c = compile([svc], [slice_("web", endpoint("10.244.0.2"), ports=(EndpointPort("s", 9, Protocol.SCTP),))],
                node_name=NODE)
    rules = [r for ch in c.chains for r in ch.rules]
    assert not [r for r in rules if re.search(r"\b(tcp|udp|sctp) (dport|sport)", r)]
    assert c.elements["svc-nodeports4"] == {"sctp . 30009": "goto services-4-nodeport-1"}
    assert listed(c, "sctp . 30009", nodeport=True) == ["10.244.0.2:9"]
    assert listed(c, "10.96.0.10 . sctp . 9") == ["10.244.0.2:9"]


def test_ipv6_slice_and_address_form() -> None:
    svc = service("web", ("10.96.0.10", "fd00:96::10"))
    slices = [slice_("web", endpoint("10.244.0.2")), slice_("web", endpoint("fd00:244::2"), family=6)]
    c = compile([svc], slices, node_name=NODE)
    assert c.elements["svc-ips6"] == {"fd00:96::10 . tcp . 80": "goto services-6-cluster-1"}
    assert listed(c, "fd00:96::10 . tcp . 80", family=6) == ["fd00:244::2:8080"]
    assert chains(c)["services-6-eps-0"] == (
        "meta l4proto { tcp, udp, sctp } dnat ip6 to ip6 daddr . meta l4proto . th dport map @svc-eps6-0",)
    assert c.elements["svc-hairpin6"] == {"fd00:244::2 . fd00:244::2": None}
    assert c.elements["service-ips6"] == {"fd00:96::10": None}


def test_not_proxied_services() -> None:
    headless = service("h", ())
    broken = dataclasses.replace(service("b", "10.96.0.2"), error="bad port")
    external_name = service("e", "10.96.0.3", type=ServiceType.EXTERNAL_NAME)
    marked_headless = dataclasses.replace(service("h", "10.96.0.4"), headless=True)
    c = compile([headless, broken, external_name, marked_headless], [slice_("h", endpoint("10.244.0.2"))],
                node_name=NODE)
    assert not [ch for ch in c.chains if re.match(r"svc-|ep-|services-\d-", ch.name)]
    assert all(not c.elements[f"svc-ips{f}"] and not c.elements[f"service-ips{f}"] for f in FAMILIES)


# ---- endpoint picking ----

def test_ready_endpoints_only_when_some_are_ready() -> None:
    c = web(endpoint("10.244.0.2"), endpoint("10.244.0.3", ready=False, serving=True, terminating=True),
            endpoint("10.244.0.4", ready=False))
    assert listed(c) == ["10.244.0.2:8080"]


def test_serving_terminating_when_none_ready() -> None:
    c = web(endpoint("10.244.0.3", ready=False, serving=True, terminating=True),
            endpoint("10.244.0.4", ready=False, serving=True, terminating=True),
            endpoint("10.244.0.5", ready=False, serving=False, terminating=True))
    assert c.elements["svc-ips4"] == {"10.96.0.10 . tcp . 80": "goto services-4-cluster-2"}
    assert chains(c)["services-4-cluster-2"] == (pick_rule(2),)
    assert listed(c) == ["10.244.0.3:8080", "10.244.0.4:8080"]


def test_no_usable_endpoint_is_rejected() -> None:
    c = web(endpoint("10.244.0.4", ready=False), endpoint("10.244.0.5", ready=False, serving=False,
                                                            terminating=True))
    assert not [n for n in chains(c) if n.startswith("services-4-")]
    assert c.elements["svc-ips4"] == {}
    assert c.elements["svc-no-endpoints4"] == {"10.96.0.10 . tcp . 80": "goto services-reject"}
    assert chains(c)["services-reject"] == ("meta l4proto tcp reject with tcp reset",
                                            "reject with icmpx port-unreachable")
    assert c.elements["service-ips4"] == {"10.96.0.10": None}  # still a VIP


def test_endpoints_deduplicated_and_matched_by_port_name_and_protocol() -> None:
    svc = service("web", "10.96.0.10", tcp("http", 80), udp("http", 80))
    slices = [slice_("web", endpoint("10.244.0.2"), name="a"),
              slice_("web", endpoint("10.244.0.2"), endpoint("10.244.0.3"), name="b"),
              slice_("web", endpoint("10.244.0.9"), name="c", ports=(EndpointPort("other", 1),)),
              slice_("web", endpoint("10.244.0.7"), name="d",
                     ports=(EndpointPort("http", 53, Protocol.UDP),)),
              slice_("other", endpoint("10.244.0.8"), name="e")]
    c = compile([svc], slices, node_name=NODE)
    assert listed(c) == ["10.244.0.2:8080", "10.244.0.3:8080"]
    assert listed(c, "10.96.0.10 . udp . 80") == ["10.244.0.7:53"]


def test_numgen_indexes_every_endpoint_once() -> None:
    c = web(*(endpoint(f"10.244.0.{i}") for i in range(2, 12)))
    (rule,) = chains(c)["services-4-cluster-10"]
    assert rule == pick_rule(10)
    assert [(int(a), int(b)) for a, b in re.findall(r"(\d+) : goto services-4-eps-(\d+)", rule)] == [
        (i, i) for i in range(10)]
    assert len(set(listed(c))) == 10


# ---- traffic policies ----

def test_internal_local_uses_only_this_nodes_endpoints() -> None:
    c = web(endpoint("10.244.0.2"), endpoint("10.244.1.2", "node-2"), itp=TrafficPolicy.LOCAL)
    assert c.elements["svc-ips4"] == {"10.96.0.10 . tcp . 80": "goto services-4-cluster-1"}
    assert listed(c) == ["10.244.0.2:8080"]


def test_internal_local_without_local_endpoints_drops() -> None:
    c = web(endpoint("10.244.1.2", "node-2"), itp=TrafficPolicy.LOCAL)
    assert c.elements["svc-no-endpoints4"] == {"10.96.0.10 . tcp . 80": "drop"}
    assert not c.elements["svc-ips4"]


def test_local_prefers_local_terminating_over_nothing() -> None:
    c = web(endpoint("10.244.1.2", "node-2"),
            endpoint("10.244.0.3", ready=False, serving=True, terminating=True), itp=TrafficPolicy.LOCAL)
    assert listed(c) == ["10.244.0.3:8080"]


def test_external_cluster_masquerades_outside_pod_ranges() -> None:
    c = web(endpoint("10.244.0.2"), endpoint("10.244.1.2", "node-2"), type=ServiceType.NODE_PORT,
            ports=(tcp("http", 80, 30080),), external_ips=("192.0.2.10",),
            pod_cidrs=(ip_network("10.244.0.0/16"),))
    assert c.elements["svc-ips4"]["192.0.2.10 . tcp . 80"] == "goto services-4-external-2"
    masq = "ip saddr != @svc-pod-cidrs4 jump services-mark-masq"
    assert chains(c)["services-4-external-2"] == (masq, pick_rule(2))
    assert chains(c)["services-4-nodeport-2"] == (masq, pick_rule(2, kind="np-eps"))
    assert listed(c, "192.0.2.10 . tcp . 80") == listed(c) == ["10.244.0.2:8080", "10.244.1.2:8080"]
    assert c.elements["svc-pod-cidrs4"] == {"10.244.0.0/16": None}
    # ClusterIP from outside the pod ranges (the node itself) is masqueraded too.
    assert chains(c)["services-4-cluster-2"] == (masq, pick_rule(2))


def test_no_cluster_ip_masquerade_without_pod_ranges() -> None:
    c = web(endpoint("10.244.0.2"))
    assert chains(c)["services-4-cluster-1"] == (pick_rule(1),)


def test_external_local_keeps_client_address() -> None:
    c = web(endpoint("10.244.0.2"), endpoint("10.244.1.2", "node-2"), type=ServiceType.NODE_PORT,
            ports=(tcp("http", 80, 30080),), etp=TrafficPolicy.LOCAL)
    assert c.elements["svc-nodeports4"] == {"tcp . 30080": "goto services-4-nodeport-2-local-1"}
    cluster = pick_rule(2, kind="np-eps")
    assert chains(c)["services-4-nodeport-2-local-1"] == (
        f"ip saddr @svc-pod-cidrs4 {cluster}", "fib saddr type local jump services-mark-masq",
        f"fib saddr type local {cluster}", "goto services-4-np-eps-local-0")
    assert listed(c, "tcp . 30080", nodeport=True, local=True) == ["10.244.0.2:8080"]
    assert len(listed(c, "tcp . 30080", nodeport=True)) == 2
    assert len(listed(c)) == 2  # ClusterIP still uses every endpoint


def test_external_local_without_local_endpoints_drops_external_keys_only() -> None:
    c = web(endpoint("10.244.1.2", "node-2"), type=ServiceType.LOAD_BALANCER, ports=(tcp("http", 80, 30080),),
            external_ips=("192.0.2.10",), etp=TrafficPolicy.LOCAL)
    assert c.elements["svc-ips4"] == {"10.96.0.10 . tcp . 80": "goto services-4-cluster-1"}
    assert c.elements["svc-no-endpoints4"] == {"192.0.2.10 . tcp . 80": "drop"}
    assert c.elements["svc-no-endpoint-nodeports4"] == {"tcp . 30080": "drop"}


# ---- affinity ----

def test_client_ip_affinity() -> None:
    c = web(endpoint("10.244.0.2"), endpoint("10.244.0.3"), affinity=600)
    rules = chains(c)[svc_chain()]
    a, b = ep("10.244.0.2"), ep("10.244.0.3")
    assert rules[:2] == (f"ip saddr @{a}-aff goto {a}", f"ip saddr @{b}-aff goto {b}")
    assert rules[2] == f"numgen random mod 2 vmap {{ 0 : goto {a}, 1 : goto {b} }}"
    assert chains(c)[a] == (f"update @{a}-aff {{ ip saddr timeout 600s }}",
                            "meta l4proto tcp dnat ip to 10.244.0.2:8080")
    sets = {s.name: s for s in c.sets}
    assert sets[f"{a}-aff"].flags == ("dynamic", "timeout")
    assert c.elements[f"{a}-aff"] == {}


def test_no_affinity_sets_without_affinity() -> None:
    c = web(endpoint("10.244.0.2"))
    assert not [s for s in c.sets if s.name.endswith("-aff")]


# ---- scale and names ----

def test_rules_do_not_grow_with_services() -> None:
    small, large = compile(*many(100), node_name=NODE), compile(*many(5000), node_name=NODE)
    # Chains, rules and sets are the same: they depend on endpoint counts, not on services; only
    # elements grow.
    assert chains(small) == chains(large)
    assert {s.name for s in small.sets} == {s.name for s in large.sets}
    assert len(large.elements["svc-ips4"]) == 5000 and len(small.elements["svc-ips4"]) == 100
    assert all(len(large.elements[f"svc-eps4-{i}"]) == 5000 for i in range(5))
    assert len(large.elements["svc-hairpin4"]) == 5000  # the one endpoint of each on this node


def test_names_are_stable_and_distinct() -> None:
    assert same(compile(*many(50), node_name=NODE), compile(*many(50), node_name=NODE))
    names = {service_chain(("ns", f"s{i}"), "http", Protocol.TCP, 4) for i in range(1000)}
    assert len(names) == 1000
    assert service_chain(KEY, "http", Protocol.TCP, 4) != service_chain(KEY, "http", Protocol.TCP, 6)
    assert all(len(n) + len("-local") < 64 for n in names)


def same(a: Contribution, b: Contribution) -> bool:
    """Equal whatever the order of chains and sets (the writer indexes them by name)."""
    return (sorted(a.chains, key=lambda c: c.name) == sorted(b.chains, key=lambda c: c.name)
            and sorted(a.sets, key=lambda s: s.name) == sorted(b.sets, key=lambda s: s.name)
            and a.elements == b.elements)


def test_service_compiler_recompiles_only_what_changed() -> None:
    services, slices = many(40)
    compiler = ServiceCompiler(node_name=NODE, pod_cidrs=(ip_network("10.244.0.0/14"),))
    first = compiler.compile(services, slices)
    before = {k: v[2] for k, v in compiler._parts.items()}
    first_elements = {k: dict(v) for k, v in first.elements.items()}
    slices[3] = dataclasses.replace(slices[3], endpoints=slices[3].endpoints[:2])
    compiler.compile(services, slices)
    assert [k for k in before if compiler._parts[k][2] is not before[k]] == [services[3].key]
    rng = random.Random(7)
    for _ in range(60):
        i = rng.randrange(len(services))
        slices[i] = dataclasses.replace(slices[i], endpoints=slices[i].endpoints[:rng.randrange(6)])
        if rng.random() < 0.3:
            services[i] = dataclasses.replace(services[i], session_affinity_seconds=rng.choice([None, 30]))
        if rng.random() < 0.3:  # ExternalIPs shared by several services, one key given twice
            shared = ip(rng.choice(["192.0.2.1", "192.0.2.2"]))
            services[i] = dataclasses.replace(services[i], external_ips=(shared,))
        present = [s for s in services if rng.random() < 0.9]  # services coming and going
        fresh = compile(present, slices, node_name=NODE, pod_cidrs=(ip_network("10.244.0.0/14"),))
        assert same(compiler.compile(present, slices), fresh)
    compiler.compile(services, slices)
    assert compiler.endpoints() == {EndpointKey(t.address, t.port, t.protocol)
                                    for t in programmed_endpoints(services, slices, node_name=NODE)}
    last = compiler._parts[services[-1].key][2]
    compiler.compile(services, [*slices[:-1], dataclasses.replace(slices[-1])])  # equal, not identical
    assert compiler._parts[services[-1].key][2] is last
    assert {k: dict(v) for k, v in first.elements.items()} == first_elements  # never changed in place


def test_the_writer_takes_it() -> None:
    svc = service("web", ("10.96.0.10", "fd00:96::10"), tcp("http", 80, 30080), udp("dns", 53),
                  type=ServiceType.NODE_PORT, external_ips=("192.0.2.1",), affinity=60,
                  etp=TrafficPolicy.LOCAL)
    slices = [slice_("web", endpoint("10.244.0.2"), endpoint("10.244.1.2", "node-2"),
                     ports=(EndpointPort("http", 8080), EndpointPort("dns", 53, Protocol.UDP))),
              slice_("web", endpoint("fd00:244::2"), family=6)]
    w = TableWriter(FakeNft(), "inet", "podnet")
    w.contribute("services", compile([svc], slices, node_name=NODE, pod_cidrs=(ip_network("10.244.0.0/16"),)))
    assert w.commit().full
    w.contribute("services", compile([svc], slices[:1], node_name=NODE))
    assert not w.commit().full


@pytest.mark.parametrize("change", ["remove", "unready", "local-only"])
def test_affected_endpoints(change: str) -> None:
    svc = service("web", "10.96.0.10", udp("dns", 53), itp=TrafficPolicy.LOCAL if change == "local-only"
                  else TrafficPolicy.CLUSTER)
    ports = (EndpointPort("dns", 5353, Protocol.UDP),)
    old = programmed_endpoints([service("web", "10.96.0.10", udp("dns", 53))],
                               [slice_("web", endpoint("10.244.0.2"), endpoint("10.244.1.2", "node-2"),
                                       ports=ports)], node_name=NODE)
    second = {"remove": (), "unready": (endpoint("10.244.1.2", "node-2", ready=False),),
              "local-only": (endpoint("10.244.1.2", "node-2"),)}[change]
    new = programmed_endpoints([svc], [slice_("web", endpoint("10.244.0.2"), *second, ports=ports)],
                               node_name=NODE)
    gone = affected_endpoints(old, new)
    assert [(str(k.address), k.port, k.protocol) for k in gone] == [("10.244.1.2", 5353, Protocol.UDP)]
    assert affected_endpoints(new, new) == frozenset()
