"""A writer killed with SIGKILL at any moment never leaves a torn cache entry.

A child process rewrites the same entry (about 200 KiB, two alternating versions) in a tight loop;
the test kills it with SIGKILL after a random delay, many times over, and after every kill checks
that the entry on disk is absent or byte-for-byte one of the versions written.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from podnet.runtime.cache import CacheEntry, ResultCache, encode

KILLS = 100
KEY = ("crashnet", "0123456789abcdef", "eth0")

CHILD = r"""
import json, sys
from podnet.runtime.cache import CacheEntry, ResultCache
cache_dir, versions_file = sys.argv[1], sys.argv[2]
versions = [CacheEntry(**{**v, "config": v["config"].encode(), "cni_args": [tuple(a) for a in v["cni_args"]]})
            for v in json.load(open(versions_file))]
rc = ResultCache(cache_dir)
sys.stdout.write("r")
sys.stdout.flush()
i = 0
while True:
    rc.write(versions[i % 2])
    i += 1
"""


def version(n: int, fill: str) -> dict[str, Any]:
    ips = [{"interface": 2, "address": f"10.{n}.{i // 250}.{i % 250 + 2}/16", "gateway": f"10.{n}.0.1"}
           for i in range(200)]
    return {
        "network": KEY[0], "container_id": KEY[1], "ifname": KEY[2],
        "config": json.dumps({"cniVersion": "1.0.0", "name": KEY[0], "version": n,
                              "plugins": [{"type": "bridge"}]}),
        "result": {"cniVersion": "1.0.0", "ips": ips, "pad": fill * (200 * 1024)},
        "cni_args": [["K8S_POD_NAME", f"pod-{n}"]],
        "capability_args": {"n": n},
    }


def as_entry(v: dict[str, Any]) -> CacheEntry:
    return CacheEntry(**{**v, "config": v["config"].encode(), "cni_args": [tuple(a) for a in v["cni_args"]]})


@pytest.mark.timeout(60)
def test_sigkill_mid_write_never_tears(tmp_path: Path) -> None:
    raw_versions = [version(1, "a"), version(2, "b")]
    versions_file = tmp_path / "versions.json"
    versions_file.write_text(json.dumps(raw_versions))
    entries = [as_entry(v) for v in raw_versions]
    valid = {encode(e) for e in entries}
    assert all(len(b) > 200 * 1024 for b in valid)

    cache_dir = tmp_path / "cni"
    rc = ResultCache(cache_dir)
    final = rc.path(*KEY)
    rng = random.Random(0x5EED)
    torn: list[str] = []
    absent = present = 0
    started = time.monotonic()
    for _ in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(cache_dir), str(versions_file)],
            stdout=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.read(1) == b"r"
            time.sleep(rng.uniform(0, 0.04))
        finally:
            # Only ever the process this test started, by its PID.
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL

        if not final.exists():
            absent += 1
            continue
        present += 1
        data = final.read_bytes()
        got = rc.read(*KEY)
        if data not in valid or not got.ok or got.entry not in entries:
            torn.append(f"{len(data)} bytes, read state {got.state} {got.reason}")
    elapsed = time.monotonic() - started

    leftovers = [p for p in (cache_dir / "results").iterdir() if p.name != final.name]
    print(f"\n{KILLS} kills in {elapsed:.1f}s: entry present {present}, absent {absent}, torn {len(torn)}, "
          f"temp files left by kills {len(leftovers)}")
    assert torn == []
    assert present > KILLS // 2, "the writer should have completed most runs' first write"
    # Temp files a kill left behind are never taken for entries, and the sweep reclaims them.
    assert [e.container_id for e in rc.attachments(KEY[0])] == [KEY[1]]
    assert rc.damaged(KEY[0]) == []
    assert sorted(rc.sweep_temp(older_than_s=0)) == sorted(leftovers)
    assert [p.name for p in (cache_dir / "results").iterdir()] == [final.name]
