"""The demo's node agent: a real ``podnet agent`` child process in the demo's node namespace,
fed by a manifest directory the demo writes (what the Kubernetes API would hold on a cluster).

Every manifest is written whole under a temporary name and renamed into place, so the agent never
reads half of one. The agent is asked for its state over its socket, like ``podnet status``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from podnet.cli.demo_netns import end_process
from podnet.plugins.agent_notify import ask

NAMESPACE = "demo"
NODE_NAME = "demo-node"
START_SECONDS = 15.0
APPLY_SECONDS = 10.0


class AgentError(RuntimeError):
    pass


# -- manifests -------------------------------------------------------------------------------------

def namespace_manifest() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": NAMESPACE, "labels": {"kubernetes.io/metadata.name": NAMESPACE}}}


def pod_manifest(name: str, labels: Mapping[str, str], ip: str | None = None,
                 node: str = NODE_NAME) -> dict[str, Any]:
    """A pod of ``node``; ``ip`` once its CNI ADD has handed one out (the kubelet's status update)."""
    pod: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": dict(labels)},
        "spec": {"nodeName": node, "containers": [
            {"name": "server", "image": "podnet-demo", "ports": [{"name": "http", "containerPort": 80}]}]},
        "status": {"phase": "Pending"}}
    if ip is not None:
        pod["status"] = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    return pod


def write_manifest(directory: Path, name: str, objects: Sequence[Mapping[str, Any]]) -> Path:
    """``name``.yaml holds ``objects`` as one multi-document file, replaced atomically."""
    final = directory / f"{name}.yaml"
    tmp = directory / f".{name}.yaml.tmp"  # hidden and not .yaml: the agent never reads it
    with open(tmp, "w", encoding="utf-8") as fh:
        yaml.safe_dump_all([dict(o) for o in objects], fh, sort_keys=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    return final


# -- the agent process -----------------------------------------------------------------------------

class AgentProcess:
    def __init__(self, node_ns: str, manifests: Path, pod_cidrs: Sequence[str], socket: Path,
                 log: Path, node_name: str = NODE_NAME, extra: Sequence[str] = ()) -> None:
        self.socket, self.log, self.node_name = str(socket), log, node_name
        self.argv = ["ip", "netns", "exec", node_ns, sys.executable, "-m", "podnet.cli.main", "agent",
                     "--manifests", str(manifests), "--node-name", node_name, "--socket", self.socket,
                     "--log-level", "warning", *extra]
        for cidr in pod_cidrs:
            self.argv += ["--pod-cidr", cidr]
        self.proc: subprocess.Popen[bytes] | None = None

    def launch(self) -> None:
        with open(self.log, "wb") as log:
            # Its own session: a Ctrl-C reaches the demo alone, which stops the agent by PID.
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)

    def start(self) -> None:
        self.launch()
        self.wait(lambda s: bool(s["synced"]) and s["generation_applied"] == s["generation"],
                  START_SECONDS, "list its manifests and program its table")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def stop(self) -> None:
        """SIGTERM (the agent stops cleanly; its table stays, and goes with the node namespace),
        SIGKILL if it does not end in time."""
        proc, self.proc = self.proc, None
        end_process(proc, 10)

    def request(self, request: dict[str, Any]) -> dict[str, Any]:
        return ask(self.socket, request, 5.0)

    def status(self) -> dict[str, Any]:
        answer = self.request({"op": "status"})
        if not answer.get("ok"):
            raise AgentError(f"podnet status: {answer.get('error')}")
        status: dict[str, Any] = answer["status"]
        return status

    def wait(self, done: Callable[[dict[str, Any]], bool], seconds: float, what: str) -> dict[str, Any]:
        """Poll the agent's status until ``done(status)``; a clear error (with its log) otherwise."""
        deadline = time.monotonic() + seconds
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise AgentError(f"the agent of {self.node_name} exited: {self.log_tail()}")
            with contextlib.suppress(OSError, ValueError):  # not listening yet
                status = self.status()
                if done(status):
                    return status
            if time.monotonic() > deadline:
                raise AgentError(f"the agent of {self.node_name} did not {what} within {seconds:.0f} s: "
                                 f"{self.log_tail()}")
            time.sleep(0.05)

    def applied_after(self, generation: int, what: str) -> dict[str, Any]:
        """Wait until the model has moved past ``generation`` (the agent read the change) and the
        kernel holds that model (``generation_applied == generation``, as ``podnet status`` shows)."""
        def done(s: dict[str, Any]) -> bool:
            return bool(s["generation"] > generation and s["generation_applied"] == s["generation"])

        return self.wait(done, APPLY_SECONDS, what)

    def explain(self, src: str, dst: str, port: str) -> str:
        answer = self.request({"op": "explain", "src": src, "dst": dst, "port": port})
        if not answer.get("ok"):
            raise AgentError(f"podnet policy explain: {answer.get('error')}")
        return str(answer["text"])

    def log_tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-5:]) or "(its log is empty)"


@contextmanager
def running_agent(node_ns: str, manifests: Path, pod_cidrs: Sequence[str],
                  work: Path) -> Iterator[AgentProcess]:
    agent = AgentProcess(node_ns, manifests, pod_cidrs, work / "agent.sock", work / "agent.log")
    try:
        agent.start()
        yield agent
    finally:
        agent.stop()
