"""50 podnet-routed ADDs at once on one network, from separate processes: 50 distinct addresses,
every pod reaches every other pod and the node, then 50 parallel DELs leave nothing behind."""

from __future__ import annotations

import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from routed_util import (
    NODE_IP4,
    PLUGIN,
    assert_nothing_left,
    give_node_addresses,
    host_local,
    host_pod_routes,
    host_veths,
    ip_files,
    plain,
    plugin_env,
    routed_conf,
    sweep_all,
)

from nsutil import Netns, NetnsFactory

pytestmark = pytest.mark.root

NET = "routed-many"
PODS = 50


def _run(node: Netns, command: str, conf_bytes: bytes, cid: str, pod: Netns) -> tuple[int, Any]:
    proc = node.popen([PLUGIN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      env=plugin_env(command, cid, pod.path))
    out, err = proc.communicate(conf_bytes, timeout=120)
    assert b"Traceback" not in out + err, err.decode()
    return proc.returncode, json.loads(out) if out.strip() else None


def _all_at_once(node: Netns, command: str, conf_bytes: bytes, pods: list[Netns]) -> list[tuple[int, Any]]:
    """Start every plugin process before waiting for any (one thread per process)."""
    with ThreadPoolExecutor(max_workers=len(pods)) as pool:
        futures = [pool.submit(_run, node, command, conf_bytes, f"many{i}", pod)
                   for i, pod in enumerate(pods)]
        return [f.result() for f in futures]


def test_fifty_parallel_adds_and_dels(node: Netns, netns: NetnsFactory, tmp_path: Path) -> None:
    give_node_addresses(node)
    conf_bytes = json.dumps(routed_conf(NET, host_local(tmp_path, "10.95.0.0/24"))).encode()
    pods = [netns("pod") for _ in range(PODS)]

    start = time.monotonic()
    added = _all_at_once(node, "ADD", conf_bytes, pods)
    t_add = time.monotonic() - start
    failed = [(i, out) for i, (rc, out) in enumerate(added) if rc != 0]
    assert not failed, failed
    addrs = [plain(out["ips"][0]["address"]) for _, out in added]
    assert len(set(addrs)) == PODS
    assert sorted(ip_files(tmp_path, NET)) == sorted(addrs)
    assert len(host_veths(node)) == PODS and len(host_pod_routes(node)) == PODS

    start = time.monotonic()
    targets = {pod.name: [a for a in addrs if a != addrs[i]] + [NODE_IP4] for i, pod in enumerate(pods)}
    unreachable = sweep_all(pods, targets)
    t_ping = time.monotonic() - start
    assert unreachable == {}, unreachable

    start = time.monotonic()
    deleted = _all_at_once(node, "DEL", conf_bytes, pods)
    t_del = time.monotonic() - start
    assert all(rc == 0 for rc, _ in deleted), deleted
    assert_nothing_left(node, tmp_path, NET, pods)
    print(f"{PODS} parallel ADDs {t_add:.1f} s, {PODS * PODS} pings {t_ping:.1f} s, "
          f"{PODS} parallel DELs {t_del:.1f} s")
