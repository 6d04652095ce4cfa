"""Cross-node pod routing: how soon a new node's pods are reachable, and what each path carries.

Measured in one run, in throw-away namespaces (IPv4), with podnet's :class:`RouteSync` running for
each node, fed Node objects through the node's own store as its agent would be (each node of the
cluster in a process of its own, :mod:`bench.multinode_agent`; the simulated node in this one):

* simulated peers (Node objects only, no pods): one node namespace whose RouteSync knows N-1
  peers (N = 10 and 100 by default, --sizes); the N-th peer's Node is added, and the time is taken
  until the node's kernel holds its route (host-gw: on-link InternalIP) or its route, neighbour and
  forwarding entry (VXLAN: off-link InternalIP); the kernel is read with podnet's consistent dumps
  after each route or neighbour notification. Also the full sync of N peers from none. p50 / p99
  over repetitions;
* a real cluster: 10 node namespaces on an underlay bridge, each with a pod and its own RouteSync;
  a node joins (on the underlay: host-gw; behind a router: VXLAN): its Node is added to every
  store and its own store lists the cluster; time until the first node's kernel has the entries,
  and until the pod behind the new node answers ping (2 ms apart) from the first node's pod and
  from every node's pod. Rounds alternate between the two modes. Here the 12 nodes' controllers
  share the machine's cores (on a cluster each node has its own), so "from every node" includes
  their wait for a CPU; the underlay's ARP entries stay cached from one round to the next;
* pod-to-pod TCP throughput (iperf3): two pods on one node's bridge, pods on two nodes routed
  host-gw, and pods on two nodes over VXLAN; rounds alternating, Gbit/s side by side and the
  ratios to the same-node figure.

The anchor, for scale: ``ip route add`` of the same host-gw route (one exec), and for VXLAN the
three execs ``ip route add ... onlink``, ``ip neigh add ... nud permanent``, ``bridge fdb append``.
The issue gives no targets: the figures and ratios are printed. The machine's load average is shown
(the figures move with other processes' load on a small shared machine).
Raw numbers go to bench/out/bench_multinode.json, a plot to bench/out/bench_multinode.png.

    python -m bench.bench_multinode [--nodes N] [--rounds N] [--sizes N,N] [--adds N] [--full-runs N]
                                    [--anchor-runs N] [--iperf-rounds N] [--iperf-seconds N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.multinode_agent import node_json
from bench.multinode_topology import (
    Cluster,
    KernelWatch,
    Member,
    Ns,
    add,
    agents_of,
    broadcast,
    delete,
    run,
    settle,
    sim_member,
    sim_peers,
)
from podnet.agent.objects import Kind

OUT = Path(__file__).resolve().parent / "out"
MODES = ("host-gw", "vxlan")
PING_INTERVAL = 0.002
REPLY_GRACE = 0.3  # seconds the pingers run on after every node's sync is done
REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from", re.M)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(values: list[float]) -> dict[str, Any]:
    return {"p50_ms": pct(values, 0.5) * 1e3, "p99_ms": pct(values, 0.99) * 1e3,
            "samples_ms": [v * 1e3 for v in values]}


# ---- simulated peers ------------------------------------------------------------------------------


def sim_case(member: Member, watch: KernelWatch, size: int, vxlan: bool, adds: int,
             full_runs: int) -> dict[str, Any]:
    """The size-th peer added next to size-1 (``adds`` times), and ``full_runs`` syncs of all from none."""
    assert member.store is not None and member.sync is not None
    peers = sim_peers(size, vxlan)
    store, sync = member.store, member.sync
    store.replace(Kind.NODE, "bench", [member.node, *peers[:-1]])
    settle([sync])
    last, added = peers[-1], []
    for _ in range(adds):
        watch.arm()
        t0 = time.monotonic()
        add(store, last)
        added.append(watch.wait(lambda: watch.present([last], vxlan)) - t0)
        delete(store, last)
        settle([sync])
        assert watch.absent([last]), "a deleted peer's route stayed"
    full = []
    for _ in range(full_runs):
        store.replace(Kind.NODE, "bench", [member.node])
        settle([sync])
        watch.arm()
        t0 = time.monotonic()
        store.replace(Kind.NODE, "bench", [member.node, *peers])
        full.append(watch.wait(lambda: watch.present(peers, vxlan)) - t0)
    store.replace(Kind.NODE, "bench", [member.node])
    settle([sync])
    return {"add_one": ms(added), "full_sync": ms(full)}


def measure_sim(cluster: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in MODES:
        member = sim_member(cluster, "sim" + mode[0])
        cluster.start(member, [])
        watch = KernelWatch(member.ns.path)
        try:
            out[mode] = {str(n): sim_case(member, watch, n, mode == "vxlan", args.adds, args.full_runs)
                         for n in args.sizes}
            out[mode]["anchor"] = ms(anchor(member, mode == "vxlan", args.anchor_runs))
        finally:
            watch.close()
        print(f"   simulated peers, {mode}: done", flush=True)
    return out


def anchor(member: Member, vxlan: bool, runs: int) -> list[float]:
    """The same kind of entries written by ``ip``/``bridge`` execs (a device of the anchor's own for
    VXLAN, so podnet's controller has nothing of it to correct)."""
    ns = member.ns.name
    if vxlan:
        run(["ip", "-n", ns, "link", "add", "vxa", "type", "vxlan", "id", "42", "local", "10.82.0.1",
             "dstport", "8473", "nolearning"])
        run(["ip", "-n", ns, "link", "set", "vxa", "up"])
        steps = [["ip", "-n", ns, "route", "add", "10.92.0.0/24", "via", "10.92.0.0", "dev", "vxa", "onlink"],
                 ["ip", "-n", ns, "neigh", "add", "10.92.0.0", "lladdr", "02:00:00:00:00:09", "dev", "vxa",
                  "nud", "permanent"],
                 ["ip", "netns", "exec", ns, "bridge", "fdb", "append", "02:00:00:00:00:09", "dev", "vxa",
                  "dst", "10.83.9.9"]]
        undo = [["ip", "-n", ns, "route", "del", "10.92.0.0/24"],
                ["ip", "-n", ns, "neigh", "del", "10.92.0.0", "dev", "vxa"],
                ["ip", "netns", "exec", ns, "bridge", "fdb", "del", "02:00:00:00:00:09", "dev", "vxa",
                 "dst", "10.83.9.9"]]
    else:
        steps = [["ip", "-n", ns, "route", "add", "10.92.0.0/24", "via", "10.82.9.9"]]
        undo = [["ip", "-n", ns, "route", "del", "10.92.0.0/24"]]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        for argv in steps:
            run(argv)
        times.append(time.perf_counter() - start)
        for argv in undo:
            run(argv)
    return times


# ---- a real cluster: a node joins ------------------------------------------------------------------


def join_round(cluster: Cluster, peers: list[Member], joiner: Member, watch: KernelWatch) -> dict[str, Any]:
    """One join: pingers already sending from every peer's pod, then the Node object appears."""
    assert joiner.agent is not None
    target = joiner.pod_ip()
    # ping with a count or a deadline ends at the first "unreachable" from its node: these run
    # until told to stop (SIGINT, by PID), then say every reply with its time of arrival.
    pingers = [cluster.popen(p.pods[0], ["ping", "-n", "-D", "-i", str(PING_INTERVAL), target])
               for p in peers]
    time.sleep(0.2)  # every pinger sending (and hearing "unreachable" from its node) before the join
    others = agents_of(peers)
    watch.arm()
    wall0, t0 = time.time(), time.monotonic()
    joiner.agent.send("replace", [node_json(n) for n in (joiner.node, *(p.node for p in peers))])
    for agent in others:
        agent.send("add", node_json(joiner.node))
    for agent in (joiner.agent, *others):
        agent.answer()
    kernel = watch.wait(lambda: watch.present([joiner.node], joiner.name == "nv")) - t0
    broadcast([joiner.agent, *others], "synced")  # asks for nothing: every node's pass is done
    time.sleep(REPLY_GRACE)
    reach = []
    for proc in pingers:
        os.kill(proc.pid, signal.SIGINT)
        stdout, _ = proc.communicate(timeout=15)
        found = REPLY.search(stdout)
        if found is None:
            raise RuntimeError(f"{target} did not answer ping within {REPLY_GRACE} s of the routes' sync")
        reach.append(float(found.group(1)) - wall0)
    joiner.agent.call("replace", [node_json(joiner.node)])
    broadcast(others, "delete", node_json(joiner.node))
    broadcast([joiner.agent, *others], "settle")
    return {"kernel": kernel, "reach_first": reach[0], "reach_all": max(reach)}


def measure_join(cluster: Cluster, peers: list[Member], joiners: dict[str, Member],
                 rounds: int) -> dict[str, Any]:
    watch = KernelWatch(peers[0].ns.path)
    samples: dict[str, dict[str, list[float]]] = {
        m: {"kernel": [], "reach_first": [], "reach_all": []} for m in MODES}
    try:
        for r in range(rounds):
            for mode in (MODES if r % 2 == 0 else MODES[::-1]):
                for key, value in join_round(cluster, peers, joiners[mode], watch).items():
                    samples[mode][key].append(value)
    finally:
        watch.close()
    return {mode: {key: ms(v) for key, v in by.items()} for mode, by in samples.items()}


# ---- throughput -----------------------------------------------------------------------------------


def measure_iperf(cluster: Cluster, peers: list[Member], vx: Member, seconds: int,
                  rounds: int) -> dict[str, Any]:
    """Client: the first node's first pod. Servers: its second pod (same bridge), the second node's
    pod (host-gw) and the off-link node's pod (VXLAN)."""
    client = peers[0].pods[0]
    servers = {"same-node": (peers[0].pods[1], peers[0].pod_ip(1)),
               "host-gw": (peers[1].pods[0], peers[1].pod_ip()), "vxlan": (vx.pods[0], vx.pod_ip())}
    procs = [cluster.popen(ns, ["iperf3", "-s", "-p", "5201"]) for ns, _ in servers.values()]
    gbit: dict[str, list[float]] = {k: [] for k in servers}
    try:
        for ns, _ in servers.values():
            wait_listening(ns, 5201)
        order = list(servers)
        for r in range(rounds):
            for name in (order if r % 2 == 0 else order[::-1]):
                argv = ["iperf3", "-c", servers[name][1], "-p", "5201", "-t", str(seconds), "-J"]
                res = run(client.argv(argv), timeout=seconds + 30)
                gbit[name].append(json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9)
    finally:
        for proc in procs:
            cluster.end(proc)
    median = {k: statistics.median(v) for k, v in gbit.items()}
    return {"seconds": seconds, "gbit_s": gbit, "median": median,
            "ratio_to_same_node": {k: v / median["same-node"] for k, v in median.items()}}


def wait_listening(ns: Ns, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not run(ns.argv(["ss", "-Hltn", f"sport = :{port}"])).stdout.strip():
        if time.monotonic() > deadline:
            raise RuntimeError(f"iperf3 server in {ns.name} not listening on {port} after {timeout}s")
        time.sleep(0.05)


# ---- the run --------------------------------------------------------------------------------------


def build_cluster(cluster: Cluster, nodes: int) -> tuple[list[Member], dict[str, Member]]:
    """``nodes`` nodes on the underlay (the first with two pods), a joiner on the underlay (host-gw)
    and one behind the router (VXLAN); the joiners' stores list only themselves."""
    cluster.build_underlay()
    peers = [cluster.add_node(f"n{i}", i, pods=2 if i == 1 else 1) for i in range(1, nodes + 1)]
    joiners = {"host-gw": cluster.add_node("nh", 100), "vxlan": cluster.add_node("nv", 200, offlink=True)}
    cluster.start_agents(peers, [q.node for q in peers])
    cluster.start_agents(list(joiners.values()), [])
    broadcast(agents_of([*peers, *joiners.values()]), "settle")
    return peers, joiners


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"args": vars(args), "loadavg_before": os.getloadavg()}
    cluster = Cluster(f"pnbm{os.getpid() % 100000}")
    try:
        out["simulated"] = measure_sim(cluster, args)
        peers, joiners = build_cluster(cluster, args.nodes)
        print(f"   cluster of {args.nodes} nodes up", flush=True)
        out["join"] = measure_join(cluster, peers, joiners, args.rounds)
        print("   joins done", flush=True)
        if args.iperf_rounds:
            vx = joiners["vxlan"]
            assert vx.agent is not None
            vx.agent.call("replace", [node_json(n) for n in (vx.node, *(p.node for p in peers))])
            broadcast(agents_of(peers), "add", node_json(vx.node))
            broadcast(agents_of([*peers, vx]), "settle")
            out["iperf"] = measure_iperf(cluster, peers, vx, args.iperf_seconds, args.iperf_rounds)
    finally:
        cluster.close()
    out["loadavg_after"] = os.getloadavg()
    return out


def cell(figures: dict[str, Any]) -> str:
    return f"{figures['p50_ms']:10.2f} /{figures['p99_ms']:8.2f}"


def report(out: dict[str, Any]) -> None:
    sizes, big = out["args"]["sizes"], str(out["args"]["sizes"][-1])
    print(f"load average before / after ({os.cpu_count()} cores, shared; after counts this bench's own "
          f"work): {out['loadavg_before'][0]:.2f} / {out['loadavg_after'][0]:.2f}")
    sim = out["simulated"]
    print("simulated peers: Node added -> its entries in the kernel, p50 / p99 ms")
    print(f"  {'':34}{'host-gw':>20}{'vxlan':>20}")
    for n in sizes:
        for key, what in (("add_one", f"peer {n} added next to {n - 1}"),
                          ("full_sync", f"all {n} from none")):
            cells = "".join(cell(sim[m][str(n)][key]) for m in MODES)
            print(f"  {what:34}{cells}")
    cells = "".join(cell(sim[m]["anchor"]) for m in MODES)
    print(f"  {'anchor: ip/bridge execs':34}{cells}")
    for m in MODES:
        one, full = sim[m][big]["add_one"]["p50_ms"], sim[m][big]["full_sync"]["p50_ms"]
        print(f"  {m}: one peer next to {int(big) - 1} / anchor {one / sim[m]['anchor']['p50_ms']:.2f}; "
              f"{big} from none / one next to {int(big) - 1} {full / one:.1f}")
    nodes = out["args"]["nodes"]
    print(f"a node joins a cluster of {nodes} (its pod pinged every {PING_INTERVAL * 1e3:.0f} ms), "
          "p50 / p99 ms")
    print(f"  {'':34}{'host-gw':>20}{'vxlan':>20}")
    for key, what in (("kernel", "entries in node 1's kernel"),
                      ("reach_first", "pod reachable from node 1's pod"),
                      ("reach_all", f"... from all {nodes} nodes' pods")):
        cells = "".join(cell(out["join"][m][key]) for m in MODES)
        print(f"  {what:34}{cells}")
    if "iperf" in out:
        t = out["iperf"]
        print(f"pod-to-pod TCP, iperf3 {t['seconds']} s per run (Gbit/s, runs; median; ratio to same node):")
        for name, runs in t["gbit_s"].items():
            print(f"  {name:10} {' '.join(f'{x:6.2f}' for x in runs)}   median {t['median'][name]:6.2f}   "
                  f"ratio {t['ratio_to_same_node'][name]:.3f}")
    busy = out["loadavg_before"][0]  # the figure after counts this bench's own agents and iperf3
    if busy > (os.cpu_count() or 1) / 2:
        print(f"  note: the machine was busy (load {busy:.1f} on {os.cpu_count()} cores): these figures move "
              "with other processes' load")


def plot(out: dict[str, Any], path: Path) -> str:
    """Three panels: simulated peers (one added, all from none) per mode against the anchor; a node
    joining the real cluster; iperf3 throughput per path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no PNG (the JSON has every sample)"
    fig, (sim_ax, join_ax, tput) = plt.subplots(1, 3, figsize=(15, 4))
    sizes = out["args"]["sizes"]
    labels = [f"+1 next to {n - 1}" for n in sizes] + [f"{n} from none" for n in sizes] + ["anchor"]
    width = 0.4
    for k, mode in enumerate(MODES):
        sim = out["simulated"][mode]
        values = ([sim[str(n)]["add_one"]["p50_ms"] for n in sizes]
                  + [sim[str(n)]["full_sync"]["p50_ms"] for n in sizes] + [sim["anchor"]["p50_ms"]])
        sim_ax.bar([i + k * width for i in range(len(labels))], values, width, label=mode)
    sim_ax.set_xticks([i + width / 2 for i in range(len(labels))], labels, rotation=20, fontsize=7)
    sim_ax.set_yscale("log")
    sim_ax.set_ylabel("ms (p50)")
    sim_ax.set_title("simulated peers: Node -> kernel entries")
    sim_ax.legend(fontsize=7)
    keys = ("kernel", "reach_first", "reach_all")
    for k, mode in enumerate(MODES):
        join_ax.bar([i + k * width for i in range(len(keys))],
                    [out["join"][mode][key]["p50_ms"] for key in keys], width, label=mode)
    join_ax.set_xticks([i + width / 2 for i in range(len(keys))],
                       ["kernel (node 1)", "ping node 1", "ping all"])
    join_ax.set_ylabel("ms (p50)")
    join_ax.set_title(f"a node joins {out['args']['nodes']} nodes")
    join_ax.legend(fontsize=7)
    if "iperf" in out:
        med = out["iperf"]["median"]
        tput.bar(list(med), list(med.values()))
        tput.set_ylabel("Gbit/s (median)")
        tput.set_title("pod-to-pod iperf3")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return f"plot: {path}"


def sizes_arg(text: str) -> list[int]:
    try:
        sizes = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a comma-separated list of numbers") from None
    if sizes[0] < 1 or sizes[-1] > 30000:
        raise argparse.ArgumentTypeError(f"{text!r}: each size must be 1 to 30000")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_multinode", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=10, help="nodes of the real cluster a node joins")
    parser.add_argument("--rounds", type=int, default=10, help="joins per mode, order alternating")
    parser.add_argument("--sizes", type=sizes_arg, default=[10, 100],
                        help="simulated peer counts, comma-separated (default 10,100; at most 30000)")
    parser.add_argument("--adds", type=int, default=30, help="one-peer additions per mode and size")
    parser.add_argument("--full-runs", type=int, default=5, help="syncs of all peers from none")
    parser.add_argument("--anchor-runs", type=int, default=20)
    parser.add_argument("--iperf-rounds", type=int, default=3, help="0: no throughput test")
    parser.add_argument("--iperf-seconds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.nodes < 2 or min(args.rounds, args.adds, args.full_runs, args.anchor_runs) < 1:
        parser.error("--nodes must be at least 2, and --rounds, --adds, --full-runs and --anchor-runs "
                     "at least 1")
    needed = ("ip", "bridge", "ping", "iperf3")
    if os.geteuid() != 0 or any(shutil.which(t) is None for t in needed):
        print(f"bench_multinode: skipped (needs root and {', '.join(needed)})")
        return 0
    out = run_all(args)
    report(out)
    OUT.mkdir(exist_ok=True)
    (OUT / "bench_multinode.json").write_text(json.dumps(out, indent=1))
    print(f"raw numbers: {OUT / 'bench_multinode.json'}")
    print(plot(out, OUT / "bench_multinode.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
