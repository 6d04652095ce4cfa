"""agent.store: one model fed by events and full lists; ordered change callbacks outside the lock;
synced only after every registered source listed every kind."""

from __future__ import annotations

import random
import threading
from ipaddress import ip_address, ip_network

import pytest

from podnet.agent.model import Endpoint, EndpointSlice, Namespace, NetworkPolicy, Node, Pod, Service
from podnet.agent.objects import Kind
from podnet.agent.store import Change, Event, EventType, Snapshot, Store


def ns(name: str, **labels: str) -> Namespace:
    return Namespace(name, labels)


def pod(name: str, node: str = "n1", ns_: str = "x", **labels: str) -> Pod:
    return Pod(ns_, name, labels=labels, node_name=node, ips=(ip_address("10.0.0.1"),))


def recorder(store: Store) -> list[Change]:
    seen: list[Change] = []
    store.subscribe(seen.append)
    return seen


def test_apply_added_modified_deleted_and_dedupe() -> None:
    store = Store("n1")
    seen = recorder(store)
    a = pod("a", app="1")
    assert store.apply(Event(EventType.ADDED, a))
    assert not store.apply(Event(EventType.MODIFIED, pod("a", app="1")))  # equal: no change
    a2 = pod("a", app="2")
    assert store.apply(Event(EventType.MODIFIED, a2))
    assert store.apply(Event(EventType.DELETED, a2))
    assert not store.apply(Event(EventType.DELETED, a2))
    assert seen == [Change(Kind.POD, ("x", "a"), None, a), Change(Kind.POD, ("x", "a"), a, a2),
                    Change(Kind.POD, ("x", "a"), a2, None)]
    assert store.pods() == {}


def test_replace_synthesizes_deletes_only_for_its_own_source() -> None:
    store = Store("n1")
    store.apply(Event(EventType.ADDED, ns("other")), source="manifests")
    store.replace(Kind.NAMESPACE, "kube", [ns("a"), ns("b")])
    seen = recorder(store)
    assert store.replace(Kind.NAMESPACE, "kube", [ns("b", t="1"), ns("c")]) == 3
    assert set(store.namespaces()) == {"other", "b", "c"}
    assert {(c.key, c.old is None, c.new is None) for c in seen} == {
        ("a", False, True), ("b", False, False), ("c", True, False)}
    with pytest.raises(ValueError, match="Pod"):
        store.replace(Kind.NAMESPACE, "kube", [pod("a")])


def test_synced_after_every_registered_source_listed_every_kind() -> None:
    store = Store("n1")
    fired: list[str] = []
    store.on_synced(lambda: fired.append("synced"))
    assert not store.synced  # no source yet: nothing listed, nothing known
    store.register_source("kube")
    store.register_source("manifests", [Kind.NETWORK_POLICY])
    for kind in Kind:
        store.replace(kind, "kube", [])
    assert not store.synced and store.pending_lists() == {("manifests", Kind.NETWORK_POLICY)}
    assert fired == []
    store.replace(Kind.NETWORK_POLICY, "manifests", [])
    assert store.synced and store.wait_synced(0) and fired == ["synced"]
    store.on_synced(lambda: fired.append("late"))
    assert fired == ["synced", "late"]
    store.replace(Kind.POD, "kube", [])
    assert fired == ["synced", "late"]


def test_readers_are_immutable_snapshots_and_local_pods() -> None:
    store = Store("n1")
    store.replace(Kind.POD, "s", [pod("b"), pod("a"), pod("c", node="n2")])
    store.replace(Kind.NETWORK_POLICY, "s", [NetworkPolicy("x", "p")])
    snap = store.snapshot()
    store.apply(Event(EventType.DELETED, pod("a")), "s")
    assert set(snap.pods) == {("x", "a"), ("x", "b"), ("x", "c")}
    with pytest.raises(TypeError):
        snap.pods[("x", "z")] = pod("z")  # type: ignore[index]
    assert [p.name for p in store.local_pods()] == ["b"]
    assert store.pod("x", "b") == pod("b") and store.pod("x", "a") is None
    assert store.policy("x", "p") == NetworkPolicy("x", "p") and store.namespace("x") is None
    assert store.counts() == {"Namespace": 0, "Pod": 2, "NetworkPolicy": 1, "Service": 0, "EndpointSlice": 0,
                              "Node": 0}
    assert store.generation == snap.generation + 1
    assert Store().node_name  # defaults to the hostname


def test_callbacks_run_outside_the_lock_and_may_read_and_write() -> None:
    store = Store("n1")
    seen: list[int] = []

    def callback(change: Change) -> None:
        seen.append(len(store.pods()))  # would deadlock under the store's lock
        if change.new is not None and change.new.name == "a":
            store.apply(Event(EventType.ADDED, pod("b")))

    store.subscribe(callback)
    store.apply(Event(EventType.ADDED, pod("a")))
    assert set(store.pods()) == {("x", "a"), ("x", "b")} and len(seen) == 2


def test_failing_subscriber_does_not_stop_others() -> None:
    store = Store("n1")

    def broken(change: Change) -> None:
        raise RuntimeError("subscriber bug")

    store.subscribe(broken)
    seen = recorder(store)
    store.apply(Event(EventType.ADDED, pod("a")))
    assert len(seen) == 1


