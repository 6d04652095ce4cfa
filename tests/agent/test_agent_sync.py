"""The agent's policy sync on the fake nftables backend: nothing before the sources listed, one
commit per snapshot covering policy and admission, admitted addresses, and failures retried."""

from __future__ import annotations

import threading
import time
from ipaddress import ip_address, ip_network

import pytest

from podnet.agent import admission_rules
from podnet.agent.model import LabelSelector, Namespace, NetworkPolicy, Pod
from podnet.agent.objects import Kind
from podnet.agent.store import Event, EventType, Store
from podnet.agent.sync import Admitted, PolicySync, merge_admitted
from podnet.dataplane.writer import TableWriter
from podnet.kernel.nft import FakeNft, NftError

NODE = "n1"
RANGE = ip_network("10.60.0.0/24")


def pod(name: str, ip: str | None, labels: dict[str, str] | None = None, node: str = NODE) -> Pod:
    return Pod("x", name, labels=labels or {"app": name}, ips=(ip_address(ip),) if ip else (), node_name=node)


def deny_all() -> NetworkPolicy:
    return NetworkPolicy("x", "deny", LabelSelector())


class World:
    def __init__(self) -> None:
        self.store = Store(NODE)
        self.store.register_source("test")
        self.nft = FakeNft()
        self.writer = TableWriter(self.nft, "inet", "podnet", verify_period=3600)
        self.sync = PolicySync(self.store, self.writer, pod_ranges=[RANGE], retry_seconds=0.05)

    def list_all(self, *objects: Namespace | Pod | NetworkPolicy) -> None:
        for kind in Kind:
            self.store.replace(kind, "test", [o for o in objects if _kind(o) is kind])

    def elements(self, set_name: str) -> set[str]:
        table = self.nft.list_table("inet", "podnet")
        if table is None or set_name not in table.sets:
            return set()
        return {e.key for e in table.sets[set_name].elements}


def _kind(obj: object) -> Kind:
    return {Namespace: Kind.NAMESPACE, Pod: Kind.POD, NetworkPolicy: Kind.NETWORK_POLICY}[type(obj)]


@pytest.fixture
def world() -> World:
    w = World()
    w.sync.start()
    yield w
    w.sync.stop()


