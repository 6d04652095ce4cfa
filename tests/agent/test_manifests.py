"""The manifest-directory source, for real: files on disk, inotify, the store it feeds."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podnet.agent.model import Direction, NetworkPolicy, Service
from podnet.agent.objects import Kind
from podnet.agent.sources import manifest_files
from podnet.agent.sources.manifests import ManifestError, ManifestSource
from podnet.agent.store import Store

NS = """apiVersion: v1
kind: Namespace
metadata: {{name: {name}, labels: {{ns: {name}}}}}
"""
POD = """apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: x, labels: {{pod: {name}}}}}
spec:
  nodeName: n1
  containers: [{{name: c, image: busybox, ports: [{{name: web, containerPort: 80}}]}}]
status: {{podIP: {ip}}}
"""
POLICY = """apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: {name}, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  ingress: [{{from: [{{podSelector: {{}}}}], ports: [{{port: web}}]}}]
"""


def wait_for(cond: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def write(path: Path, text: str) -> None:
    # Written in place (not renamed) on purpose: the source must cope with in-place writers.
    path.write_text(text)


@pytest.fixture
def store() -> Store:
    return Store("n1")


@pytest.fixture
def source(tmp_path: Path, store: Store) -> Iterator[ManifestSource]:
    src = ManifestSource(store, tmp_path, debounce=0.05, retry=0.1, poll=0.5)
    yield src
    src.stop()


def test_initial_read_multi_document_list_json_and_other_kinds(tmp_path: Path, store: Store,
                                                               source: ManifestSource) -> None:
    write(tmp_path / "a.yaml", NS.format(name="x") + "---\n" + POD.format(name="a", ip="10.0.0.1")
          + "---\n# an empty document\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n")
    write(tmp_path / "b.json", json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "y"}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": "p", "namespace": "x"}, "spec": {"podSelector": {}}}]}))
    write(tmp_path / "c.yml", POLICY.format(name="q"))
    write(tmp_path / "notes.txt", "not a manifest")
    write(tmp_path / ".hidden.yaml", "{{{")
    source.start()
    assert store.synced
    assert set(store.namespaces()) == {"x", "y"}
    assert [p.name for p in store.local_pods()] == ["a"]
    assert set(store.policies()) == {("x", "p"), ("x", "q")}
    assert store.policy("x", "q").ingress[0].ports[0].port == "web"  # type: ignore[union-attr]
    assert source.status() == {}


def test_changes_followed_with_inotify(tmp_path: Path, store: Store, source: ManifestSource) -> None:
    write(tmp_path / "pods.yaml", POD.format(name="a", ip="10.0.0.1"))
    source.start()
    write(tmp_path / "pods.yaml",
          POD.format(name="a", ip="10.0.0.2") + "---\n" + POD.format(name="b", ip="10.0.0.3"))
    wait_for(lambda: len(store.pods()) == 2)
    assert str(store.pod("x", "a").ips[0]) == "10.0.0.2"  # type: ignore[union-attr]
    # An atomic replace (write a hidden temporary, rename over) is seen too.
    tmp = tmp_path / ".pods.yaml.tmp"
    tmp.write_text(POD.format(name="c", ip="10.0.0.4"))
    os.rename(tmp, tmp_path / "pods.yaml")
    wait_for(lambda: set(store.pods()) == {("x", "c")})
    (tmp_path / "pods.yaml").unlink()
    wait_for(lambda: not store.pods())


def test_half_written_file_keeps_previous_objects_until_whole(tmp_path: Path, store: Store,
                                                             source: ManifestSource) -> None:
    path = tmp_path / "pods.yaml"
    whole = POD.format(name="a", ip="10.0.0.1") + "---\n" + POD.format(name="b", ip="10.0.0.2")
    write(path, whole)
    source.start()
    assert len(store.pods()) == 2
    scans = source.scans
    write(path, whole[: whole.index("containers")] + "  containers: [{name: c, ima")
    wait_for(lambda: source.scans > scans + 1)  # seen, and retried at least once
    assert len(store.pods()) == 2
    assert "YAML syntax error" in source.status()[str(path)]
    assert "previous objects stay in force" in source.status()[str(path)]
    write(path, whole.replace("10.0.0.1", "10.0.0.9"))
    wait_for(lambda: str(store.pod("x", "a").ips[0]) == "10.0.0.9")  # type: ignore[union-attr]
    assert source.status() == {}


def test_unparsable_new_file_applies_nothing_and_is_retried(tmp_path: Path, store: Store,
                                                           source: ManifestSource) -> None:
    source.start()
    path = tmp_path / "p.json"
    write(path, '{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ')
    wait_for(lambda: str(path) in source.status())
    assert "JSON syntax error" in source.status()[str(path)] and not store.namespaces()
    write(path, '{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "z"}}')
    wait_for(lambda: "z" in store.namespaces())


def test_duplicates_first_file_wins(tmp_path: Path, store: Store, source: ManifestSource) -> None:
    write(tmp_path / "1.yaml", POD.format(name="a", ip="10.0.0.1"))
    write(tmp_path / "2.yaml", POD.format(name="a", ip="10.0.0.2"))
    source.start()
    assert str(store.pod("x", "a").ips[0]) == "10.0.0.1"  # type: ignore[union-attr]
    assert "already defined in" in source.status()[str(tmp_path / "2.yaml")]
    (tmp_path / "1.yaml").unlink()
    wait_for(lambda: str(store.pod("x", "a").ips[0]) == "10.0.0.2")  # type: ignore[union-attr]
    wait_for(lambda: source.status() == {})


def test_bad_objects_reported_pod_skipped_policy_fails_closed(tmp_path: Path, store: Store,
                                                              source: ManifestSource) -> None:
    write(tmp_path / "a.yaml", "\n---\n".join([
        POD.format(name="good", ip="10.0.0.1"),
        POD.format(name="badip", ip="10.0.0.300"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: noc, namespace: x}\nspec: {}\n",  # schema: containers
        POLICY.format(name="typo").replace("podSelector: {matchLabels", "podselector: {matchLabels"),
        POLICY.format(name="badport").replace("port: web", "port: 0"),
        "just a string",
    ]))
    source.start()
    assert set(store.pods()) == {("x", "good")}
    typo, badport = store.policy("x", "typo"), store.policy("x", "badport")
    for pol in (typo, badport):
        assert isinstance(pol, NetworkPolicy) and pol.error
        assert pol.directions == {Direction.INGRESS, Direction.EGRESS} and not pol.ingress
    status = source.status()[str(tmp_path / "a.yaml")]
    for text in ("Pod x/badip", "status.podIP", "Pod x/noc", "containers", "NetworkPolicy x/typo",
                 "spec.ingress[0].ports[0].port", "document 6", "fail-closed", "skipped"):
        assert text in status, text


def test_changed_while_read_is_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.yaml"
    write(path, NS.format(name="x"))
    real_stat = os.stat

    def growing_stat(p: object) -> os.stat_result:
        st = real_stat(p)  # type: ignore[arg-type]
        return os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid,
                               st.st_size + 1, st.st_atime, st.st_mtime, st.st_ctime))

    monkeypatch.setattr(manifest_files.os, "stat", growing_stat)
    with pytest.raises(manifest_files.Unreadable, match="changed while being read"):
        manifest_files.load(str(path))


def test_missing_directory_and_directory_removed(tmp_path: Path, store: Store) -> None:
    with pytest.raises(ManifestError, match="not a directory"):
        ManifestSource(store, tmp_path / "nope").start()
    d = tmp_path / "m"
    d.mkdir()
    write(d / "a.yaml", NS.format(name="x"))
    src = ManifestSource(store, d, debounce=0.05, retry=0.1)
    src.start()
    try:
        (d / "a.yaml").rename(tmp_path / "a.yaml")
        d.rmdir()
        wait_for(lambda: str(d) in src.status())
        d.mkdir()
        (tmp_path / "a.yaml").rename(d / "b.yaml")
        wait_for(lambda: src.status() == {} and "x" in store.namespaces())
        write(d / "c.yaml", NS.format(name="y"))  # followed again after the directory came back
        wait_for(lambda: "y" in store.namespaces())
    finally:
        src.stop()


def test_store_synced_only_after_the_first_read(tmp_path: Path, store: Store) -> None:
    src = ManifestSource(store, tmp_path)
    store.register_source("kube", [Kind.POD])
    src.start()
    try:
        assert not store.synced  # the other source has not listed yet
        store.replace(Kind.POD, "kube", [])
        assert store.synced
    finally:
        src.stop()


yaml_text = st.text(alphabet=st.sampled_from(list("abkindPod:v1 -{}[],\n\"'#&*!|>%@`\t0123456789.")),
                    max_size=200)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["apiVersion", "kind", "metadata", "name", "items", "spec", "labels"]), inner,
        max_size=4),
    max_leaves=15)


@settings(max_examples=300, deadline=None)
@given(text=yaml_text | json_values.map(json.dumps), suffix=st.sampled_from([".yaml", ".json"]))
def test_fuzz_any_file_gives_objects_or_a_clear_error(text: str, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "f" + suffix)
        Path(path).write_text(text)
        try:
            loaded, _ = manifest_files.load(path)
        except manifest_files.Unreadable as exc:
            assert str(exc)
            return
        assert all(isinstance(e, str) and e for e in loaded.errors)


@settings(max_examples=100, deadline=None)
@given(doc=json_values, kind=st.sampled_from(["Pod", "Namespace", "NetworkPolicy", "Service", "EndpointSlice",
                                             "Node", "List"]))
def test_fuzz_objects_of_known_kinds(doc: object, kind: str) -> None:
    api = {"NetworkPolicy": "networking.k8s.io/v1", "EndpointSlice": "discovery.k8s.io/v1"}.get(kind, "v1")
    raw = {"apiVersion": api, "kind": kind,
           "metadata": {"name": "a", "namespace": "x"}, "spec": doc, "items": doc if kind == "List" else None}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "f.json")
        Path(path).write_text(json.dumps(raw))
        try:
            loaded, _ = manifest_files.load(path)
        except manifest_files.Unreadable as exc:
            assert str(exc)
            return
        for obj in loaded.objects:
            assert not isinstance(obj, NetworkPolicy) or obj.error is None or obj.directions == {
                Direction.INGRESS, Direction.EGRESS}
            assert not isinstance(obj, Service) or obj.error is None or not obj.proxied


def test_labels_are_read_only(tmp_path: Path, store: Store, source: ManifestSource) -> None:
    write(tmp_path / "a.yaml", POD.format(name="a", ip="10.0.0.1"))
    source.start()
    with pytest.raises(TypeError):
        store.pod("x", "a").labels["pod"] = "b"  # type: ignore[index, union-attr]


def test_configmap_style_symlink_swap(tmp_path: Path, store: Store, source: ManifestSource) -> None:
    """A ConfigMap volume: files are symlinks through ``..data``, which the kubelet swaps
    atomically to a new hidden directory on every update."""
    def publish(version: int, text: str) -> None:
        data = tmp_path / f"..v{version}"
        data.mkdir()
        (data / "pods.yaml").write_text(text)
        (tmp_path / "..data_tmp").symlink_to(data.name)
        os.rename(tmp_path / "..data_tmp", tmp_path / "..data")

    publish(1, POD.format(name="a", ip="10.0.0.1"))
    (tmp_path / "pods.yaml").symlink_to("..data/pods.yaml")
    source.start()
    assert set(store.pods()) == {("x", "a")}
    publish(2, POD.format(name="b", ip="10.0.0.2"))
    wait_for(lambda: set(store.pods()) == {("x", "b")})


SERVICE = """apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: x}}
spec:
  clusterIP: {ip}
  ports: [{{name: http, port: 80, targetPort: web}}]
