"""deploy/podnet.yaml, checked offline against the Kubernetes API schemas and against podnet itself:
RBAC is exactly what the agent's informers read, the host paths are the ones podnet's defaults
name, the containers' arguments are accepted by podnet's own parsers, and the install step builds
plugins that run on any node."""

from __future__ import annotations

import argparse
import copy
import inspect
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from deploy.deployfiles import REPO, argv, container, containers, documents, environment, one, pod_spec
from podnet.agent import runner
from podnet.agent.objects import Kind
from podnet.agent.sources.informer import PATHS
from podnet.agent.sources.kube import KubeSource
from podnet.agent.sources.schemas import KUBERNETES_VERSION
from podnet.cli import agent_cmd, daemon_cmd, install_cmd
from podnet.cli.main import build_parser
from podnet.daemon import protocol
from podnet.daemon.native import build
from podnet.ipam.config import DEFAULT_DATA_DIR
from podnet.kernel.netns import NETNS_RUN_DIR
from podnet.runtime.cache import DEFAULT_CACHE_DIR

# The oldest schemas the pinned kubernetes-validate (>=1.28) ships, the version podnet's own
# manifest checks pin, and the newest this installation ships.
VERSIONS = sorted({"1.28", KUBERNETES_VERSION, kubernetes_validate.latest_version()})
VERBS = {"get", "list", "watch"}


@pytest.mark.parametrize("version", VERSIONS)
def test_every_document_validates_strictly(version: str) -> None:
    docs = documents()
    assert [d["kind"] for d in docs] == ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                                         "ConfigMap", "DaemonSet"]  # the namespace first: apply in one go
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']} at Kubernetes {version}: {exc.message} "
                        f"at {'.'.join(map(str, exc.absolute_path))}")


