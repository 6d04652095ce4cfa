"""Dump 4,000 addresses: podnet vs ``ip -j addr show`` (iproute2, the reference) vs pyroute2.

Everything runs against one throw-away namespace, removed at the end. ``ip`` is started
from a thread that has entered the namespace, so it runs there without paying for
``ip netns exec`` / ``ip -n`` (which also remount /sys); its time is the whole command,
as an operator would see it. podnet is timed on a warm session (the daemon's case) and
cold (open the session, dump, close). Target: warm podnet <= 3x iproute2.

    python -m bench.bench_netlink_dump [--addresses N] [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

from pyroute2 import IPRoute

from podnet.kernel import Netlink, run_in_netns, socket_in_netns

TARGET_RATIO = 3.0
T = TypeVar("T")


def timed(fn: Callable[[], T], runs: int) -> tuple[float, T]:
    """Median seconds of ``runs`` calls after one warm-up call, and the last result."""
    result = fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), result


def populate(ns: str, count: int) -> None:
    lines = ["link set lo up"] + [
        f"addr add 10.{100 + i // 62500}.{(i // 250) % 250}.{i % 250 + 1}/32 dev lo" for i in range(count)
    ]
    subprocess.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n",
                   text=True, check=True, capture_output=True)


def ip_addr_show() -> int:
    out = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True, check=True).stdout
    return sum(len(link.get("addr_info", [])) for link in json.loads(out))


def run(ns: str, count: int, runs: int) -> dict[str, float]:
    populate(ns, count)
    ip_s, ip_n = timed(lambda: run_in_netns(ns, ip_addr_show), runs)
    with Netlink(ns) as nl:
        warm_s, snap = timed(nl.addresses, runs)

    def cold() -> int:
        with Netlink(ns) as session:
            return len(session.addresses())

    cold_s, _ = timed(cold, runs)
    sock = socket_in_netns(ns, socket.AF_NETLINK, socket.SOCK_DGRAM, 0)
    with IPRoute(use_socket=sock, groups=0) as ipr:
        pyroute2_s, pr_msgs = timed(lambda: list(ipr.get_addr()), max(3, runs // 6))
    assert len(snap) == ip_n == len(pr_msgs), (len(snap), ip_n, len(pr_msgs))
    return {"ip": ip_s, "podnet": warm_s, "podnet_cold": cold_s, "pyroute2": pyroute2_s, "n": ip_n}


def report(r: dict[str, float]) -> bool:
    rows = [
        ("ip -j addr show (iproute2)", r["ip"]),
        ("podnet Netlink.addresses()", r["podnet"]),
        ("podnet, session open+dump", r["podnet_cold"]),
        ("pyroute2 IPRoute.get_addr()", r["pyroute2"]),
    ]
    print(f"addresses dumped: {int(r['n'])} (median of the runs)")
    for label, secs in rows:
        print(f"  {label:<30} {secs * 1e3:8.2f} ms   {secs / r['ip']:6.2f}x iproute2")
    ok = r["podnet"] / r["ip"] <= TARGET_RATIO
    print(f"target: podnet <= {TARGET_RATIO:.0f}x iproute2: {'met' if ok else 'MISSED'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addresses", type=int, default=4000)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args(argv)
    ns = f"pnbench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        report(run(ns, args.addresses, args.runs))
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
