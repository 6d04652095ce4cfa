"""The Kubernetes API source against a local server that speaks list/watch: paging, watch
events, bookmarks, 410 Gone (in the stream and as a status), dropped connections, restarts with
a stale resourceVersion, 500s with backoff, and a clean stop."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from podnet.agent.model import EndpointSlice, Node, Pod, Service, ServiceType
from podnet.agent.objects import Kind
from podnet.agent.sources.informer import Backoff
from podnet.agent.sources.kube import KubeConfigError, KubeSource, load_config
from podnet.agent.sources.manifests import ManifestSource
from podnet.agent.store import Change, Store

from .kubeserver import Change as ServerChange
from .kubeserver import KubeServer

PODS = "/api/v1/pods"


def wait_for(cond: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def pod(name: str, ip: str = "10.0.0.1", ns: str = "x", **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels, "uid": f"uid-{name}"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": ip}}


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"ns": name}}}


def policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "x"}, "spec": spec}


@pytest.fixture
def server() -> Iterator[KubeServer]:
    srv = KubeServer()
    yield srv
    srv.close()


@pytest.fixture
def store() -> Store:
    return Store("n1")


@pytest.fixture
def changes(store: Store) -> list[Change]:
    seen: list[Change] = []
    store.subscribe(seen.append)
    return seen


@pytest.fixture
def make_source(server: KubeServer, store: Store, tmp_path: Path) -> Iterator[Callable[..., KubeSource]]:
    made: list[KubeSource] = []

    def make(kinds: tuple[Kind, ...] = (Kind.POD,), **kw: Any) -> KubeSource:
        config = load_config(server.kubeconfig(tmp_path / "kubeconfig"))
        kw.setdefault("backoff", Backoff(initial=0.01, cap=0.05))
        source = KubeSource(store, config, kinds=kinds, **kw)
        made.append(source)
        return source

    yield make
    for source in made:
        source.close()


def ips(store: Store) -> dict[str, str]:
    return {name: str(p.ips[0]) for (_, name), p in store.pods().items()}


def test_list_with_paging_then_synced(server: KubeServer, store: Store, make_source: Callable[..., KubeSource]
                                      ) -> None:
    for i in range(5):
        server.put(pod(f"p{i}", f"10.0.0.{i + 1}"))
    server.put(namespace("x"))
    server.put(policy("deny", {"podSelector": {}}))
    source = make_source(tuple(Kind), page_size=2)
    source.start()
    assert store.wait_synced(5)
    assert len(store.pods()) == 5 and set(store.namespaces()) == {"x"}
    assert set(store.policies()) == {("x", "deny")}
    pages = [q for p, q in server.requests if p == PODS and "watch" not in q]
    assert [("continue" in q, q["limit"]) for q in pages] == [(False, "2"), (True, "2"), (True, "2")]
    # The watch starts exactly at the list's snapshot, with bookmarks asked for.
    wait_for(lambda: server.watch_requests(PODS))
    first = server.watch_requests(PODS)[0]
    assert first["resourceVersion"] == source.informers[Kind.POD].resource_version
    assert first["allowWatchBookmarks"] == "true"
    assert source.status()["Pod"]["listed"]


def test_not_synced_until_every_kind_listed(server: KubeServer, store: Store,
                                            make_source: Callable[..., KubeSource]) -> None:
    server.fail_next = 1000  # nothing can be listed
    source = make_source(tuple(Kind))
    source.start()
    time.sleep(0.3)
    assert not store.synced
    assert source.status()["Pod"]["errors"] > 1
    assert "HTTP 500" in source.status()["Pod"]["last_error"]
    server.fail_next = 0
    assert store.wait_synced(5)


def test_watch_events(server: KubeServer, store: Store, changes: list[Change],
                      make_source: Callable[..., KubeSource]) -> None:
    server.put(pod("a"))
    make_source().start()
    assert store.wait_synced(5)
    server.wait_watches(1)
    server.put(pod("b", "10.0.0.2"))
    server.put(pod("a", "10.0.0.9", app="new"))
    server.delete("Pod", "b", "x")
    wait_for(lambda: len(changes) == 4)
    assert [(c.key, c.old is None, c.new is None) for c in changes] == [
        (("x", "a"), True, False), (("x", "b"), True, False), (("x", "a"), False, False),
        (("x", "b"), False, True)]
    assert ips(store) == {"a": "10.0.0.9"} and store.pod("x", "a").labels == {"app": "new"}  # type: ignore[union-attr]


def test_bookmarks_advance_the_resource_version(server: KubeServer, store: Store,
                                                make_source: Callable[..., KubeSource]) -> None:
    source = make_source()
    source.start()
    server.wait_watches(1)
    informer = source.informers[Kind.POD]
    listed = int(informer.resource_version or 0)
    for _ in range(3):
        server.bump()  # changes to other kinds: this watch sees no event...
    server.bookmark()  # ...but learns that it is up to date with them
    wait_for(lambda: informer.resource_version == str(server.rv))
    assert int(informer.resource_version or 0) == listed + 3 and informer.stats.bookmarks == 1
    server.drop_watches()
    wait_for(lambda: len(server.watch_requests(PODS)) == 2)
    assert server.watch_requests(PODS)[1]["resourceVersion"] == str(server.rv)
    assert informer.stats.lists == 1  # resumed, not re-listed


def test_dropped_connection_resumes_without_loss_or_duplicates(
        server: KubeServer, store: Store, make_source: Callable[..., KubeSource]) -> None:
    server.put(pod("a"))
    source = make_source()
    source.start()
    server.wait_watches(1)
    informer = source.informers[Kind.POD]
    server.put(pod("b", "10.0.0.2"))
    wait_for(lambda: "b" in ips(store))
    seen_rv = informer.resource_version
    server.drop_watches(mid_chunk=True)  # half an event arrives, then the connection dies
    server.put(pod("c", "10.0.0.3"))  # while reconnecting
    server.put(pod("b", "10.0.0.4"))
    server.delete("Pod", "a", "x")
    wait_for(lambda: ips(store) == {"b": "10.0.0.4", "c": "10.0.0.3"})
    rewatch = server.watch_requests(PODS)[1]
    assert rewatch["resourceVersion"] == seen_rv
    assert informer.stats.lists == 1 and informer.stats.events == 4  # b, then c, b, a: each once
    assert ("x", "half") not in store.pods()
    assert informer.resource_version == str(server.rv)


def test_410_in_the_stream_relists_and_synthesizes_deletes(
        server: KubeServer, store: Store, changes: list[Change],
        make_source: Callable[..., KubeSource]) -> None:
    server.put(pod("a"))
    server.put(pod("b", "10.0.0.2"))
    source = make_source()
    source.start()
    server.wait_watches(1)
    # The server loses track (compaction) of changes this watch never saw: b vanished and d came.
    with server.cond:
        del server.objects["Pod"][("x", "b")]
        server.rv += 1
    server.put(pod("d", "10.0.0.4"))
    wait_for(lambda: "d" in ips(store))
    server.compact()
    server.inject_error(410)
    wait_for(lambda: "b" not in ips(store))
    informer = source.informers[Kind.POD]
    assert informer.stats.relists_gone == 1 and informer.stats.lists == 2
    assert ips(store) == {"a": "10.0.0.1", "d": "10.0.0.4"}
    assert changes[-1] == Change(Kind.POD, ("x", "b"), changes[1].new, None)
    wait_for(lambda: len(server.watch_requests(PODS)) == 2)
    assert server.watch_requests(PODS)[1]["resourceVersion"] == str(server.rv)


@pytest.mark.parametrize("gone_as_status", [False, True], ids=["error-event", "http-410"])
def test_restart_with_stale_resource_version(server: KubeServer, store: Store, changes: list[Change],
                                             make_source: Callable[..., KubeSource],
                                             gone_as_status: bool) -> None:
    server.gone_as_status = gone_as_status
    server.put(pod("a"))
    server.put(pod("b", "10.0.0.2"))
    source = make_source()
    source.start()
    server.wait_watches(1)
    source.stop()
    assert server.active_watches == 0 or (wait_for(lambda: server.active_watches == 0) is None)
    stale = source.informers[Kind.POD].resource_version
    server.delete("Pod", "a", "x")
    server.put(pod("c", "10.0.0.3"))
    server.compact()  # the stale version is now too old
    before = len(changes)
    source.start()
    wait_for(lambda: ips(store) == {"b": "10.0.0.2", "c": "10.0.0.3"})
    informer = source.informers[Kind.POD]
    assert server.watch_requests(PODS)[1]["resourceVersion"] == stale
    assert informer.stats.relists_gone == 1 and informer.stats.lists == 2
    assert {(c.key, c.new is None) for c in changes[before:]} == {(("x", "a"), True), (("x", "c"), False)}


def test_restart_with_a_still_valid_resource_version_replays_history(
        server: KubeServer, store: Store, make_source: Callable[..., KubeSource]) -> None:
    server.put(pod("a"))
    source = make_source()
    source.start()
    server.wait_watches(1)
    source.stop()
    server.delete("Pod", "a", "x")
    server.put(pod("c", "10.0.0.3"))
    source.start()
    wait_for(lambda: ips(store) == {"c": "10.0.0.3"})
    assert source.informers[Kind.POD].stats.lists == 1  # no re-list needed


def test_watch_error_event_other_than_410_rewatches(server: KubeServer, store: Store,
                                                    make_source: Callable[..., KubeSource]) -> None:
    source = make_source()
    source.start()
    server.wait_watches(1)
    server.inject_error(500, "etcd hiccup")
    wait_for(lambda: len(server.watch_requests(PODS)) == 2)
    informer = source.informers[Kind.POD]
    assert informer.stats.lists == 1 and "etcd hiccup" in (informer.stats.last_error or "")


def test_backoff_on_500s(server: KubeServer, store: Store, make_source: Callable[..., KubeSource]) -> None:
    server.put(pod("a"))
    server.fail_next = 4
    delays: list[float] = []
    backoff = Backoff(initial=0.01, cap=0.04, jitter=0.0)
    source = make_source(backoff=backoff)
    informer = source.informers[Kind.POD]
    real_next = informer.backoff.next
    informer.backoff.next = lambda: delays.append(real_next()) or delays[-1]  # type: ignore[method-assign]
    source.start()
    assert store.wait_synced(5)
    assert delays == [0.01, 0.02, 0.04, 0.04] and informer.stats.errors == 4


def test_expired_continue_token_lists_again_from_the_start(
        server: KubeServer, store: Store, make_source: Callable[..., KubeSource]) -> None:
    for i in range(3):
        server.put(pod(f"p{i}", f"10.0.0.{i + 1}"))
    server.expire_next_continue = 2
    source = make_source(page_size=2)
    source.start()
    assert store.wait_synced(5)
    assert len(store.pods()) == 3
    pages = [q for p, q in server.requests if p == PODS and "watch" not in q]
    assert ["continue" in q for q in pages] == [False, True, False, True, False, True]
    informer = source.informers[Kind.POD]
    assert informer.stats.errors == 2 and informer.stats.lists == 1


def test_backoff_jitter_and_cap() -> None:
    values = iter([0.0, 1.0, 0.5, 0.0, 0.0, 0.0])
    backoff = Backoff(initial=1.0, cap=5.0, factor=2.0, jitter=0.5, rand=lambda: next(values))
    assert [backoff.next() for _ in range(5)] == [1.0, 1.0, 3.0, 5.0, 5.0]
    backoff.reset()
    assert backoff.next() == 1.0


def test_garbage_from_the_server_is_retried(server: KubeServer, store: Store,
                                            make_source: Callable[..., KubeSource]) -> None:
    source = make_source()
    source.start()
    server.wait_watches(1)
    with server.cond:
        server.rv += 1
        server.history.append(ServerChange(server.rv, "BOGUS", "Pod", ("x", "q"), {"metadata": {}}))
        server.cond.notify_all()
    wait_for(lambda: len(server.watch_requests(PODS)) >= 2)
    assert "unknown event type" in (source.informers[Kind.POD].stats.last_error or "")


def test_bad_objects_from_the_api(server: KubeServer, store: Store,
                                  make_source: Callable[..., KubeSource]) -> None:
    bad_pod = pod("bad", "not-an-ip")
    server.put(bad_pod)
    server.put(policy("bad", {"podSelector": {"matchLabels": {"a": "b"}},
                              "ingress": [{"ports": [{"port": 0}]}]}))
    make_source((Kind.POD, Kind.NETWORK_POLICY)).start()
    assert store.wait_synced(5)
    assert store.pods() == {}
    bad = store.policy("x", "bad")
    assert bad is not None and bad.error and "spec.ingress[0].ports[0].port" in bad.error
    server.put(pod("bad", "10.0.0.7"))
    wait_for(lambda: ips(store) == {"bad": "10.0.0.7"})
    server.put(bad_pod)  # an update we cannot read keeps what we last understood
    server.put(pod("other", "10.0.0.8"))
    wait_for(lambda: "other" in ips(store))
    assert ips(store)["bad"] == "10.0.0.7"
    server.delete("Pod", "bad", "x")  # ...and its delete still deletes it
    wait_for(lambda: "bad" not in ips(store))


def test_stop_is_prompt_and_closes_connections(server: KubeServer, store: Store,
                                               make_source: Callable[..., KubeSource]) -> None:
    source = make_source(tuple(Kind), watch_timeout=3600)
    source.start()
    server.wait_watches(len(Kind))
    started = time.monotonic()
    source.stop()
    assert time.monotonic() - started < 1.0
    assert all(i._thread is None for i in source.informers.values())
    wait_for(lambda: server.active_watches == 0)


def test_server_timeout_ends_the_stream_and_it_rewatches(server: KubeServer, store: Store,
                                                         make_source: Callable[..., KubeSource]) -> None:
    source = make_source(watch_timeout=1)
    source.start()
    server.wait_watches(1)
    wait_for(lambda: len(server.watch_requests(PODS)) >= 2, timeout=4)
    assert source.informers[Kind.POD].stats.errors == 0
    server.put(pod("late"))
    wait_for(lambda: "late" in ips(store))


def test_load_config_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(KubeConfigError, match="no such file"):
        load_config(tmp_path / "missing")
    (tmp_path / "bad").write_text("{not: [valid")
    with pytest.raises(KubeConfigError, match="kubeconfig"):
        load_config(tmp_path / "bad")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubeConfigError, match="not running in a cluster"):
        load_config()
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    with pytest.raises(KubeConfigError, match="in-cluster"):
        load_config(service_account_dir=str(tmp_path / "nosa"))
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("tok")
    (sa / "namespace").write_text("kube-system")
    (sa / "ca.crt").write_text("")
    config = load_config(service_account_dir=str(sa))
    assert config.cluster.server == "https://10.96.0.1:443"


def test_pods_are_parsed_like_manifests(server: KubeServer, store: Store,
                                        make_source: Callable[..., KubeSource]) -> None:
    server.put(pod("a", "10.0.0.1", app="web"))
    make_source().start()
    assert store.wait_synced(5)
    got = store.pod("x", "a")
    assert isinstance(got, Pod) and got.uid == "uid-a" and got.labels == {"app": "web"}
    assert [p.name for p in store.local_pods()] == ["a"]


def test_https_with_the_kubeconfig_ca_and_token(tmp_path: Path, store: Store) -> None:
    server = KubeServer(tls_dir=tmp_path)
    try:
        server.put(pod("a"))
        source = KubeSource(store, load_config(server.kubeconfig(tmp_path / "kubeconfig")))
        source.start()
        try:
            assert store.wait_synced(5)
            server.wait_watches(len(Kind))
            server.put(pod("b", "10.0.0.2"))
            wait_for(lambda: "b" in ips(store))
            assert set(server.authorizations) == {"Bearer test-token"}
        finally:
            source.close()
        wait_for(lambda: server.active_watches == 0)
    finally:
        server.close()


def test_https_with_an_untrusted_certificate_never_syncs(tmp_path: Path, store: Store) -> None:
    other = tmp_path / "other"
    other.mkdir()
    server, impostor = KubeServer(tls_dir=tmp_path), KubeServer(tls_dir=other)
    try:
        assert impostor.ca_file is not None
        config = load_config(server.kubeconfig(tmp_path / "kubeconfig", ca_file=impostor.ca_file))
        source = KubeSource(store, config, kinds=(Kind.POD,), backoff=Backoff(initial=0.01, cap=0.05))
        source.start()
        try:
            wait_for(lambda: source.informers[Kind.POD].stats.errors >= 2)
            assert not store.synced and server.requests == []
            assert "SSL" in (source.informers[Kind.POD].stats.last_error or "")
        finally:
            source.close()
    finally:
        server.close()
        impostor.close()


@pytest.mark.parametrize("seed", range(3))
def test_random_churn_with_faults_converges_to_the_server_state(
        server: KubeServer, store: Store, make_source: Callable[..., KubeSource], seed: int) -> None:
    """Mutations interleaved at random with dropped connections (whole or mid-chunk), 410s,
    bookmarks, compactions and 500s: the store always ends equal to the server."""
    rng = random.Random(seed)
    source = make_source(page_size=3)
    source.start()
    assert store.wait_synced(5)
    names = [f"p{i}" for i in range(8)]
    for step in range(120):
        action = rng.random()
        name = rng.choice(names)
        exists = ("x", name) in server.objects["Pod"]
        if action < 0.45:
            server.put(pod(name, f"10.0.{step // 250}.{step % 250 + 1}", v=str(step)))
        elif action < 0.65 and exists:
            server.delete("Pod", name, "x")
        elif action < 0.72:
            server.drop_watches(mid_chunk=rng.random() < 0.5)
        elif action < 0.77:
            server.compact()
            server.inject_error(410)
        elif action < 0.85:
            server.bump()
            server.bookmark()
        elif action < 0.88:
            server.fail_next = rng.randint(1, 2)
        if rng.random() < 0.2:
            time.sleep(0.005)

    def expected() -> dict[str, str]:
        with server.cond:
            return {n: o["status"]["podIP"] for (_, n), o in server.objects["Pod"].items()}

    wait_for(lambda: ips(store) == expected(), timeout=10)
    labels = {n: p.labels["v"] for (_, n), p in store.pods().items()}
    assert labels == {n: o["metadata"]["labels"]["v"] for (_, n), o in server.objects["Pod"].items()}


def test_two_sources_sync_only_when_both_have_listed(server: KubeServer, store: Store, tmp_path: Path,
                                                     make_source: Callable[..., KubeSource]) -> None:
    manifests_dir = tmp_path / "manifests"
    manifests_dir.mkdir()
    server.fail_next = 3
    kube = make_source((Kind.POD,))  # registered when made, before anything starts
    manifests = ManifestSource(store, manifests_dir)
    manifests.start()
    try:
        assert not store.synced  # the directory was read, the API not yet
        kube.start()
        assert store.wait_synced(5)
    finally:
        manifests.stop()


def service(name: str, ip: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "x"},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}], **spec}}


def endpoint_slice(name: str, service: str, *ips: str) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "x", "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "endpoints": [{"addresses": [ip]} for ip in ips],
            "ports": [{"name": "http", "port": 8080}]}


def node(name: str, cidr: str, ip: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "spec": {"podCIDR": cidr}, "status": {"addresses": [{"type": "InternalIP", "address": ip}],
                                                  "conditions": [{"type": "Ready", "status": "True"}]}}


SERVICE_KINDS = (Kind.SERVICE, Kind.ENDPOINT_SLICE, Kind.NODE)


def test_services_slices_and_nodes_listed_and_watched(server: KubeServer, store: Store, changes: list[Change],
                                                      make_source: Callable[..., KubeSource]) -> None:
    server.put(service("web", "10.96.0.10"))
    server.put(endpoint_slice("web-1", "web", "10.0.0.1", "10.0.0.2"))
    server.put(node("n2", "10.244.2.0/24", "192.168.1.12"))
    source = make_source(SERVICE_KINDS, page_size=1)
    source.start()
    assert store.wait_synced(5)
    web = store.service("x", "web")
    assert isinstance(web, Service) and str(web.cluster_ips[0]) == "10.96.0.10"
    assert [len(s.endpoints) for s in store.slices_for("x", "web")] == [2]
    assert isinstance(store.node("n2"), Node) and store.pods() == {}
    server.wait_watches(3)
    assert {p for p, q in server.requests if q.get("watch")} == {
        "/api/v1/services", "/apis/discovery.k8s.io/v1/endpointslices", "/api/v1/nodes"}
    server.put(endpoint_slice("web-1", "web", "10.0.0.1"))
    server.put(service("web", "10.96.0.10", type="NodePort"))
    server.put(node("n3", "10.244.3.0/24", "192.168.1.13"))
    server.delete("Node", "n2")
    wait_for(lambda: set(store.nodes()) == {"n3"})
    wait_for(lambda: [len(s.endpoints) for s in store.slices_for("x", "web")] == [1])
    wait_for(lambda: store.service("x", "web").type is ServiceType.NODE_PORT)  # type: ignore[union-attr]
    n2 = [c for c in changes if c.key == "n2"]
    assert [(c.old is None, c.new is None) for c in n2] == [(True, False), (False, True)]
    server.delete("EndpointSlice", "web-1", "x")
    wait_for(lambda: store.slices_for("x", "web") == ())
    slices = [c for c in changes if c.kind is Kind.ENDPOINT_SLICE]
    assert len(slices) == 3 and isinstance(slices[1].new, EndpointSlice) and slices[2].new is None


def test_bad_services_slices_and_nodes_from_the_api(server: KubeServer, store: Store,
                                                    make_source: Callable[..., KubeSource]) -> None:
    server.put(service("bad", "10.96.0.300"))
    server.put(node("n2", "10.244.2.0/24", "192.168.1.12"))
    make_source(SERVICE_KINDS).start()
    assert store.wait_synced(5)
    bad = store.service("x", "bad")
    assert bad is not None and bad.error is not None and "spec.clusterIPs[0]" in bad.error and not bad.proxied
    server.put(node("n2", "10.244.2.0/33", "192.168.1.12"))  # unreadable: the last good one stays
    server.put(endpoint_slice("s", "web", "fd00::1"))  # an IPv6 address in an IPv4 slice: skipped
    server.put(node("n3", "10.244.3.0/24", "192.168.1.13"))
    wait_for(lambda: "n3" in store.nodes())
    assert str(store.node("n2").pod_cidrs[0]) == "10.244.2.0/24"  # type: ignore[union-attr]
    assert store.endpoint_slices() == {}
    # A Node is cluster-scoped: its delete finds it by name even when the object cannot be read.
    server.objects["Node"][("", "n2")]["spec"]["podCIDR"] = "nonsense"
    server.delete("Node", "n2")
    wait_for(lambda: set(store.nodes()) == {"n3"})


def test_the_kinds_a_source_watches_are_its_own(server: KubeServer, store: Store,
                                                make_source: Callable[..., KubeSource]) -> None:
    source = make_source((Kind.NAMESPACE, Kind.POD, Kind.NETWORK_POLICY))
    source.start()
    assert store.wait_synced(5)
    server.wait_watches(3)
    assert set(source.status()) == {"Namespace", "Pod", "NetworkPolicy"}
    assert not any(p in ("/api/v1/services", "/api/v1/nodes") or "discovery" in p for p, _ in server.requests)