def test_the_validation_rejects_an_unknown_field() -> None:
    # The negative control: strict validation must see a misspelt field deep in the pod template.
    ds = copy.deepcopy(one("DaemonSet"))
    ds["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, KUBERNETES_VERSION, strict=True)


def _group_resource(path: str) -> tuple[str, str]:
    """/api/v1/pods -> ("", "pods"); /apis/networking.k8s.io/v1/networkpolicies -> (group, plural)."""
    m = re.fullmatch(r"/api/v1/([a-z]+)|/apis/([a-z0-9.-]+)/v1/([a-z]+)", path)
    assert m, f"an informer path this test does not understand: {path}"
    return ("", m.group(1)) if m.group(1) else (m.group(2), m.group(3))


def _watched() -> set[tuple[str, str]]:
    # KubeSource watches every Kind unless told otherwise, and the agent does not tell it.
    assert inspect.signature(KubeSource).parameters["kinds"].default == tuple(Kind)
    assert "kinds=" not in inspect.getsource(runner.build_sources)
    assert set(PATHS) == set(Kind)
    watched = set()
    for kind in Kind:
        group, resource = _group_resource(PATHS[kind])
        # The path's group is the one the kind's apiVersion names: RBAC is by group.
        assert group == (kind.api_version.rpartition("/")[0]), kind
        watched.add((group, resource))
    return watched


def test_the_cluster_role_grants_exactly_get_list_watch_on_what_the_agent_reads() -> None:
    role = one("ClusterRole")
    granted: set[tuple[str, str, str]] = set()
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, f"no names, no URLs, no wildcards: {rule}"
        granted |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    assert granted == {(g, r, v) for g, r in _watched() for v in VERBS}
    assert not any("*" in part for grant in granted for part in grant)


def test_the_role_is_bound_to_the_daemonset_service_account_only() -> None:
    binding, account = one("ClusterRoleBinding"), one("ServiceAccount")
    namespace = one("Namespace")["metadata"]["name"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": one("ClusterRole")["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": namespace}]
    assert pod_spec()["serviceAccountName"] == account["metadata"]["name"]
    for doc in documents():
        if doc["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == namespace, doc["kind"]


# Each host path podnet uses on a node, and where podnet's code names it.
CNI_PATHS = {
    install_cmd.DEFAULT_BIN_DIR: "cni-bin",
    install_cmd.DEFAULT_CONF_DIR: "cni-conf",
    DEFAULT_CACHE_DIR: "cni-state",
    os.path.dirname(protocol.DEFAULT_SOCKET): "run-podnet",
    NETNS_RUN_DIR: "netns",
}
# Which container mounts which volume, and how; least privilege (read-only where nothing is written).
MOUNTS = {
    "install-cni": {"cni-bin": "rw"},
    "daemon": {"cni-bin": "ro", "run-podnet": "rw", "cni-state": "rw", "cni-conf": "ro", "netns": "ro"},
    "agent": {"run-podnet": "rw", "cni-conf": "rw", "cni-state": "ro"},
}


def test_the_host_paths_are_exactly_the_ones_podnet_uses() -> None:
    # Everything else podnet puts on a node lives below these.
    assert DEFAULT_DATA_DIR.startswith(DEFAULT_CACHE_DIR + "/")
    assert os.path.dirname(agent_cmd.AGENT_SOCKET) == os.path.dirname(protocol.DEFAULT_SOCKET)
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    assert {name: v["hostPath"]["path"] for name, v in volumes.items()} == {
        name: path for path, name in CNI_PATHS.items()}
    assert all(v["hostPath"]["type"] == "DirectoryOrCreate" for v in volumes.values())
    seen = {}
    for c in containers():
        mounts = c.get("volumeMounts", [])
        seen[c["name"]] = {m["name"]: "ro" if m.get("readOnly") else "rw" for m in mounts}
        for m in mounts:
            # Mounted where the host has it, so podnet's defaults hold in the container unchanged.
            assert m["mountPath"] == volumes[m["name"]]["hostPath"]["path"], m
            # Pods' namespaces appear under /run/netns after the container started; nothing the
            # container mounts goes back to the node.
            wanted = "HostToContainer" if m["name"] == "netns" else None
            assert m.get("mountPropagation") == wanted, m
    assert seen == MOUNTS


def test_it_runs_on_every_node_in_the_node_network() -> None:
    spec = pod_spec()
    assert spec["tolerations"] == [{"operator": "Exists"}]  # every taint, every effect
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "Default"
    assert spec["hostPID"] is True  # the daemon reads its callers' /proc/<pid>
    assert spec["priorityClassName"] == "system-node-critical"
    assert one("DaemonSet")["spec"]["updateStrategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
    namespace = one("Namespace")["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/enforce"] == "privileged"
    ds = one("DaemonSet")
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in ds["spec"]["selector"]["matchLabels"].items())


def test_every_container_runs_the_image_of_this_version() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert {c["image"] for c in containers()} == {f"localhost/podnet:{version}"}


def _parse(c: dict[str, Any]) -> argparse.Namespace:
    args = argv(c)
    assert not any("$(" in a for a in args), f"{c['name']}: an unresolved reference in {args}"
    try:
        return build_parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"{c['name']}: podnet refuses its arguments {args} (its message is above)")


def test_podnet_accepts_every_container_s_arguments() -> None:
    install, daemon, agent = (_parse(container(n)) for n in ("install-cni", "daemon", "agent"))
    assert install.func is install_cmd.run
    assert install.bin_dir == install_cmd.DEFAULT_BIN_DIR and install.no_conflist
    assert daemon.func is daemon_cmd.run
    assert daemon.socket == protocol.DEFAULT_SOCKET  # where every shim looks without a config
    assert daemon.plugin_dirs == [install_cmd.DEFAULT_BIN_DIR]  # the node's plugins, not the image's
    assert agent.func is agent_cmd.run_agent
    assert agent.in_cluster and agent.manifests is None and agent.kubeconfig is None
    assert agent.node_name == "node-1"  # the downward API's spec.nodeName
    assert agent.socket == agent_cmd.AGENT_SOCKET  # where the plugins ask it
    assert agent.write_cni_config and agent.cni_conf_dir is None  # the default conf dir, mounted
    assert daemon.log_level == agent.log_level == one("ConfigMap")["data"]["log-level"]


@pytest.mark.parametrize(("key", "value"), [("log-level", "verbose"), ("verify-period", "0"),
                                            ("cni-network", "vxlan")])
def test_a_bad_setting_is_refused_by_podnet_s_parser(key: str, value: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # The other side of the test above: the settings really reach the parser.
    config, ds = one("ConfigMap"), one("DaemonSet")
    config["data"][key] = value
    monkeypatch.setattr("deploy.deployfiles.documents", lambda: [config, ds])
    with pytest.raises(pytest.fail.Exception, match="refuses its arguments"):
        for name in ("daemon", "agent"):
            _parse(container(name))


def test_every_setting_is_used_and_every_used_setting_exists() -> None:
    data = one("ConfigMap")["data"]
    refs = [var["valueFrom"]["configMapKeyRef"] for c in containers() for var in c.get("env", [])
            if "configMapKeyRef" in var.get("valueFrom", {})]
    assert {r["name"] for r in refs} == {one("ConfigMap")["metadata"]["name"]}
    assert set(data) == {r["key"] for r in refs if not r.get("optional")}
    for c in containers():
        environment(c)  # fails on a required key the ConfigMap lacks


def _metrics_port(name: str) -> int:
    args = argv(container(name))
    return int(args[args.index("--metrics-addr") + 1].rpartition(":")[2])


def test_liveness_probes_ask_each_container_s_own_metrics_endpoint() -> None:
    ports = {_metrics_port("daemon"), _metrics_port("agent")}
    assert len(ports) == 2
    for name in ("daemon", "agent"):
        probe = container(name)["livenessProbe"]["httpGet"]
        # Bound to the node's loopback (host network); the kubelet probes from the node.
        assert probe == {"host": "127.0.0.1", "port": _metrics_port(name), "path": "/metrics"}


def test_the_install_step_builds_plugins_that_run_on_any_node(tmp_path: Path) -> None:
    """The init container's own arguments and CC, with the bin dir moved into tmp: a statically
    linked native shim (the node's runtime runs it outside the image) and a link per plugin."""
    c = container("install-cni")
    env = environment(c)
    image_cc = env["CC"]
    assert image_cc == "/opt/podnet/deploy/cc-static"  # where deploy/Containerfile copies it
    cc = REPO / "deploy" / "cc-static"
    try:
        build.find_compiler()
    except build.NoCompiler:
        pytest.skip("needs a C compiler (make test installs gcc)")
    args = argv(c)
    args[args.index("--bin-dir") + 1] = str(tmp_path / "bin")
    proc = subprocess.run([sys.executable, "-m", "podnet.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, "CC": str(cc)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Python shims" not in proc.stderr  # the native shim was built, not skipped
    shim = tmp_path / "bin" / build.BINARY
    assert not _interpreter(shim.read_bytes()), "the shim needs a dynamic loader"
    from podnet.daemon import registry

    for plugin in registry.available():
        assert os.readlink(tmp_path / "bin" / plugin) == build.BINARY
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin"]  # no network config anywhere


def _interpreter(elf: bytes) -> bool:
    """Whether a 64-bit little-endian ELF has a PT_INTERP program header (a dynamic loader)."""
    assert elf[:4] == b"\x7fELF" and elf[4] == 2 and elf[5] == 1
    phoff = int.from_bytes(elf[32:40], "little")
    size, count = int.from_bytes(elf[54:56], "little"), int.from_bytes(elf[56:58], "little")
    types = (int.from_bytes(elf[phoff + i * size:phoff + i * size + 4], "little") for i in range(count))
    return 3 in types  # PT_INTERP
