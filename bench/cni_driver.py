"""Runs CNI plugin calls and times them; started once per batch inside the node namespace
(``ip netns exec NODE python cni_driver.py``), so what is timed is the plugin call itself, not
``ip netns exec``. Standard library only.

stdin:  {"mode": "seq" | "burst", "calls": [{"argv": [...], "env": {...}, "stdin": "..."}]}
stdout: {"results": [{"t": seconds, "rc": exit code, "out": stdout if it failed}], "wall": seconds}

``seq`` runs the calls one after another; ``burst`` starts them all at once (one thread each,
released together by a barrier) and reports each call's latency and the wall time of the batch.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any


def one(call: dict[str, Any]) -> tuple[float, float, dict[str, Any]]:
    start = time.perf_counter()
    proc = subprocess.run(call["argv"], input=call["stdin"].encode(), env=call["env"], capture_output=True,
                          check=False)
    end = time.perf_counter()
    result: dict[str, Any] = {"t": end - start, "rc": proc.returncode}
    if proc.returncode != 0:
        result["out"] = (proc.stdout + proc.stderr).decode(errors="replace")[-2000:]
    return start, end, result


def burst(calls: list[dict[str, Any]]) -> dict[str, Any]:
    barrier = threading.Barrier(len(calls))
    spans: list[tuple[float, float, dict[str, Any]] | None] = [None] * len(calls)

    def worker(i: int) -> None:
        barrier.wait()
        spans[i] = one(calls[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = [s for s in spans if s is not None]
    wall = max(s[1] for s in done) - min(s[0] for s in done)
    return {"results": [s[2] for s in done], "wall": wall}


def main() -> None:
    job = json.load(sys.stdin)
    if job["mode"] == "burst":
        out = burst(job["calls"])
    else:
        start = time.perf_counter()
        out = {"results": [one(c)[2] for c in job["calls"]]}
        out["wall"] = time.perf_counter() - start
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
