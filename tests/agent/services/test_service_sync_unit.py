"""The service sync loop recompiles only the services the store's changes name: whatever the
changes (slices added, emptied, moved to another service or deleted; services changed or deleted;
a Node), its contribution must equal a compile from scratch of the store as it is, and the conntrack
cleaning must be told exactly the endpoints no longer programmed."""

from __future__ import annotations

import dataclasses
import random

from podnet.agent.model import EndpointPort, EndpointSlice, Node, Protocol, Service
from podnet.agent.objects import Kind
from podnet.agent.service_sync import ServiceSync
from podnet.agent.services import compile
from podnet.agent.store import Event, EventType, Store
from podnet.dataplane.writer import TableWriter
from podnet.kernel.nft import FakeNft

from .world import NODE, endpoint, service, slice_, tcp, udp

DELETED, ADDED = EventType.DELETED, EventType.ADDED
PORTS = (EndpointPort("http", 8080), EndpointPort("dns", 5353, Protocol.UDP))


def store() -> Store:
    s = Store(NODE)
    s.register_source("test")
    for kind in Kind:
        s.replace(kind, "test", [])
    return s


def put(s: Store, obj: Service | EndpointSlice | Node, type: EventType = ADDED) -> None:
    s.apply(Event(type, obj), "test")


def fresh(s: Store) -> dict[str, dict[str, str | None]]:
    snap = s.snapshot()
    c = compile(snap.services.values(), snap.endpoint_slices.values(), node_name=NODE)
    return {k: dict(v) for k, v in c.elements.items() if v}


def applied(w: TableWriter) -> dict[str, dict[str, str | None]]:
    return {k: dict(v) for k, v in w.desired().elements.items() if v}


class Cleaner:
    def __init__(self) -> None:
        self.calls: list[dict[str, object]] = []

    def __call__(self, **filters: object) -> int:
        self.calls.append(filters)
        return 0


def test_random_changes_equal_a_compile_from_scratch() -> None:
    rng = random.Random(11)
    s, w = store(), TableWriter(FakeNft(), "inet", "podnet")
    sync = ServiceSync(s, w, clean=Cleaner())
    assert sync.sync_once()
    names = [f"s{i}" for i in range(8)]
    endpoints_seen = 0
    for step in range(300):
        name = rng.choice(names)
        roll = rng.random()
        if roll < 0.25:
            put(s, service(name, f"10.96.0.{names.index(name) + 1}", tcp("http", 80), udp("dns", 53)))
        elif roll < 0.35:
            put(s, service(name, "10.96.0.99"), DELETED)
        elif roll < 0.8:
            target = rng.choice(names)  # a slice may move to another service (its label changed)
            eps = [endpoint(f"10.244.0.{rng.randrange(2, 9)}", rng.choice([NODE, "node-2"]),
                            ready=rng.random() < 0.8) for _ in range(rng.randrange(0, 4))]
            put(s, dataclasses.replace(slice_(target, *eps, ports=PORTS), name=f"{name}-slice"))
        elif roll < 0.95:
            put(s, slice_(name, name=f"{name}-slice"), DELETED)
        else:
            put(s, Node(f"node-{step}"))
        if rng.random() < 0.5:
            assert sync.sync_once()
            assert applied(w) == fresh(s), f"step {step}"
            endpoints_seen += sync.stats.endpoints
    assert sync.sync_once()
    assert applied(w) == fresh(s)
    assert endpoints_seen > 100  # the services had endpoints most of the time


def test_the_removed_endpoint_is_cleaned_once() -> None:
    s, w = store(), TableWriter(FakeNft(), "inet", "podnet")
    cleaner = Cleaner()
    sync = ServiceSync(s, w, clean=cleaner)
    put(s, service("dns", "10.96.0.10", udp("dns", 53)))
    put(s, slice_("dns", endpoint("10.244.0.2"), endpoint("10.244.0.3"), ports=PORTS[1:]))
    assert sync.sync_once() and cleaner.calls == []
    kept = s.snapshot().endpoint_slices[("default", "dns-4")]
    put(s, dataclasses.replace(kept, endpoints=kept.endpoints[:1]))
    assert sync.sync_once()
    assert [(str(c["reply_src"]), c["reply_sport"]) for c in cleaner.calls] == [("10.244.0.3", 5353)]
    assert sync.sync_once() and len(cleaner.calls) == 1  # told once
    assert sync.stats.endpoints == 1 and sync.stats.services == 1


def test_without_pod_cidr_every_nodes_pod_cidrs_are_the_pod_ranges() -> None:
    """ClusterIP traffic from outside the pod ranges is masqueraded; without --pod-cidr the ranges
    are every Node's pod CIDRs, followed as Nodes come and go."""
    from ipaddress import ip_network

    s, w = store(), TableWriter(FakeNft(), "inet", "podnet")
    sync = ServiceSync(s, w)
    put(s, service("web", "10.96.0.10", tcp("http", 80)))
    put(s, slice_("web", endpoint("10.244.1.2"), ports=PORTS))
    assert sync.sync_once()
    assert applied(w).get("svc-pod-cidrs4") is None  # none known: no ClusterIP masquerade rule
    put(s, Node("node-a", (ip_network("10.244.1.0/24"),)))
    put(s, Node("node-b", (ip_network("10.244.2.0/24"), ip_network("fd00:2::/64"))))
    assert sync.sync_once()
    assert applied(w)["svc-pod-cidrs4"] == {"10.244.1.0/24": None, "10.244.2.0/24": None}
    assert applied(w)["svc-pod-cidrs6"] == {"fd00:2::/64": None}
    rules = [r for chain in w.desired().rules.values() for r in chain]
    assert "ip saddr != @svc-pod-cidrs4 jump services-mark-masq" in rules
    put(s, Node("node-b"), DELETED)
    assert sync.sync_once()
    assert applied(w)["svc-pod-cidrs4"] == {"10.244.1.0/24": None} and sync.stats.endpoints == 1
