"""deploy/: the manifests as parsed documents, and Kubernetes' own rules for what a container runs
(environment from the downward API and ConfigMaps, ``$(VAR)`` in args), applied offline."""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
MANIFEST = DEPLOY / "podnet.yaml"
# What a container's downward-API fields resolve to in these tests.
FIELDS = {"spec.nodeName": "node-1"}


def documents() -> list[dict[str, Any]]:
    """Every document of every manifest kubectl would apply from deploy/ (it reads .yaml, .yml,
    .json); a copy the caller may change."""
    return copy.deepcopy(_parsed())


@functools.cache
def _parsed() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(DEPLOY.iterdir()):
        if path.suffix in (".yaml", ".yml", ".json"):
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def one(kind: str) -> dict[str, Any]:
    found = [d for d in documents() if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in deploy/, found {len(found)}"
    return found[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = one("DaemonSet")["spec"]["template"]["spec"]
    return spec


def containers() -> list[dict[str, Any]]:
    """Init containers first, then the main ones."""
    spec = pod_spec()
    return [*spec.get("initContainers", []), *spec["containers"]]


def container(name: str) -> dict[str, Any]:
    return next(c for c in containers() if c["name"] == name)


def environment(c: dict[str, Any]) -> dict[str, str]:
    """The container's variables as the kubelet sets them; a missing ConfigMap key that is not
    optional fails (the kubelet would not start the container)."""
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in documents() if d["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            env[var["name"]] = FIELDS[source["fieldRef"]["fieldPath"]]
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            data = configmaps.get(ref["name"], {})
            if ref["key"] in data:
                env[var["name"]] = data[ref["key"]]
            else:
                assert ref.get("optional"), f"{c['name']}: ConfigMap {ref['name']} has no key {ref['key']}"
        else:
            raise AssertionError(f"{c['name']}: env {var['name']} from an unexpected source {source}")
    return env


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' expansion of args: $(VAR) of a defined variable, $$ for a literal $; a
    reference to an undefined variable stays as written (the kubelet leaves it)."""
    def one_ref(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _REFERENCE.sub(one_ref, text)


def argv(c: dict[str, Any]) -> list[str]:
    """The arguments the container's podnet entrypoint gets."""
    assert "command" not in c, f"{c['name']}: the image's entrypoint is podnet; give args only"
    env = environment(c)
    return [expand(a, env) for a in c["args"]]
