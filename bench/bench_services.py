"""The service proxy at scale: 5,000 ClusterIP services x 5 endpoints compiled into the agent's table
and loaded through the table writer (in-process libnftables), in throw-away namespaces.

Measured in one run:

* full sync: a fresh ServiceCompiler's compile, the writer's contribute, and its first commit (a full
  rebuild in one transaction), each timed; as the anchor, ``nft -f`` of the same transaction;
* one-endpoint change: one service's slice loses or gets back an endpoint, the ServiceCompiler
  updates that service (as the sync loop does with the service a store change names), the writer
  takes the contribution and commits incrementally: p50 / p99 of the whole and of each step;
* what the kernel then holds (``nft -j list table``): chains, rules, sets and elements, and what of
  it grows with services (elements) against what does not (chains and rules);
* first-packet latency to a ClusterIP: TCP connect() time from a pod to a service whose endpoint is
  a pod on the same bridge, on twin node namespaces holding 10 and 5,000 services, rounds
  alternating between them; the ratio of the medians.

There is no Go reference to run here: kube-proxy needs a cluster. For scale, kube-proxy's nftables
mode took 141 ms to add one service next to 10,000 (kubernetes PR 126013).

Targets (reported, not asserted): full sync <= 2 s, one change p50 <= 20 ms, latency ratio <= 1.1.
Raw numbers go to bench/out/bench_services.json, a plot to bench/out/bench_services.png.

    python -m bench.bench_services [--services N] [--endpoints N] [--changes N] [--rounds N]
                                   [--connects N]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from podnet.agent.model import Endpoint, EndpointPort, EndpointSlice, Protocol, Service, ServicePort
from podnet.agent.services import ServiceCompiler
from podnet.dataplane.contribution import Contribution
from podnet.dataplane.diff import rebuild
from podnet.dataplane.image import Image
from podnet.dataplane.union import Union
from podnet.dataplane.writer import TableWriter
from podnet.kernel.nft import LibNftables

OUT = Path(__file__).resolve().parent / "out"
NODE = "node-1"
TABLE = ("inet", "podnet")
CLIENT_IP, SERVER_IP = "10.244.0.10", "10.244.0.11"
TARGETS = {"full_sync_s": 2.0, "change_p50_ms": 20.0, "latency_ratio": 1.1}

SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(1024); print("ready", flush=True)
while True:
    c, _ = s.accept(); c.close()
"""
CONNECT = """
import json, socket, sys, time
host, count = sys.argv[1], int(sys.argv[2])
out = []
for _ in range(count):
    s = socket.socket(); s.settimeout(2)
    t = time.perf_counter(); s.connect((host, 80)); out.append(time.perf_counter() - t); s.close()
print(json.dumps(out))
"""


def services_and_slices(count: int, endpoints: int) -> tuple[list[Service], list[EndpointSlice]]:
    """``count`` services 10.96.0.1 on; the middle one's only endpoint is the server pod, the others'
    endpoints are addresses no pod has (never reached)."""
    services, slices = [], []
    for i in range(count):
        cip = ip_address("10.96.0.1") + i
        services.append(Service("bench", f"s{i}", cluster_ips=(cip,), ports=(ServicePort("http", 80),)))
        if i == count // 2:
            eps = [Endpoint((ip_address(SERVER_IP),), node_name=NODE)]
        else:
            eps = [Endpoint((ip_address("10.128.0.0") + i * endpoints + j,),
                            node_name=NODE if j == 0 else "n2") for j in range(endpoints)]
        slices.append(EndpointSlice("bench", f"s{i}-a", f"s{i}", "IPv4", tuple(eps),
                                    (EndpointPort("http", 8080, Protocol.TCP),)))
    return services, slices


def measured_vip(count: int) -> str:
    return str(ip_address("10.96.0.1") + count // 2)


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=300)