"""
SLICE = """apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}, namespace: x, labels: {{kubernetes.io/service-name: {service}}}}}
addressType: IPv4
endpoints: [{{addresses: [{ip}], conditions: {{ready: true}}, nodeName: n1}}]
ports: [{{name: http, port: 8080}}]
"""
NODE = """apiVersion: v1
kind: Node
metadata: {{name: {name}}}
spec: {{podCIDR: {cidr}}}
status: {{addresses: [{{type: InternalIP, address: {ip}}}]}}
"""


def test_services_slices_and_nodes(tmp_path: Path, store: Store, source: ManifestSource) -> None:
    write(tmp_path / "svc.yaml", SERVICE.format(name="web", ip="10.96.0.10") + "---\n"
          + SLICE.format(name="web-1", service="web", ip="10.0.0.1") + "---\n"
          + NODE.format(name="n2", cidr="10.244.2.0/24", ip="192.168.1.12"))
    source.start()
    assert store.synced and source.status() == {}
    web = store.service("x", "web")
    assert web is not None and web.proxied and str(web.cluster_ips[0]) == "10.96.0.10"
    assert [s.name for s in store.slices_for("x", "web")] == ["web-1"]
    node = store.node("n2")
    assert node is not None and str(node.pod_cidrs[0]) == "10.244.2.0/24"
    write(tmp_path / "svc.yaml", SERVICE.format(name="web", ip="10.96.0.11"))
    wait_for(lambda: not store.nodes() and not store.endpoint_slices())
    assert str(store.service("x", "web").cluster_ips[0]) == "10.96.0.11"  # type: ignore[union-attr]


def test_invalid_services_are_kept_and_reported_bad_slices_and_nodes_skipped(
        tmp_path: Path, store: Store, source: ManifestSource) -> None:
    path = tmp_path / "bad.yaml"
    write(path, "\n---\n".join([
        # The API server's rules that no schema holds: the Service is kept, its error reported.
        SERVICE.format(name="local", ip="10.96.0.1") + "  externalTrafficPolicy: Local",
        # A field the schema does not know: kept as a Service that is not proxied.
        SERVICE.format(name="typo", ip="10.96.0.2") + "  sessionAfinity: ClientIP",
        SLICE.format(name="s1", service="web", ip="fd00::1"),
        NODE.format(name="n3", cidr="10.244.3.0", ip="192.168.1.13"),
        NODE.format(name="n4", cidr="10.244.4.0/24", ip="192.168.1.14") + "bogus: 1"]))
    source.start()
    status = source.status()[str(path)]
    local, typo = store.service("x", "local"), store.service("x", "typo")
    assert local is not None and local.error is not None and not local.proxied
    assert "spec.externalTrafficPolicy" in status and "(not proxied)" in status
    assert typo is not None and typo.error is not None and "sessionAfinity" in typo.error
    assert "EndpointSlice x/s1: endpoints[0].addresses[0]" in status
    assert "Node n3: spec.podCIDR" in status
    assert "Node n4: (object): Additional properties" in status and "bogus" in status
    assert "(skipped)" in status
    assert not store.endpoint_slices() and not store.nodes()


def test_a_source_feeds_only_its_kinds(tmp_path: Path, store: Store) -> None:
    write(tmp_path / "all.yaml", POLICY.format(name="p") + "---\n" + NODE.format(
        name="n2", cidr="10.244.2.0/24", ip="192.168.1.12") + "---\n"
        + SERVICE.format(name="bad", ip="10.96.0.1") + "  externalTrafficPolicy: Local")
    src = ManifestSource(store, tmp_path, kinds=(Kind.NAMESPACE, Kind.POD, Kind.NETWORK_POLICY))
    store.register_source("kube", [Kind.NODE])
    src.start()
    try:
        assert store.pending_lists() == {("kube", Kind.NODE)}  # the manifests listed all of theirs
        assert set(store.policies()) == {("x", "p")} and not store.nodes() and not store.services()
        assert src.status() == {}  # a bad Service is not this source's business
        store.replace(Kind.NODE, "kube", [])
        assert store.synced
    finally:
        src.stop()
