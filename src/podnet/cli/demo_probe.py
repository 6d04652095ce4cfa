"""The demo's TCP connectivity matrix: one :mod:`podnet.cli.demo_pod` process per pod serves a
port and probes the others, all cells at once; the matrix prints like the truth tables of
Kubernetes' NetworkPolicy e2e tests (clients down, servers across, ``.`` reachable, ``X`` blocked).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

Cell = tuple[str, str]  # (client pod, server pod)
PORT = 80
# A blocked SYN is dropped, so a blocked cell costs one timeout; a reachable one answers at once
# (the ping matrix before has already resolved every neighbour).
TIMEOUT = 1.0


class ProbeError(RuntimeError):
    pass


class Probers:
    """One server-and-prober process per pod, keyed by pod name; ``addrs`` are the pods' IPs."""

    def __init__(self, netns: Mapping[str, str], addrs: Mapping[str, str]) -> None:
        self.netns, self.addrs = dict(netns), dict(addrs)
        self.procs: dict[str, subprocess.Popen[str]] = {}

    def start(self) -> None:
        for pod, ns in self.netns.items():
            # The pod's name is what its server answers with; the namespace's name on its command
            # line only says, to ps, whose process it is.
            argv = ["ip", "netns", "exec", ns, sys.executable, "-m", "podnet.cli.demo_pod",
                    str(PORT), pod, ns]
            # A session of their own: a Ctrl-C meant for the demo reaches the demo alone, which
            # then ends these itself, by PID.
            self.procs[pod] = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                               text=True, bufsize=1, start_new_session=True)
        for pod, proc in self.procs.items():
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise ProbeError(f"the TCP server in pod {pod} did not start")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        self.procs.clear()

    def connect(self, src: str, addresses: Sequence[str]) -> list[str | None]:
        """Pod ``src`` connects to each address's PORT at once: the answering pod's name, or None."""
        proc = self.procs[src]
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("".join(f"{i} {a} {PORT} {TIMEOUT}\n" for i, a in enumerate(addresses)))
        proc.stdin.flush()
        got: dict[str, str | None] = {}
        for _ in addresses:
            line = proc.stdout.readline().split()
            if len(line) not in (2, 3):
                raise ProbeError(f"the prober in pod {src} stopped answering")
            got[line[0]] = (line[2] if len(line) == 3 else "") if line[1] == "1" else None
        return [got.get(str(i)) for i in range(len(addresses))]

    def _row(self, src: str, dsts: Sequence[str]) -> dict[Cell, bool]:
        got = self.connect(src, [self.addrs[d] for d in dsts])
        return {(src, d): answer is not None for d, answer in zip(dsts, got, strict=True)}

    def matrix(self) -> dict[Cell, bool]:
        """Every pod connects to every pod's port, all rows at once."""
        pods = list(self.procs)
        out: dict[Cell, bool] = {}
        with ThreadPoolExecutor(len(pods) or 1) as pool:
            for row in pool.map(lambda src: self._row(src, pods), pods):
                out.update(row)
        return out


@contextmanager
def probers(netns: Mapping[str, str], addrs: Mapping[str, str]) -> Iterator[Probers]:
    p = Probers(netns, addrs)
    try:
        p.start()
        yield p
    finally:
        p.stop()


def truth_table(cells: Mapping[Cell, bool], pods: Iterable[str]) -> str:
    """Clients down, servers across, as upstream prints it (aligned here instead of tab-separated)."""
    keys = list(pods)
    width = max(len(k) for k in keys) + 1
    rows = ["-".ljust(width) + " ".join(k.ljust(width) for k in keys)]
    for src in keys:
        rows.append(src.ljust(width) + " ".join(("." if cells[(src, d)] else "X").ljust(width) for d in keys))
    return "\n".join(row.rstrip() for row in rows)


def differences(got: Mapping[Cell, bool], want: Mapping[Cell, bool]) -> list[str]:
    return [f"{s} -> {d}: {'reachable' if got[(s, d)] else 'blocked'}, expected "
            f"{'reachable' if want[(s, d)] else 'blocked'}" for s, d in want if got[(s, d)] != want[(s, d)]]
