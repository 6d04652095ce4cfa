"""50 parallel ADDs on one bridge network from separate runtime processes: 50 distinct addresses,
every pod reaches every other, then 50 parallel DELs leave nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bridgeutil import (
    PODNET_BIN,
    assert_clean,
    bridge_plugin,
    nft_elements,
    ping_matrix,
    static_neighbours,
    veths,
    wait_all,
)

from cnienv import CniEnv
from nsutil import Netns, NetnsFactory

pytestmark = [pytest.mark.root, pytest.mark.slow]

PODS = 50


def _parallel(env: CniEnv, node: Netns, command: str, pods: list[Netns]) -> list[tuple[int, str, str]]:
    procs = [node.popen([sys.executable, "-m", "podnet.cli.main", "cni", command, "bnet", pod.path,
                         "--container-id", f"c{i}"],
                        env=env.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, pod in enumerate(pods)]
    return wait_all(procs, timeout=180)  # type: ignore[arg-type]


def test_fifty_parallel_adds_and_dels(node: Netns, netns: NetnsFactory, tmp_path: Path) -> None:
    env = CniEnv(node, tmp_path, cni_path=PODNET_BIN)
    env.write_conflist("bnet", [bridge_plugin(env, "10.90.0.0/24", isDefaultGateway=True, ipMasq=True)],
                       version="1.1.0")
    pods = [netns("pod") for _ in range(PODS)]

    started = time.monotonic()
    outcomes = _parallel(env, node, "add", pods)
    add_time = time.monotonic() - started
    assert [o for o in outcomes if o[0] != 0] == []
    results = [json.loads(out) for _, out, _ in outcomes]
    ips = [r["ips"][0]["address"].split("/")[0] for r in results]
    assert len(set(ips)) == PODS
    assert len(veths(node)) == PODS and len(nft_elements(node)) == 2 * PODS

    macs = [r["interfaces"][2]["mac"] for r in results]
    static_neighbours(list(zip(pods, ips, macs, strict=True)))
    started = time.monotonic()
    failures = ping_matrix(list(zip(pods, ips, strict=True)), extra=["10.90.0.1"])
    ping_time = time.monotonic() - started
    assert failures == []
    assert ping_time < 30, f"{PODS * (PODS - 1)} pings took {ping_time:.1f}s"

    started = time.monotonic()
    outcomes = _parallel(env, node, "del", pods)
    del_time = time.monotonic() - started
    assert [o for o in outcomes if o[0] != 0] == []
    assert_clean(env, node, "bnet", pods)
    assert env.cache_files() == []
    print(f"\n{PODS} parallel ADDs {add_time:.1f}s, {PODS * PODS} pings (incl. gateway) {ping_time:.1f}s, "
          f"{PODS} parallel DELs {del_time:.1f}s")
