"""nftables backends: in-process libnftables vs the ``nft -f`` binary, on a table whose set holds
10,000 elements, in a throw-away namespace (removed at the end).

Measured: adding one element, deleting one element, loading the whole table (one transaction that
rebuilds it), the writer's incremental commit of one changed element, and a new writer adopting a
policy-like table of 1,000 sets (100,000 elements) and 1,000 rules, on each backend.

    python -m bench.bench_nft [--elements N] [--runs N]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import time
from collections.abc import Callable

from podnet.dataplane.contribution import Chain, Contribution, Set
from podnet.dataplane.writer import TableWriter
from podnet.kernel.netns import run_in_netns
from podnet.kernel.nft import LibNftables, Nft, NftExec, Transaction

TABLE = "bench"


def timed(fn: Callable[[], object], runs: int) -> float:
    """Median seconds of ``runs`` calls after one warm-up call."""
    fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def address(i: int) -> str:
    return f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"


def full_table(count: int) -> Transaction:
    tx = Transaction("inet", TABLE).add_table().delete_table().add_table()
    tx.add_set("pods", "ipv4_addr").add_chain("c", type="filter", hook="forward", priority=0, policy="accept")
    tx.add_rule("c", "ip saddr @pods accept")
    for i in range(count):
        tx.add_element("pods", address(i))
    return tx


def measure(nft: Nft, count: int, runs: int) -> dict[str, float]:
    nft.apply(full_table(count))
    fresh = itertools.count(count)
    existing = itertools.count(0)
    out = {
        "add one element": timed(lambda: nft.apply(Transaction("inet", TABLE).add_element(
            "pods", address(next(fresh)))), runs),
        "delete one element": timed(lambda: nft.apply(Transaction("inet", TABLE).delete_element(
            "pods", address(next(existing)))), runs),
        "full table load": timed(lambda: nft.apply(full_table(count)), max(3, runs // 10)),
    }
    out["writer: commit one element"] = writer_commit(nft, count, runs)
    out["writer: adopt 1000 sets x 100"] = writer_adopt(nft, 1000, 100)
    return out


def writer_adopt(nft: Nft, sets: int, per_set: int) -> float:
    """A new writer's first commit over an existing table: the whole table rebuilt in one
    transaction, as a restarting agent does (a policy-like table: one rule and one set per policy)."""
    decls = tuple(Set(f"p{i}-peers", ("ipv4_addr",)) for i in range(sets))
    rules = tuple(f"ip saddr @p{i}-peers accept" for i in range(sets))
    elements = {f"p{i}-peers": dict.fromkeys((address(i * per_set + j) for j in range(per_set)), None)
                for i in range(sets)}
    chain = Chain("c", type="filter", hook="forward", priority=0, policy="accept", rules=rules)
    contribution = Contribution(chains=(chain,), sets=decls, elements=elements)

    def adopt() -> None:
        writer = TableWriter(nft, "inet", TABLE)
        writer.contribute("policy", contribution)
        writer.commit()
    return timed(adopt, 3)


def writer_commit(nft: Nft, count: int, runs: int) -> float:
    writer = TableWriter(nft, "inet", TABLE)
    keys = dict.fromkeys((address(i) for i in range(count)), None)
    chain = Chain("c", type="filter", hook="forward", priority=0, policy="accept",
                  rules=("ip saddr @pods accept",))
    decl = Contribution(chains=(chain,), sets=(Set("pods", ("ipv4_addr",)),))
    writer.contribute("decl", decl)
    writer.contribute("pods", Contribution(elements={"pods": keys}))
    writer.commit()
    flip = itertools.count()

    def one() -> None:
        n = next(flip)
        writer.contribute("one", Contribution(elements={"pods": {address(count + 1 + n % 2): None}}))
        writer.commit()
    return timed(one, runs)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_nft")
    parser.add_argument("--elements", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args(argv)
    ns = f"podnet-bench-nft-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    path = f"/run/netns/{ns}"
    try:
        with LibNftables(netns=path) as lib:
            # A caller inside the namespace (the agent's case) uses the context directly; one
            # outside hands each command to the backend's worker thread.
            inside = run_in_netns(path, measure, lib, args.elements, args.runs)
            handoff = measure(lib, args.elements, args.runs)
        binary = measure(NftExec(netns=path), args.elements, max(10, args.runs // 5))
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    print(f"set of {args.elements} elements, median of runs (ms); ratio: nft -f / in-process")
    print(f"{'operation':28} {'in-process':>11} {'hand-off':>9} {'nft -f':>9} {'ratio':>8}")
    for name in inside:
        a, h, b = inside[name] * 1e3, handoff[name] * 1e3, binary[name] * 1e3
        print(f"{name:28} {a:11.3f} {h:9.3f} {b:9.3f} {b / a:7.1f}x")
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main(sys.argv[1:]))