@dataclass
class Node:
    """A node namespace with a bridge, a client pod and a server pod."""

    tag: str
    names: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def ns(self, role: str) -> str:
        return f"pnbs{os.getpid() % 100000}-{self.tag}-{role}"

    def path(self) -> str:
        return f"/run/netns/{self.ns('node')}"

    def sh(self, role: str, script: str) -> None:
        run("ip", "netns", "exec", self.ns(role), "sh", "-ec", script)

    def build(self) -> None:
        for role in ("node", "client", "server"):
            run("ip", "netns", "add", self.ns(role))
            self.names.append(self.ns(role))
            self.sh(role, "ip link set lo up")
        self.sh("node", "sysctl -qw net.ipv4.ip_forward=1; ip link add br0 type bridge;"
                        "ip addr add 10.244.0.1/24 dev br0; ip link set br0 up")
        for i, (role, address) in enumerate((("client", CLIENT_IP), ("server", SERVER_IP))):
            self.sh("node", f"ip link add v{i} type veth peer name eth0 netns {self.ns(role)};"
                            f"ip link set v{i} master br0 up")
            self.sh(role, f"ip addr add {address}/24 dev eth0; ip link set eth0 up;"
                          "ip route add default via 10.244.0.1")
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns("server"), sys.executable, "-c", SERVER],
                                stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

    def connects(self, vip: str, count: int) -> list[float]:
        out = run("ip", "netns", "exec", self.ns("client"), sys.executable, "-c", CONNECT, vip, str(count))
        result: list[float] = json.loads(out.stdout)
        return result

    def close(self) -> None:
        for proc in self.procs:  # our servers, by PID
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for name in reversed(self.names):
            run("ip", "netns", "del", name, check=False)


@contextlib.contextmanager
def node_env(tag: str) -> Iterator[Node]:
    node = Node(tag)
    try:
        node.build()
        yield node
    finally:
        node.close()


