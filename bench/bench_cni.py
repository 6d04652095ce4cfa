"""CNI ADD/DEL latency: Debian's Go reference bridge + host-local against podnet-bridge +
podnet-host-local through the podnet daemon, and with the daemon down (the shims run the plugin
in-process), all in one run.

Everything happens in throw-away namespaces: a "node" namespace (bridge, host veths, the daemon)
and pod namespaces. A small driver (``cni_driver.py``) started once per batch inside the node
namespace runs the plugins with the CNI environment and times each call, so ``ip netns exec`` is
not in the numbers. podnet's plugins are the shims ``podnet install`` writes.

* one pod at a time: ADD then DEL, rounds interleaving the variants; p50 / p99 per command;
* bursts: 30 concurrent ADDs, then 30 concurrent DELs, in rounds; per-call p50 / p99 and the median
  wall time;
* the daemon's resident memory with 250 pods wired;
* where the time goes: the daemon's own time per call (from its log), the shim's floor, and a
  cProfile summary of a warm in-process ADD and DEL.

Targets (reported, not asserted): ADD p50 <= 0.6x Go, DEL p50 <= 0.5x Go, burst wall <= 0.7x Go,
daemon RSS <= 80 MB at 250 pods, ADD p50 with 250 pods on the bridge (once their start-up traffic
has settled) <= 1.2x the ADD p50 measured on the near-empty node. Raw numbers go to
bench/out/bench_cni.json (and a PNG of the latency distributions when matplotlib is installed).

    python -m bench.bench_cni [--rounds N] [--pods-per-round N] [--burst N] [--burst-rounds N]
                              [--memory-pods N]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pstats
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "cni_driver.py"
PROFILE = HERE / "cni_profile.py"
OUT = HERE / "out"
GO_DIR = Path("/usr/lib/cni")
VARIANTS = ("go", "daemon", "inprocess")
LABEL = {"go": "Go bridge", "daemon": "podnet+daemon", "inprocess": "podnet, no daemon"}
TARGETS = {"add_p50": 0.6, "del_p50": 0.5, "burst_wall": 0.7, "rss_mb": 80.0, "at_scale": 1.2}
# A node is "settled" once its bridge carries fewer packets than this per second: right after 250
# pods come up, their IPv6 link-local start-up (DAD, router solicitations, MLD reports) is flooded to
# every port for a while, and that is start-up noise, not the cost of one more ADD.
SETTLED_PPS = 50
SETTLE_MAX_S = 90.0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@dataclass
class Bench:
    tmp: Path
    tag: str = field(default_factory=lambda: f"pnb{os.getpid() % 100000}")
    pods: list[str] = field(default_factory=list)
    daemon: subprocess.Popen[bytes] | None = None
    made: list[str] = field(default_factory=list)

    @property
    def node(self) -> str:
        return f"{self.tag}-node"

    @property
    def bin_dir(self) -> Path:
        return self.tmp / "bin"

    @property
    def socket(self) -> Path:
        return self.tmp / "podnet.sock"

    # -- namespaces --------------------------------------------------------------------------------

    def netns(self, name: str) -> str:
        ip("netns", "add", name)
        self.made.append(name)
        ip("-n", name, "link", "set", "lo", "up")
        return name

    def ensure_pods(self, count: int) -> list[str]:
        while len(self.pods) < count:
            self.pods.append(self.netns(f"{self.tag}-pod{len(self.pods)}"))
        return self.pods[:count]

    def cleanup(self) -> None:
        self.stop_daemon()
        for name in reversed(self.made):
            ip("netns", "del", name, check=False)
        self.made.clear()

    # -- the daemon ----------------------------------------------------------------------------------

    def start_daemon(self, *extra: str) -> None:
        log = open(self.tmp / "daemon.log", "ab")  # noqa: SIM115 - the daemon holds it
        argv = ["ip", "netns", "exec", self.node, sys.executable, "-m", "podnet.cli.main", "daemon",
                "--socket", str(self.socket), *extra]
        self.daemon = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                try:
                    s.connect(str(self.socket))
                    return
                except OSError:
                    time.sleep(0.02)
        raise RuntimeError("podnet daemon did not start")

    def stop_daemon(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            os.kill(self.daemon.pid, signal.SIGTERM)  # by PID: `ip netns exec` exec'd the daemon
            try:
                self.daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.kill(self.daemon.pid, signal.SIGKILL)
                self.daemon.wait()
        self.daemon = None

    def daemon_rss_mb(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) of the daemon in MB."""
        assert self.daemon is not None
        fields = {}
        for line in Path(f"/proc/{self.daemon.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
        return fields["VmRSS"], fields["VmHWM"]

    def daemon_times(self, command: str, since: int) -> list[float]:
        """Seconds the daemon itself spent per call (its log), for log records after line ``since``."""
        lines = (self.tmp / "daemon.log").read_text().splitlines()[since:]
        return [json.loads(x)["ms"] / 1000 for x in lines
                if '"event":"request"' in x and f'"command":"{command}"' in x]

    def daemon_log_lines(self) -> int:
        path = self.tmp / "daemon.log"
        return len(path.read_text().splitlines()) if path.exists() else 0

    # -- plugin calls ------------------------------------------------------------------------------------

    def conf(self, variant: str) -> dict[str, Any]:
        net = {"go": 1, "daemon": 2, "inprocess": 3}[variant]
        ipam = {"type": "host-local" if variant == "go" else "podnet-host-local",
                "dataDir": str(self.tmp / "ipam"), "ranges": [[{"subnet": f"10.{200 + net}.0.0/16"}]]}
        kind = "bridge" if variant == "go" else "podnet-bridge"
        return {"cniVersion": "1.0.0", "name": f"bench{net}", "type": kind, "bridge": f"bbr{net}",
                "isGateway": True, "ipMasq": False, "ipam": ipam}

    def call(self, variant: str, command: str, cid: str, pod: str, ifname: str = "eth0") -> dict[str, Any]:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": command,
               "CNI_CONTAINERID": cid, "CNI_NETNS": f"/run/netns/{pod}", "CNI_IFNAME": ifname,
               "CNI_PATH": str(GO_DIR if variant == "go" else self.bin_dir)}
        if variant != "go":
            env["PODNET_SOCKET"] = str(self.socket if variant == "daemon" else self.tmp / "no-daemon.sock")
        plugin = GO_DIR / "bridge" if variant == "go" else self.bin_dir / "podnet-bridge"
        return {"argv": [str(plugin)], "env": env, "stdin": json.dumps(self.conf(variant))}

    def drive(self, mode: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
        job = json.dumps({"mode": mode, "calls": calls})
        proc = subprocess.run(["ip", "netns", "exec", self.node, sys.executable, str(DRIVER)], input=job,
                              capture_output=True, text=True, check=True, timeout=900)
        out: dict[str, Any] = json.loads(proc.stdout)
        failed = [r for r in out["results"] if r["rc"] != 0]
        if failed:
            raise RuntimeError(f"{len(failed)} plugin calls failed; first: {failed[0].get('out', '')}")
        return out

    def attach(self, variant: str, mode: str, pods: list[str],
               prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """ADD every pod, then DEL every pod (sequentially or as two bursts)."""
        adds = self.drive(mode, [self.call(variant, "ADD", f"{prefix}{i}", p) for i, p in enumerate(pods)])
        dels = self.drive(mode, [self.call(variant, "DEL", f"{prefix}{i}", p) for i, p in enumerate(pods)])
        return adds, dels

    def one_at_a_time(self, prefix: str, pods: list[str]) -> list[float]:
        """ADD then DEL a second interface in each of ``pods``, one call at a time: the ADD times."""
        names = [(f"{prefix}{i}", p) for i, p in enumerate(pods)]
        seq = self.drive("seq", [self.call("daemon", "ADD", cid, p, "eth1") for cid, p in names])
        self.drive("seq", [self.call("daemon", "DEL", cid, p, "eth1") for cid, p in names])
        return [x["t"] for x in seq["results"]]

    def settle(self, bridge: str) -> float:
        """Wait until the bridge carries fewer than SETTLED_PPS packets a second; the seconds waited."""
        counter = f"/sys/class/net/{bridge}/statistics/rx_packets"
        start = last_t = time.monotonic()
        last = int(ip("netns", "exec", self.node, "cat", counter).stdout)
        while time.monotonic() - start < SETTLE_MAX_S:
            time.sleep(1.0)
            now_t, now = time.monotonic(), int(ip("netns", "exec", self.node, "cat", counter).stdout)
            if (now - last) / (now_t - last_t) < SETTLED_PPS:
                break
            last, last_t = now, now_t
        return time.monotonic() - start

    def leftovers(self) -> int:
        out = ip("-n", self.node, "-j", "link", "show", "type", "veth").stdout
        return len(json.loads(out or "[]"))


@contextlib.contextmanager
def bench_env() -> Iterator[Bench]:
    tmp = Path(tempfile.mkdtemp(prefix="podnet-bench-"))
    b = Bench(tmp)
    try:
        b.netns(b.node)
        subprocess.run([sys.executable, "-m", "podnet.cli.main", "install", "--bin-dir", str(b.bin_dir),
                        "--no-conflist"], check=True, capture_output=True)
        yield b
    finally:
        b.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def python_floor(runs: int = 40) -> float:
    """p50 of the bare interpreter start the shims pay (``python -IS -c pass``)."""
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-IS", "-c", "pass"], check=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def measure(b: Bench, rounds: int, per_round: int, burst: int, in_process_per_round: int,
            burst_rounds: int) -> dict[str, Any]:
    raw: dict[str, Any] = {v: {"seq_add": [], "seq_del": [], "burst_add": [], "burst_del": [],
                               "burst_add_wall": [], "burst_del_wall": []} for v in VARIANTS}
    pods = b.ensure_pods(max(burst, per_round))
    for variant in VARIANTS:  # warm-up (page cache, bridges created, daemon threads started)
        b.attach(variant, "seq", pods[:2], f"w{variant[0]}")
    mark = b.daemon_log_lines()
    for r in range(rounds):
        for variant in VARIANTS:
            n = in_process_per_round if variant == "inprocess" else per_round
            adds, dels = b.attach(variant, "seq", pods[:n], f"s{r}{variant[0]}")
            raw[variant]["seq_add"] += [x["t"] for x in adds["results"]]
            raw[variant]["seq_del"] += [x["t"] for x in dels["results"]]
        print(f"   sequential round {r + 1}/{rounds} done", flush=True)
    raw["daemon_side"] = {"seq_add": b.daemon_times("ADD", mark), "seq_del": b.daemon_times("DEL", mark)}
    mark = b.daemon_log_lines()
    # One burst is one sample of the wall time: several rounds, variants interleaved, median reported.
    for r in range(burst_rounds):
        for variant in VARIANTS if r == 0 else VARIANTS[:2]:  # in-process bursts are slow: once
            adds, dels = b.attach(variant, "burst", pods[:burst], f"b{r}{variant[0]}")
            raw[variant]["burst_add"] += [x["t"] for x in adds["results"]]
            raw[variant]["burst_del"] += [x["t"] for x in dels["results"]]
            raw[variant]["burst_add_wall"].append(adds["wall"])
            raw[variant]["burst_del_wall"].append(dels["wall"])
        print(f"   bursts of {burst}: round {r + 1}/{burst_rounds} done", flush=True)
    raw["daemon_side"].update(burst_add=b.daemon_times("ADD", mark), burst_del=b.daemon_times("DEL", mark))
    if b.leftovers():
        raise RuntimeError(f"{b.leftovers()} veths left in the node namespace after DEL")
    return raw


def memory(b: Bench, count: int) -> dict[str, Any]:
    """Wire ``count`` pods through the daemon (bursts of 25), read its RSS, then remove them."""
    pods = b.ensure_pods(count)
    before = b.daemon_rss_mb()
    add_times: list[float] = []
    for start in range(0, count, 25):
        batch = pods[start:start + 25]
        out = b.drive("burst", [b.call("daemon", "ADD", f"m{start + i}", p) for i, p in enumerate(batch)])
        add_times += [x["t"] for x in out["results"]]
    wired = b.daemon_rss_mb()
    # One more pod at a time with everything wired: does ADD slow down with a full bridge? Once at
    # once (the pods' start-up traffic still flooding the bridge), once after it settled.
    unsettled = b.one_at_a_time("u", pods[:10])
    settle_s = b.settle(b.conf("daemon")["bridge"])
    settled = b.one_at_a_time("x", pods[:10])
    for start in range(0, count, 25):
        batch = pods[start:start + 25]
        b.drive("burst", [b.call("daemon", "DEL", f"m{start + i}", p) for i, p in enumerate(batch)])
    return {"pods": count, "rss_before_mb": before[0], "rss_wired_mb": wired[0], "peak_mb": wired[1],
            "add_p50_at_scale": percentile(settled, 50), "add_p50_unsettled": percentile(unsettled, 50),
            "settle_s": settle_s, "adds": add_times, "at_scale_adds": settled}


def profile(b: Bench) -> str:
    argv = ["ip", "netns", "exec", b.node, sys.executable, str(PROFILE), b.node, json.dumps(b.conf("daemon")),
            b.pods[0]]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    return proc.stdout + (proc.stderr[-2000:] if proc.returncode else "")


def profile_burst(b: Bench, burst: int) -> str:
    """The daemon's own profile (every worker thread) over two bursts of ADDs and DELs."""
    b.stop_daemon()
    stats_path = b.tmp / "daemon.pstats"
    b.start_daemon("--profile", str(stats_path))
    pods = b.ensure_pods(burst)
    start = time.perf_counter()
    for r in range(2):
        b.attach("daemon", "burst", pods, f"p{r}")
    wall = time.perf_counter() - start
    b.stop_daemon()
    text = io.StringIO()
    stats = pstats.Stats(str(stats_path), stream=text)
    stats.sort_stats("tottime").print_stats(14)
    lines = text.getvalue().splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip().startswith("ncalls"))
    return (f"--- the daemon over 2 bursts of {burst} ADDs + {burst} DELs ({wall:.2f} s including the "
            f"driver), all worker threads, heaviest own time first:\n" + "\n".join(lines[first:first + 15]))


