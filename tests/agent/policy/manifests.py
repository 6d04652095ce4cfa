"""The model's values written back out as Kubernetes objects, into an agent's manifest directory.

The e2e tests keep their world as model values (``world.py``); the agent reads only what a cluster
would hand it, so every Namespace, Pod and NetworkPolicy goes through here as the JSON object the
API server would serve. A file is replaced atomically (temp file + rename): the agent never sees
half of one, and one file's objects land in the store in one scan.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from podnet.agent.model import (
    Direction,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    Peer,
    Pod,
    PolicyPort,
    Rule,
)

Object = Namespace | Pod | NetworkPolicy


def selector(sel: LabelSelector) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if sel.match_labels:
        out["matchLabels"] = dict(sel.match_labels)
    if sel.requirements:
        out["matchExpressions"] = [
            {"key": r.key, "operator": r.operator.value, **({"values": sorted(r.values)} if r.values else {})}
            for r in sel.requirements]
    return out


def _peer(p: Peer) -> dict[str, Any]:
    if p.ip_block is not None:
        block: dict[str, Any] = {"cidr": str(p.ip_block.cidr)}
        if p.ip_block.except_:
            block["except"] = [str(e) for e in p.ip_block.except_]
        return {"ipBlock": block}
    out: dict[str, Any] = {}
    if p.pod_selector is not None:
        out["podSelector"] = selector(p.pod_selector)
    if p.namespace_selector is not None:
        out["namespaceSelector"] = selector(p.namespace_selector)
    return out


def _port(p: PolicyPort) -> dict[str, Any]:
    out: dict[str, Any] = {"protocol": p.protocol.value}
    if p.port is not None:
        out["port"] = p.port
    if p.end_port is not None:
        out["endPort"] = p.end_port
    return out


def _rule(r: Rule, peers_key: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if r.peers:
        out[peers_key] = [_peer(p) for p in r.peers]
    if r.ports:
        out["ports"] = [_port(p) for p in r.ports]
    return out


# What a policy with ``error`` set is written as: a readable selector and a rule the agent refuses
# (an endPort below its port), so the agent itself finds it invalid and enforces it fail-closed.
INVALID_RULE = {"ports": [{"protocol": "TCP", "port": 81, "endPort": 80}]}


def policy(p: NetworkPolicy) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "podSelector": selector(p.pod_selector),
        "policyTypes": [d.value for d in (Direction.INGRESS, Direction.EGRESS) if d in p.directions],
        "ingress": [_rule(r, "from") for r in p.ingress],
        "egress": [_rule(r, "to") for r in p.egress],
    }
    if p.error is not None:
        spec["ingress"] = [INVALID_RULE]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": p.namespace, "name": p.name}, "spec": spec}


def namespace(n: Namespace) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n.name, "labels": dict(n.labels)}}


def pod(p: Pod) -> dict[str, Any]:
    """A running pod (or a pending one, when it has no addresses yet: its status lags its ADD)."""
    ports = [{"name": c.name, "containerPort": c.port, "protocol": c.protocol.value} for c in p.ports]
    status: dict[str, Any] = {"phase": "Running" if p.ips else "Pending"}
    if p.ips:
        status["podIP"] = str(p.ips[0])
        status["podIPs"] = [{"ip": str(ip)} for ip in p.ips]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": p.namespace, "name": p.name, "labels": dict(p.labels)},
            "spec": {"nodeName": p.node_name, "containers": [{"name": "server", "image": "busybox",
                                                               "ports": ports}]},
            "status": status}


def to_object(obj: Object) -> dict[str, Any]:
    if isinstance(obj, Namespace):
        return namespace(obj)
    if isinstance(obj, Pod):
        return pod(obj)
    return policy(obj)


class ManifestDir:
    """The agent's manifest directory. :meth:`write` says whether the file changed: an unchanged
    file changes nothing in the agent, so there is nothing to wait for."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self._written: dict[str, str] = {}

    def write(self, name: str, objects: Iterable[Object | dict[str, Any]]) -> bool:
        items = [o if isinstance(o, dict) else to_object(o) for o in objects]
        text = json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, indent=1, sort_keys=True)
        if self._written.get(name) == text:
            return False
        target = self.path / f"{name}.json"
        temp = self.path / f".{name}.json.tmp"  # hidden: the agent ignores it until the rename
        temp.write_text(text)
        os.replace(temp, target)
        self._written[name] = text
        return True

    def remove(self, name: str) -> bool:
        if self._written.pop(name, None) is None:
            return False
        (self.path / f"{name}.json").unlink()
        return True