def test_unsubscribe() -> None:
    store = Store("n1")
    seen: list[Change] = []
    unsubscribe = store.subscribe(seen.append)
    unsubscribe()
    unsubscribe()
    store.apply(Event(EventType.ADDED, pod("a")))
    assert seen == []


def test_concurrent_writers_deliver_every_change_in_order_per_key() -> None:
    store = Store("n1")
    seen = recorder(store)
    rounds = 300

    def writer(name: str) -> None:
        for i in range(rounds):
            store.apply(Event(EventType.MODIFIED, pod(name, v=str(i))))

    threads = [threading.Thread(target=writer, args=(f"p{t}",)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 4 * rounds
    for t in range(4):
        versions = [int(c.new.labels["v"]) for c in seen if c.key == ("x", f"p{t}") and c.new]
        assert versions == list(range(rounds))
    # Each change's old value is the previous change's new value: nothing lost, nothing reordered.
    last: dict[object, object] = {}
    for change in seen:
        assert last.get(change.key) == change.old
        last[change.key] = change.new


# ---- Services, EndpointSlices, Nodes ------------------------------------------------------------


def eps(name: str, service: str, ns_: str = "x", ip: str = "10.0.0.9") -> EndpointSlice:
    return EndpointSlice(ns_, name, service, endpoints=(Endpoint((ip_address(ip),)),))


def test_services_slices_and_nodes_are_kept_like_the_rest() -> None:
    store = Store("n1")
    seen = recorder(store)
    svc, node = Service("x", "web"), Node("n2", (ip_network("10.244.2.0/24"),))
    store.replace(Kind.SERVICE, "s", [svc])
    store.replace(Kind.ENDPOINT_SLICE, "s", [eps("web-1", "web")])
    store.replace(Kind.NODE, "s", [node])
    assert store.services() == {("x", "web"): svc} and store.service("x", "web") == svc
    assert store.nodes() == {"n2": node} and store.node("n2") == node and store.node("n1") is None
    assert store.endpoint_slice("x", "web-1") == eps("web-1", "web")
    assert store.endpoint_slices() == {("x", "web-1"): eps("web-1", "web")}
    assert [(c.kind, c.key) for c in seen] == [
        (Kind.SERVICE, ("x", "web")), (Kind.ENDPOINT_SLICE, ("x", "web-1")), (Kind.NODE, "n2")]
    store.apply(Event(EventType.DELETED, node), "s")
    assert seen[-1] == Change(Kind.NODE, "n2", node, None) and store.nodes() == {}
    snap = store.snapshot()
    assert snap.services == {("x", "web"): svc} and snap.nodes == {}
    assert snap.slices_for("x", "web") == (eps("web-1", "web"),)
    # The policy sync's fields keep their meaning.
    assert snap.namespaces == {} and snap.pods == {} and snap.policies == {}


def test_slices_for_follows_label_changes_and_deletes() -> None:
    store = Store("n1")
    store.replace(Kind.ENDPOINT_SLICE, "s", [eps("b", "web"), eps("a", "web"), eps("c", "db"),
                                             eps("d", "web", ns_="y"), eps("lonely", "")])
    assert [s.name for s in store.slices_for("x", "web")] == ["a", "b"]
    assert [s.name for s in store.slices_for("y", "web")] == ["d"]
    assert store.slices_for("x", "") == () and store.slices_for("x", "none") == ()
    before = store.snapshot()
    store.apply(Event(EventType.MODIFIED, eps("b", "db")), "s")  # relabelled to another service
    store.delete(Kind.ENDPOINT_SLICE, ("x", "a"))
    assert store.slices_for("x", "web") == ()
    assert [s.name for s in store.slices_for("x", "db")] == ["b", "c"]
    assert [s.name for s in before.slices_for("x", "web")] == ["a", "b"]  # snapshots do not move
    store.replace(Kind.ENDPOINT_SLICE, "s", [])
    assert store.snapshot().slice_keys == {}


def test_slice_index_equals_a_scan_after_random_changes() -> None:
    store = Store("n1")
    rand = random.Random(7)
    for _ in range(2000):
        name, service = f"s{rand.randrange(30)}", rand.choice(["web", "db", "api", ""])
        ns_ = rand.choice(["x", "y"])
        if rand.random() < 0.3:
            store.delete(Kind.ENDPOINT_SLICE, (ns_, name))
        else:
            store.apply(Event(EventType.MODIFIED, eps(name, service, ns_, f"10.0.0.{rand.randrange(3)}")))
    snap = store.snapshot()
    for ns_ in ("x", "y"):
        for service in ("web", "db", "api"):
            scan = sorted((s for s in snap.endpoint_slices.values()
                           if (s.namespace, s.service) == (ns_, service)), key=lambda s: s.name)
            assert list(store.slices_for(ns_, service)) == scan == list(snap.slices_for(ns_, service))


def test_old_style_snapshot_construction_still_works() -> None:
    # Callers that build a Snapshot from the first five fields (the policy tests) keep working.
    snap = Snapshot({}, {}, {}, True, 3)
    assert snap.services == {} and snap.nodes == {} and snap.slices_for("x", "web") == ()