def timed(fn: Any, *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


@dataclass
class Loaded:
    compiler: ServiceCompiler
    writer: TableWriter
    services: list[Service]
    slices: list[EndpointSlice]
    contribution: Contribution


def full_sync(lib: LibNftables, count: int, endpoints: int) -> tuple[Loaded, dict[str, float]]:
    services, slices = services_and_slices(count, endpoints)
    compiler = ServiceCompiler(node_name=NODE)
    writer = TableWriter(lib, *TABLE)  # type: ignore[arg-type]
    c, t_compile = timed(compiler.compile, services, slices)
    _, t_contribute = timed(writer.contribute, "services", c)
    result, t_commit = timed(writer.commit)
    assert result.full
    times = {"compile": t_compile, "contribute": t_contribute, "commit": t_commit,
             "total": t_compile + t_contribute + t_commit}
    return Loaded(compiler, writer, services, slices, c), times


def one_changes(loaded: Loaded, changes: int) -> dict[str, list[float]]:
    """Each change drops the last endpoint of one service's slice, or puts it back."""
    steps: dict[str, list[float]] = {"compile": [], "contribute": [], "commit": [], "total": []}
    saved: dict[int, EndpointSlice] = {}
    for n in range(changes):
        i = (n * 7919) % len(loaded.slices)
        if i == len(loaded.slices) // 2:
            i += 1  # the measured service keeps its endpoint
        if i in saved:
            loaded.slices[i] = saved.pop(i)
        else:
            saved[i] = loaded.slices[i]
            loaded.slices[i] = dataclasses.replace(saved[i], endpoints=saved[i].endpoints[:-1])
        # As the sync loop does it: the store's change names the service whose slice changed.
        service = loaded.services[i]
        c, t1 = timed(loaded.compiler.update, [service.key], {service.key: service},
                      lambda ns, name, i=i: (loaded.slices[i],))
        _, t2 = timed(loaded.writer.contribute, "services", c)
        result, t3 = timed(loaded.writer.commit)
        assert result.changed and not result.full, result
        loaded.contribution = c
        for name, t in (("compile", t1), ("contribute", t2), ("commit", t3), ("total", t1 + t2 + t3)):
            steps[name].append(t)
    return steps


def counts(lib: LibNftables, c: Contribution) -> dict[str, Any]:
    state = lib.list_table(*TABLE)  # type: ignore[arg-type]
    assert state is not None
    kinds = Counter(chain_kind(n) for n in state.chains)
    return {
        "kernel_chains": len(state.chains), "kernel_rules": sum(len(r) for r in state.chains.values()),
        "kernel_sets": len(state.sets), "kernel_elements": sum(len(s.elements) for s in state.sets.values()),
        "chains_by_kind": dict(kinds),
        "rules_in_fixed_chains": sum(len(r) for n, r in state.chains.items() if chain_kind(n) == "fixed"),
        "elements_by_set": {n: len(s.elements) for n, s in sorted(state.sets.items()) if s.elements},
        "contribution_rules": sum(len(ch.rules) for ch in c.chains),
    }


def chain_kind(name: str) -> str:
    """fixed (hooks, dispatch), shared (entry and slot chains: by endpoint count), svc/ep (a
    service's or an endpoint's own: ClientIP affinity only)."""
    if re.match(r"services-\d-", name):
        return "shared"
    return name.split("-")[0] if name.startswith(("svc-", "ep-")) else "fixed"


def latency(small: Node, large: Node, rounds: int, connects: int, vips: dict[str, str]) -> dict[str, Any]:
    samples: dict[str, list[float]] = {"small": [], "large": []}
    for node, name in ((small, "small"), (large, "large")):
        node.connects(vips[name], 20)  # warm: neighbours, conntrack
    for _ in range(rounds):
        for node, name in ((small, "small"), (large, "large")):
            samples[name] += node.connects(vips[name], connects)
    p50 = {k: statistics.median(v) * 1e6 for k, v in samples.items()}
    return {"p50_us": p50, "ratio": p50["large"] / p50["small"], "samples": len(samples["small"])}


def kernel_anchor(node: Node, c: Contribution) -> dict[str, float]:
    """``nft -f`` of the writer's full transaction in an empty namespace: what nft and the kernel
    alone take for the table the full sync writes."""
    union = Union()
    union.replace("services", c)
    script = rebuild("inet", "podnet", Image.of(union), None).render()
    out: dict[str, float] = {}
    for name, text in (("nft_f_full", script),):
        ns = node.ns(f"anchor{len(out)}")
        run("ip", "netns", "add", ns)
        try:
            start = time.perf_counter()
            subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=text, text=True, check=True,
                           capture_output=True, timeout=300)
            out[name] = time.perf_counter() - start
        finally:
            run("ip", "netns", "del", ns, check=False)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(out: dict[str, Any], services: int) -> None:
    full = out["full"]
    print(f"full sync, {services} services x {out['endpoints']} endpoints: compile {full['compile']:.3f} s, "
          f"contribute {full['contribute']:.3f} s, commit {full['commit']:.3f} s")
    print(f"  total {full['total']:.3f} s   target <= {TARGETS['full_sync_s']} s  "
          f"{verdict(full['total'] <= TARGETS['full_sync_s'])}")
    anchor = out["anchor"]
    print(f"  anchor: nft -f of the same transaction {anchor['nft_f_full']:.3f} s")
    steps = out["change"]
    print(f"one-endpoint change ({len(steps['total'])} changes), p50 / p99 ms:")
    for name in ("compile", "contribute", "commit", "total"):
        print(f"  {name:10} {pct(steps[name], 0.5) * 1e3:9.2f} / {pct(steps[name], 0.99) * 1e3:9.2f}")
    p50 = pct(steps["total"], 0.5) * 1e3
    print(f"  total p50 {p50:.2f} ms   target <= {TARGETS['change_p50_ms']} ms  "
          f"{verdict(p50 <= TARGETS['change_p50_ms'])}")
    small, large = out["counts_small"], out["counts_large"]
    print("kernel table             10 services   " f"{services} services")
    for key in ("kernel_chains", "kernel_rules", "kernel_sets", "kernel_elements", "rules_in_fixed_chains"):
        print(f"  {key:22} {small[key]:12} {large[key]:12}")
    print(f"  chains by kind: {small['chains_by_kind']} -> {large['chains_by_kind']}")
    print(f"  elements by set ({services} services): {large['elements_by_set']}")
    print("  grows with services: elements only (one svc-ips4 element per port, one svc-eps4-I element")
    print("  per endpoint, one service-ips4 element per VIP, one svc-hairpin4 element per local")
    print("  endpoint); chains and rules depend on endpoint counts, not on services")
    lat = out["latency"]
    print(f"first-packet latency (TCP connect to a ClusterIP, {lat['samples']} each): "
          f"10 services {lat['p50_us']['small']:.1f} us, {services} services {lat['p50_us']['large']:.1f} us")
    print(f"  ratio {lat['ratio']:.3f}   target <= {TARGETS['latency_ratio']}  "
          f"{verdict(lat['ratio'] <= TARGETS['latency_ratio'])}")