def summarize(raw: dict[str, Any]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for v in VARIANTS:
        r = raw[v]
        out[v] = {
            "add_p50": percentile(r["seq_add"], 50), "add_p99": percentile(r["seq_add"], 99),
            "del_p50": percentile(r["seq_del"], 50), "del_p99": percentile(r["seq_del"], 99),
            "burst_add_p50": percentile(r["burst_add"], 50), "burst_add_p99": percentile(r["burst_add"], 99),
            "burst_add_wall": statistics.median(r["burst_add_wall"]),
            "burst_del_p50": percentile(r["burst_del"], 50), "burst_del_p99": percentile(r["burst_del"], 99),
            "burst_del_wall": statistics.median(r["burst_del_wall"]),
        }
    return out


ROWS = [("add_p50", "ADD p50"), ("add_p99", "ADD p99"), ("del_p50", "DEL p50"), ("del_p99", "DEL p99"),
        ("burst_add_p50", "burst ADD p50"), ("burst_add_p99", "burst ADD p99"),
        ("burst_add_wall", "burst ADD wall"), ("burst_del_p50", "burst DEL p50"),
        ("burst_del_p99", "burst DEL p99"), ("burst_del_wall", "burst DEL wall")]


def report(summary: dict[str, dict[str, float]], mem: dict[str, Any], raw: dict[str, Any], floor: float,
           burst: int) -> list[str]:
    go, dm, ip_ = summary["go"], summary["daemon"], summary["inprocess"]
    print(f"\n{'ms':18} {LABEL['go']:>11} {LABEL['daemon']:>15} {'ratio':>7} "
          f"{LABEL['inprocess']:>19} {'ratio':>7}")
    for key, label in ROWS:
        label = label.replace("burst", f"burst{burst}")
        print(f"{label:18} {go[key] * 1e3:11.2f} {dm[key] * 1e3:15.2f} {dm[key] / go[key]:6.2f}x "
              f"{ip_[key] * 1e3:19.2f} {ip_[key] / go[key]:6.2f}x")
    side = raw["daemon_side"]
    add_side, del_side = percentile(side["seq_add"], 50), percentile(side["seq_del"], 50)
    print(f"\nwhere podnet+daemon's ADD p50 goes: {dm['add_p50'] * 1e3:.2f} ms = {add_side * 1e3:.2f} ms "
          f"in the daemon (plugin work) + {(dm['add_p50'] - add_side) * 1e3:.2f} ms shim and transport "
          f"(python -IS -c pass alone: {floor * 1e3:.2f} ms)")
    print(f"where its DEL p50 goes: {dm['del_p50'] * 1e3:.2f} ms = {del_side * 1e3:.2f} ms in the daemon + "
          f"{(dm['del_p50'] - del_side) * 1e3:.2f} ms shim and transport")
    print(f"daemon RSS: {mem['rss_before_mb']:.1f} MB idle, {mem['rss_wired_mb']:.1f} MB with "
          f"{mem['pods']} pods wired (peak {mem['peak_mb']:.1f} MB)")
    print(f"ADD p50 with {mem['pods']} pods on the bridge: {mem['add_p50_unsettled'] * 1e3:.2f} ms "
          f"right after wiring them, {mem['add_p50_at_scale'] * 1e3:.2f} ms once the bridge settled "
          f"({mem['settle_s']:.0f} s); near-empty node: {dm['add_p50'] * 1e3:.2f} ms")
    checks = [("ADD p50", dm["add_p50"] / go["add_p50"], TARGETS["add_p50"]),
              ("DEL p50", dm["del_p50"] / go["del_p50"], TARGETS["del_p50"]),
              (f"burst{burst} ADD wall", dm["burst_add_wall"] / go["burst_add_wall"], TARGETS["burst_wall"]),
              (f"burst{burst} DEL wall", dm["burst_del_wall"] / go["burst_del_wall"], TARGETS["burst_wall"]),
              ("daemon RSS (MB)", mem["rss_wired_mb"], TARGETS["rss_mb"]),
              (f"ADD p50, {mem['pods']} pods", mem["add_p50_at_scale"] / dm["add_p50"], TARGETS["at_scale"])]
    missed = []
    print("\ntargets (podnet+daemon / Go; the pods row: / podnet on the near-empty node):")
    for name, value, target in checks:
        ok = value <= target
        unit = "" if "MB" in name else "x"
        print(f"  {name:18} {value:7.2f}{unit}  target <= {target:.1f}{unit}  {'met' if ok else 'MISSED'}")
        if not ok:
            missed.append(name)
    return missed


def plot(raw: dict[str, Any], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no PNG (the JSON has every sample)"
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    for ax, key in zip(axes, ("seq_add", "seq_del", "burst_add", "burst_del"), strict=True):
        ax.boxplot([[t * 1e3 for t in raw[v][key]] for v in VARIANTS])
        ax.set_xticks(range(1, len(VARIANTS) + 1), [LABEL[v] for v in VARIANTS], rotation=12)  # any version
        ax.set_title(key.replace("_", " ").replace("seq", "one at a time"))
        ax.set_ylabel("ms")
        ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path)
    return f"latency distributions: {path}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_cni", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pods-per-round", type=int, default=20)
    parser.add_argument("--in-process-per-round", type=int, default=4)
    parser.add_argument("--burst", type=int, default=30)
    parser.add_argument("--burst-rounds", type=int, default=5)
    parser.add_argument("--memory-pods", type=int, default=250)
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args(argv)
    if os.geteuid() != 0 or not (GO_DIR / "bridge").exists() or shutil.which("ip") is None:
        print("bench_cni: skipped (needs root, iproute2 and Debian's containernetworking-plugins)")
        return 0
    with bench_env() as b:
        b.start_daemon()
        floor = python_floor()
        raw = measure(b, args.rounds, args.pods_per_round, args.burst, args.in_process_per_round,
                      args.burst_rounds)
        print(f"   wiring {args.memory_pods} pods through the daemon for its memory", flush=True)
        mem = memory(b, args.memory_pods)
        prof = "" if args.no_profile else profile(b) + "\n" + profile_burst(b, args.burst)
    summary = summarize(raw)
    missed = report(summary, mem, raw, floor, args.burst)
    OUT.mkdir(exist_ok=True)
    (OUT / "bench_cni.json").write_text(json.dumps(
        {"summary_seconds": summary, "memory": mem, "python_IS_floor": floor, "raw_seconds": raw,
         "args": vars(args)}, indent=1))
    print(f"\nraw numbers: {OUT / 'bench_cni.json'}")
    print(plot(raw, OUT / "bench_cni.png"))
    if missed and prof:
        print(f"\nmissed {', '.join(missed)}: where a warm in-process call spends its time\n{prof}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
