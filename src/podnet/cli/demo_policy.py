"""The demo's NetworkPolicy act: the TCP matrix with no policy, with one that lets only
``app=frontend`` pods reach ``app=db`` pods, the agent's explanation of one blocked and one allowed
cell, and the matrix open again once the policy is deleted.

Each matrix is checked against what the policy means, so the demo fails when the kernel and the
policy disagree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from podnet.cli.demo_agent import NAMESPACE, AgentProcess, write_manifest
from podnet.cli.demo_probe import PORT, Cell, Probers, differences, truth_table

ROLES = ("frontend", "backend", "db")
POLICY = "db-from-frontend"


def policy_manifest() -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": POLICY, "namespace": NAMESPACE},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                     "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "frontend"}}}],
                                  "ports": [{"protocol": "TCP", "port": PORT}]}]}}


def expected(roles: Mapping[str, str], policy: bool) -> dict[Cell, bool]:
    """With the policy, a db pod takes connections from frontend pods only (and from itself: a
    pod's traffic to its own address never leaves it)."""
    return {(s, d): not policy or roles[d] != "db" or roles[s] == "frontend" or s == d
            for s in roles for d in roles}


def check_matrix(title: str, probers: Probers, roles: Mapping[str, str], policy: bool) -> bool:
    got = probers.matrix()
    print(f"\n{title}\nTCP port {PORT}, client (row) -> server (column): . reachable, X blocked")
    print(truth_table(got, roles))
    wrong = differences(got, expected(roles, policy))
    for line in wrong:
        print(f"  UNEXPECTED: {line}")
    return not wrong


def _explain(agent: AgentProcess, roles: Mapping[str, str]) -> None:
    """One blocked and one allowed connection to a db pod, as ``podnet policy explain`` puts them."""
    want = expected(roles, True)
    blocked = next((c for c, ok in want.items() if not ok), None)
    allowed = next((c for c, ok in want.items() if ok and c[0] != c[1] and roles[c[1]] == "db"), None)
    for cell in (blocked, allowed):
        if cell is not None:
            src, dst = (f"{NAMESPACE}/{pod}" for pod in cell)
            print(f"\n$ podnet policy explain {src} {dst} {PORT}/TCP --socket {agent.socket}")
            print(agent.explain(src, dst, f"{PORT}/TCP"))


def policy_tour(agent: AgentProcess, manifests: Path, probers: Probers, roles: Mapping[str, str]) -> bool:
    """Returns whether every matrix matched the policy in force."""
    ok = check_matrix("no NetworkPolicy: every pod reaches every pod", probers, roles, False)
    generation = agent.status()["generation"]
    print(f"\nwriting a NetworkPolicy into the agent's manifest directory {manifests}:")
    text = yaml.safe_dump(policy_manifest(), sort_keys=False, default_flow_style=None)
    print("  " + text.rstrip().replace("\n", "\n  "))
    path = write_manifest(manifests, "policy", [policy_manifest()])
    status = agent.applied_after(generation, "apply the policy")
    print(f"podnet status: generation {status['generation']} applied to table {status['table']['name']} "
          f"in {status['policy_sync']['last_seconds'] * 1000:.1f} ms")
    ok &= check_matrix(f"with NetworkPolicy {POLICY}: only app=frontend pods reach app=db pods",
                  probers, roles, True)
    _explain(agent, roles)
    generation = agent.status()["generation"]
    os.unlink(path)
    agent.applied_after(generation, "remove the policy")
    ok &= check_matrix(f"NetworkPolicy {POLICY} deleted: open again", probers, roles, False)
    return ok
