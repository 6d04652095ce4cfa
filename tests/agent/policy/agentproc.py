"""The real ``podnet agent`` as a test runs it: a process inside the test's node namespace, fed by a
manifest directory, asked over its socket whether the kernel is current.

"Current" is the agent's own word for it: ``generation_applied == generation`` in its status (the
last snapshot committed to the table is the model's latest). A test that changes the manifests
reads the generation first and waits until the agent has both seen the change and committed it.
Logs of every agent a test started are kept, so a failing test shows them (see ``conftest.py``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nsutil import Netns
from podnet.plugins.agent_notify import ask

PODNET = Path(sys.executable).parent / "podnet"
LOGS: list[Path] = []  # every agent log of this run, newest last (conftest shows them on failure)


class AgentError(AssertionError):
    pass


class AgentProcess:
    def __init__(self, node: Netns, workdir: Path, manifests: Path, node_name: str,
                 pod_cidrs: Sequence[str], verify_period: float = 1.0) -> None:
        self.node, self.workdir, self.manifests = node, workdir, manifests
        self.node_name, self.pod_cidrs, self.verify_period = node_name, tuple(pod_cidrs), verify_period
        self.socket = str(workdir / "agent.sock")
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log = workdir / "agent.log"

    # ---- lifecycle ----

    def start(self, timeout: float = 15.0) -> None:
        """Start and wait until it has listed everything and committed it."""
        assert self.proc is None or self.proc.poll() is not None, "agent already running"
        self.starts += 1
        argv = [str(PODNET), "agent", "--manifests", str(self.manifests), "--node-name", self.node_name,
                "--socket", self.socket, "--verify-period", str(self.verify_period), "--log-level", "debug"]
        for cidr in self.pod_cidrs:
            argv += ["--pod-cidr", cidr]
        with open(self.log, "ab") as log:
            log.write(f"---- agent start #{self.starts} ----\n".encode())
            log.flush()
            self.proc = self.node.popen(argv, stdout=log, stderr=subprocess.STDOUT)
        if self.log not in LOGS:
            LOGS.append(self.log)
        deadline = time.monotonic() + timeout
        while True:
            status = self.try_status()
            if status is not None and status["synced"] and current(status):
                return
            if self.proc.poll() is not None:
                raise AgentError(f"agent exited with {self.proc.returncode}\n{self.log_text()}")
            if time.monotonic() > deadline:
                raise AgentError(f"agent not current {timeout}s after start: {status}\n{self.log_text()}")
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM by PID (``ip netns exec`` execs the agent, so the PID is the agent's)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            raise AgentError(f"agent did not stop on SIGTERM\n{self.log_text()}") from None
        if self.proc.returncode != 0:
            raise AgentError(f"agent exited with {self.proc.returncode} on SIGTERM\n{self.log_text()}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self, tail: int = 60) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(lines[-tail:])

    # ---- the socket ----

    def ask(self, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        return ask(self.socket, request, timeout)

    def status(self) -> dict[str, Any]:
        answer = self.ask({"op": "status"})
        assert answer.get("ok"), answer
        status: dict[str, Any] = answer["status"]
        return status

    def try_status(self) -> dict[str, Any] | None:
        try:
            return self.status()
        except (OSError, ValueError):
            return None

    def generation(self) -> int:
        return int(self.status()["generation"])

    def wait_current(self, since: int, counts: Mapping[str, int] | None = None,
                     timeout: float = 10.0) -> dict[str, Any]:
        """Until the model has moved past ``since`` (the agent saw the change), holds ``counts``
        objects by kind (a whole file's, not a part of it), and the table holds the model's latest
        generation."""
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = self.status()
            objects = status["objects"]
            if (status["generation"] > since and current(status)
                    and all(objects.get(kind, 0) == n for kind, n in (counts or {}).items())):
                return status
            time.sleep(0.01)
        raise AgentError(f"agent not current {timeout}s after a change (generation was {since}): "
                         f"{status}\n{self.log_text()}")


def current(status: dict[str, Any]) -> bool:
    return bool(status["generation_applied"] == status["generation"])
