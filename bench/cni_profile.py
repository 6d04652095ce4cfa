"""Where a warm podnet-bridge ADD and DEL spend their time: run them in-process (as the daemon
does) under cProfile inside the node namespace, and print the heaviest functions.

    ip netns exec NODE python bench/cni_profile.py NODE CONF_JSON POD
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time


def main() -> None:
    _node, conf, pod = sys.argv[1:4]
    from podnet.cni import skel
    from podnet.daemon import registry

    plugin = registry.load("podnet-bridge")

    def run(command: str, cid: str) -> float:
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": f"/run/netns/{pod}",
               "CNI_IFNAME": "eth0", "CNI_PATH": "/nowhere"}
        out = io.StringIO()
        start = time.perf_counter()
        code = skel.run(plugin, env=env, stdin=io.BytesIO(conf.encode()), stdout=out, stderr=io.StringIO())
        if code != 0:
            raise SystemExit(f"{command} failed: {out.getvalue()}")
        return time.perf_counter() - start

    for i in range(3):  # warm-up
        run("ADD", f"pw{i}")
        run("DEL", f"pw{i}")
    plain: dict[str, list[float]] = {"ADD": [], "DEL": []}
    for i in range(10):
        plain["ADD"].append(run("ADD", f"pt{i}"))
        plain["DEL"].append(run("DEL", f"pt{i}"))
    for command in ("ADD", "DEL"):
        prof = cProfile.Profile()
        for i in range(10):
            if command == "DEL":
                run("ADD", f"pp{i}")
            prof.enable()
            run(command, f"pp{i}")
            prof.disable()
            if command == "ADD":
                run("DEL", f"pp{i}")
        p50 = sorted(plain[command])[5]
        print(f"--- warm in-process {command}: p50 {p50 * 1e3:.2f} ms without the profiler; "
              "10 calls under cProfile, heaviest own time first:")
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(12)
        lines = text.getvalue().splitlines()
        start = next(i for i, line in enumerate(lines) if line.strip().startswith("ncalls"))
        print("\n".join(lines[start:start + 13]))


if __name__ == "__main__":
    main()
