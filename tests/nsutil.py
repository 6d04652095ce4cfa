"""Network-namespace helpers for tests: every namespace and process a test makes is removed.

Tests never touch the machine's own root namespace: a "node" namespace stands in for the host,
and runtimes/plugins are executed inside it with ``ip netns exec``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

NETNS_DIR = "/run/netns"
_counter = itertools.count()


def unique_name(role: str) -> str:
    """A namespace name that cannot collide with another test run (pid + counter)."""
    return f"pn{os.getpid() % 100000}-{role}{next(_counter)}"


@dataclass
class Netns:
    name: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def path(self) -> str:
        return os.path.join(NETNS_DIR, self.name)

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self, argv: Sequence[str], *, check: bool = True, input: str | None = None,
        env: dict[str, str] | None = None, timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.exec_argv(argv), check=check, capture_output=True, text=True,
            input=input, env=env, timeout=timeout,
        )

    def sh(self, cmd: str, *, check: bool = True) -> str:
        return self.run(["sh", "-c", cmd], check=check).stdout

    def popen(self, argv: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        """Start a process in this namespace; it is ended (by its PID) when the namespace goes."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(self.exec_argv(argv), **kw)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def links(self) -> list[str]:
        out = self.run(["ip", "-o", "link", "show"]).stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line.strip()]

    def ping(self, addr: str, *, count: int = 1, timeout: int = 2) -> bool:
        res = self.run(["ping", "-n", "-q", "-c", str(count), "-W", str(timeout), addr], check=False)
        return res.returncode == 0


def create(name: str) -> Netns:
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    ns = Netns(name)
    ns.run(["ip", "link", "set", "lo", "up"])
    return ns


def destroy(ns: Netns) -> None:
    for proc in ns.procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    # Deleting the namespace file drops the last reference; veths inside go with it.
    subprocess.run(["ip", "netns", "del", ns.name], capture_output=True)


@contextmanager
def namespaces() -> Iterator[NetnsFactory]:
    factory = NetnsFactory()
    try:
        yield factory
    finally:
        factory.close()


class NetnsFactory:
    def __init__(self) -> None:
        self.made: list[Netns] = []

    def __call__(self, role: str = "ns") -> Netns:
        ns = create(unique_name(role))
        self.made.append(ns)
        return ns

    def close(self) -> None:
        for ns in reversed(self.made):
            destroy(ns)
        self.made.clear()