def wait_until(check: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached")


def test_nothing_is_programmed_before_every_source_listed(world: World) -> None:
    world.store.register_source("second")
    world.list_all(Namespace("x"), pod("a", "10.60.0.5"), deny_all())
    time.sleep(0.3)
    assert world.nft.list_table("inet", "podnet") is None and world.sync.stats.syncs == 0
    for kind in Kind:
        world.store.replace(kind, "second", [])
    wait_until(lambda: world.sync.stats.syncs >= 1)
    assert world.elements(admission_rules.known_set(4)) == {"10.60.0.5"}
    assert "10.60.0.5" in {k.split(" ")[0] for k in world.elements("ingress-ip4")}


def test_an_admitted_pod_becomes_known_with_its_policy_in_one_commit(world: World) -> None:
    world.list_all(Namespace("x"), pod("a", "10.60.0.5"), pod("new", None), deny_all())
    wait_until(lambda: world.sync.stats.syncs >= 1)
    assert world.elements(admission_rules.known_set(4)) == {"10.60.0.5"}
    commits = world.writer.metrics.commits
    assert world.sync.admit(Admitted("x", "new", "cid-new", (ip_address("10.60.0.6"),)), timeout=5)
    assert world.elements(admission_rules.known_set(4)) == {"10.60.0.5", "10.60.0.6"}
    assert any(k.startswith("10.60.0.6") for k in world.elements("ingress-ip4"))  # isolated at once
    assert world.writer.metrics.commits == commits + 1


def test_a_pod_the_sources_do_not_list_stays_held_back(world: World) -> None:
    world.list_all(Namespace("x"))
    wait_until(lambda: world.sync.stats.syncs >= 1)
    assert not world.sync.admit(Admitted("x", "ghost", "cid-g", (ip_address("10.60.0.9"),)), timeout=5)
    assert "10.60.0.9" not in world.elements(admission_rules.known_set(4))
    world.store.apply(Event(EventType.ADDED, pod("ghost", None)), "test")  # listed now, status lags
    wait_until(lambda: "10.60.0.9" in world.elements(admission_rules.known_set(4)))


def test_release_and_pod_deletion_forget_the_admitted_addresses(world: World) -> None:
    world.list_all(Namespace("x"), pod("a", None), pod("b", None))
    assert world.sync.admit(Admitted("x", "a", "ca", (ip_address("10.60.0.7"),)), timeout=5)
    assert world.sync.admit(Admitted("x", "b", "cb", (ip_address("10.60.0.8"),)), timeout=5)
    world.sync.release("ca")
    wait_until(lambda: world.elements(admission_rules.known_set(4)) == {"10.60.0.8"})
    world.store.delete(Kind.POD, ("x", "b"))
    wait_until(lambda: world.elements(admission_rules.known_set(4)) == set())


def test_remote_pods_and_addresses_outside_the_ranges_are_not_admitted(world: World) -> None:
    world.list_all(Namespace("x"), pod("far", "10.60.0.20", node="n2"), pod("odd", "10.99.0.1"))
    wait_until(lambda: world.sync.stats.syncs >= 1)
    assert world.elements(admission_rules.known_set(4)) == set()


def test_a_failed_commit_is_retried_from_the_union(world: World) -> None:
    world.nft.fail_next = NftError("injected")
    world.list_all(Namespace("x"), pod("a", "10.60.0.5"), deny_all())
    wait_until(lambda: world.sync.stats.syncs >= 1)
    assert world.sync.stats.failed_syncs == 1 and "injected" in world.sync.stats.last_error
    assert world.elements(admission_rules.known_set(4)) == {"10.60.0.5"}


def test_merge_gives_an_address_to_the_pod_whose_add_handed_it_out() -> None:
    old = pod("old", "10.60.0.5")  # terminating, its status still shows the address
    new = pod("new", None)
    merged = merge_admitted([old, new], [Admitted("x", "new", "c", (ip_address("10.60.0.5"),))])
    assert [p.ips for p in merged] == [(), (ip_address("10.60.0.5"),)]


def test_admit_waits_for_the_commit_and_is_bounded() -> None:
    w = World()  # not started: no commit can happen
    w.list_all(Namespace("x"), pod("a", None))
    start = time.monotonic()
    assert not w.sync.admit(Admitted("x", "a", "c", (ip_address("10.60.0.5"),)), timeout=0.3)
    assert 0.25 < time.monotonic() - start < 2
    done = threading.Event()
    threading.Thread(target=lambda: (w.sync.admit(Admitted("x", "a", "c", (ip_address("10.60.0.5"),)), 5),
                                     done.set()), daemon=True).start()
    time.sleep(0.1)
    assert not done.is_set()
    w.sync.start()
    try:
        assert done.wait(5)
    finally:
        w.sync.stop()


def test_a_busy_agent_still_verifies_every_period() -> None:
    w = World()
    w.writer.verify_period = 0.2
    w.list_all(Namespace("x"), deny_all())
    w.sync.start()
    try:
        end = time.monotonic() + 1.5
        i = 0
        while time.monotonic() < end:  # a change every 20 ms: the sync is never idle for long
            w.store.apply(Event(EventType.ADDED, pod(f"p{i}", f"10.60.0.{i % 200 + 1}")), "test")
            i += 1
            time.sleep(0.02)
        assert w.writer.metrics.verifies >= 4, w.writer.metrics
    finally:
        w.sync.stop()


def test_the_tables_first_rebuild_waits_for_every_controller() -> None:
    """Adopting a table rebuilds it from the union: with only one controller's part in, what the
    others keep in force (an isolated pod's drop rules, a service's DNAT) would vanish for a moment."""
    from podnet.agent.sync import POLICY_OWNER
    from podnet.dataplane.contribution import Chain, Contribution

    w = World()
    w.writer.require(POLICY_OWNER, admission_rules.OWNER, "services")
    w.list_all(Namespace("x"), pod("a", "10.60.0.5"), deny_all())
    w.sync.start()
    try:
        time.sleep(0.5)
        assert w.nft.list_table("inet", "podnet") is None  # policy is in, services not yet
        assert w.sync.stats.syncs == 0 and w.sync.stats.failed_syncs == 0
        w.writer.contribute("services", Contribution((Chain("services-dispatch", rules=("return",)),)))
        assert w.writer.commit().full
        table = w.nft.list_table("inet", "podnet")
        assert table is not None and "services-dispatch" in table.chains and "policy-ingress" in table.chains
        wait_until(lambda: w.sync.stats.syncs >= 1)
    finally:
        w.sync.stop()


@pytest.mark.parametrize("pod_ranges", [[RANGE], []])
def test_a_node_without_pods_or_policies_still_gets_its_table(pod_ranges: list[object]) -> None:
    """A fresh node: no pod, no NetworkPolicy (and, without --pod-cidr, no admission rule either), so
    those controllers' parts are empty. An empty part is a part: the first rebuild must not wait for
    it forever (it did: services were never programmed on such a node)."""
    from podnet.agent.service_sync import ServiceSync
    from podnet.agent.sync import POLICY_OWNER

    w = World()
    w.sync = PolicySync(w.store, w.writer, pod_ranges=pod_ranges, retry_seconds=0.05)  # type: ignore[arg-type]
    w.writer.require(POLICY_OWNER, admission_rules.OWNER, "services")
    services = ServiceSync(w.store, w.writer, retry_seconds=0.05)
    w.list_all()
    w.sync.start()
    services.start()
    try:
        wait_until(lambda: w.sync.stats.syncs >= 1 and services.stats.syncs >= 1)
        table = w.nft.list_table("inet", "podnet")
        assert table is not None and "services-dispatch" in table.chains
    finally:
        services.stop()
        w.sync.stop()


def test_another_controllers_commit_never_applies_half_of_a_policy_sync() -> None:
    """PolicySync hands over one part per policy and then the shared part. A commit by another
    thread in between would apply the half state (the EBUSY of issue 11: a chain withdrawn while the
    shared part still jumps to it). Here a commit is attempted from another thread right after the
    first part is handed over: it must wait for the policy sync's own commit, and so find nothing
    left to do."""
    w = World()
    w.list_all(Namespace("x"), pod("a", "10.60.0.5"), deny_all(),
               NetworkPolicy("x", "allow", LabelSelector(), ingress=()))
    seen: list[object] = []
    real = w.writer.contribute

    def contribute(owner: str, part: object) -> None:
        real(owner, part)  # type: ignore[arg-type]
        if not seen:
            other = threading.Thread(target=lambda: seen.append(w.writer.commit()))
            seen.append(other)
            other.start()
            other.join(0.3)  # without the hold it commits the half state now

    w.writer.contribute = contribute  # type: ignore[method-assign]
    assert w.sync.sync_once()
    other = seen[0]
    assert isinstance(other, threading.Thread)
    other.join(5)
    result = seen[1]
    assert not result.changed, "another thread's commit applied part of a policy sync"  # type: ignore[attr-defined]


def test_a_controller_is_current_after_changes_that_are_not_its_concern(world: World) -> None:
    """Policy does not sync for a Service change, but it has put in force everything up to it: the
    agent's status must say current (generation_applied == generation) without another policy sync."""
    from podnet.agent.model import Service

    world.list_all(Namespace("x"), pod("a", "10.60.0.5"))
    wait_until(lambda: world.sync.current_up_to() == world.store.generation)
    syncs = world.sync.stats.syncs
    world.store.apply(Event(EventType.ADDED, Service("x", "web")), "test")
    wait_until(lambda: world.sync.current_up_to() == world.store.generation)
    assert world.sync.stats.syncs == syncs
    world.store.apply(Event(EventType.ADDED, pod("b", "10.60.0.6")), "test")  # its concern: synced first
    assert world.sync.current_up_to() < world.store.generation or world.sync.stats.syncs > syncs
    wait_until(lambda: world.sync.current_up_to() == world.store.generation
               and world.sync.stats.syncs > syncs)


def test_without_pod_cidr_the_nodes_own_pod_cidrs_are_held_back() -> None:
    """On a cluster the DaemonSet gives no --pod-cidr: the range held back until classified is this
    node's Node's spec.podCIDRs, followed as it is set; other Nodes' ranges are not this node's."""
    from podnet.agent.model import Node

    w = World()
    w.sync = PolicySync(w.store, w.writer, retry_seconds=0.05)
    w.list_all(Namespace("x"), pod("a", "10.60.0.5"))
    w.sync.start()
    try:
        wait_until(lambda: w.sync.stats.syncs >= 1)
        assert w.elements("pod-ranges4") == set()
        w.store.apply(Event(EventType.ADDED, Node("other", (ip_network("10.61.0.0/24"),))), "test")
        w.store.apply(Event(EventType.ADDED, Node(NODE, (RANGE,))), "test")
        wait_until(lambda: w.elements("pod-ranges4") == {str(RANGE)})
        assert w.elements("known-pods4") == {"10.60.0.5"} and w.sync.ranges == (RANGE,)
    finally:
        w.sync.stop()


def test_a_bug_in_a_sync_is_logged_and_retried_not_the_end_of_the_thread() -> None:
    """A controller thread that died on an exception would leave the node unprogrammed with no
    sign; the loop logs it, counts it and retries."""
    from podnet.agent.loop import SyncLoop

    class Flaky(SyncLoop):
        calls = 0

        def sync_once(self) -> bool:
            self.calls += 1
            if self.calls == 1:
                raise AttributeError("a bug")
            return True

    store = Store(NODE)
    store.register_source("test")
    for kind in Kind:
        store.replace(kind, "test", [])
    loop = Flaky(store, retry_seconds=0.01)
    loop.start()
    try:
        wait_until(lambda: loop.calls >= 2 and loop.applied_generation >= 0)
        assert loop.crashes == 1 and loop._thread is not None and loop._thread.is_alive()
    finally:
        loop.stop()