def plot(out: dict[str, Any], path: Path) -> str:
    """Three panels: the full sync's steps against the nft -f anchor, each one-endpoint change's
    steps, and the first-packet latency with 10 and with N services."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no PNG (the JSON has every sample)"
    fig, (full, change, lat) = plt.subplots(1, 3, figsize=(14, 4))
    steps = ("compile", "contribute", "commit")
    left = 0.0
    for name in steps:
        full.barh(["podnet"], [out["full"][name]], left=[left], label=name)
        left += out["full"][name]
    full.barh(["nft -f"], [out["anchor"]["nft_f_full"]], color="grey", label="nft -f (anchor)")
    full.axvline(TARGETS["full_sync_s"], color="red", linestyle="--", label="target")
    full.set_xlabel("seconds")
    full.set_title(f"full sync, {out['services']} services x {out['endpoints']} endpoints")
    full.legend(fontsize=7)
    bottom = [0.0] * len(out["change"]["total"])
    for name in steps:
        values = [v * 1e3 for v in out["change"][name]]
        change.bar(range(len(values)), values, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    change.axhline(TARGETS["change_p50_ms"], color="red", linestyle="--", label="target (p50)")
    change.set_xlabel("change #")
    change.set_ylabel("ms")
    change.set_title("one-endpoint change")
    change.legend(fontsize=7)
    p50 = out["latency"]["p50_us"]
    lat.bar(["10 services", f"{out['services']} services"], [p50["small"], p50["large"]])
    lat.set_ylabel("TCP connect p50, us")
    lat.set_title(f"first packet to a ClusterIP: ratio {out['latency']['ratio']:.2f}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return f"plot: {path}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_services")
    parser.add_argument("--services", type=int, default=5000)
    parser.add_argument("--endpoints", type=int, default=5)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--connects", type=int, default=200)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_services: needs root (network namespaces)")
        return 1
    out: dict[str, Any] = {"services": args.services, "endpoints": args.endpoints}
    with node_env("s") as small, node_env("l") as large, \
            LibNftables(netns=small.path()) as lib_small, LibNftables(netns=large.path()) as lib_large:
        loaded_small, _ = full_sync(lib_small, 10, args.endpoints)
        loaded, out["full"] = full_sync(lib_large, args.services, args.endpoints)
        out["counts_small"] = counts(lib_small, loaded_small.contribution)
        out["counts_large"] = counts(lib_large, loaded.contribution)
        vips = {"small": measured_vip(10), "large": measured_vip(args.services)}
        out["latency"] = latency(small, large, args.rounds, args.connects, vips)
        out["change"] = one_changes(loaded, args.changes)
        out["anchor"] = kernel_anchor(large, loaded.contribution)
    report(out, args.services)
    OUT.mkdir(exist_ok=True)
    (OUT / "bench_services.json").write_text(json.dumps(out, indent=1))
    print(plot(out, OUT / "bench_services.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
