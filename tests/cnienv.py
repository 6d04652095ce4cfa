"""A CNI setup for namespace tests: conf dir, cache dir, IPAM dir in tmp, and ``podnet cni`` run
inside the test's node namespace (never in the machine's own namespace).

``NodeDaemon`` runs ``podnet daemon`` inside a test's node namespace on a socket in tmp. A
``CniEnv(..., daemon=True)`` starts one and points its plugin calls at it (``PODNET_SOCKET``);
without it, ``PODNET_SOCKET`` points at a path where no daemon listens, so podnet's plugin shims
run in-process, whatever runs on the machine itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from nsutil import Netns

REPO = Path(__file__).resolve().parent.parent
GO_PLUGINS = "/usr/lib/cni"
NO_DAEMON = "no-daemon.sock"


@dataclass
class NodeDaemon:
    """``podnet daemon`` in a namespace; started and ended by its PID only."""

    node: Netns
    socket: Path
    log: Path
    args: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    def start(self, timeout: float = 20.0) -> NodeDaemon:
        self._log_file = open(self.log, "ab")  # noqa: SIM115 - closed in stop()/kill()
        argv = [sys.executable, "-m", "podnet.cli.main", "daemon", "--socket", str(self.socket), *self.args]
        # `ip netns exec` execs the daemon in place: the PID we hold is the daemon's.
        self.proc = self.node.popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=self._log_file)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"podnet daemon exited with {self.proc.returncode}: {self.log_text()}")
            if self.ready():
                return self
            time.sleep(0.02)
        self.kill()
        raise AssertionError(f"podnet daemon not ready within {timeout} s: {self.log_text()}")

    def ready(self) -> bool:
        """The socket accepts connections (a connect-and-close is answered with nothing)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(str(self.socket))
            except OSError:
                return False
        return True

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (graceful: finishes what is in flight) and wait; SIGKILL if it hangs."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"podnet daemon did not stop within {timeout} s") from None
        self._close_log()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def records(self) -> list[dict[str, Any]]:
        """The daemon's JSON log lines (a line that is not JSON fails the test: logs are structured)."""
        return [json.loads(line) for line in self.log_text().splitlines() if line.strip()]

    def requests(self, command: str | None = None, expect: int = 1,
                 timeout: float = 10) -> list[dict[str, Any]]:
        """The daemon's "request" records (of one command), once ``expect`` of them are there or
        ``timeout`` passed: the daemon answers first and logs after, so the caller can be back
        before the line is written."""
        deadline = time.monotonic() + timeout
        while True:
            served = [r for r in self.records()
                      if r.get("event") == "request" and command in (None, r.get("command"))]
            if len(served) >= expect or time.monotonic() > deadline:
                return served
            time.sleep(0.005)


@dataclass
class CniEnv:
    node: Netns
    root: Path
    cni_path: str = GO_PLUGINS
    daemon: bool = False  # run podnet's plugins through a podnet daemon in the node namespace
    node_daemon: NodeDaemon | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        for sub in ("conf", "cache", "ipam"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        if self.daemon:
            self.start_daemon()

    @property
    def socket_path(self) -> Path:
        return self.root / ("podnet.sock" if self.node_daemon is not None else NO_DAEMON)

    def start_daemon(self, *args: str) -> NodeDaemon:
        """Start (or restart) the podnet daemon for this environment; stop it with stop_daemon()."""
        if self.node_daemon is not None and self.node_daemon.proc is not None:
            self.node_daemon.kill()
        self.node_daemon = NodeDaemon(self.node, self.root / "podnet.sock", self.root / "daemon.log", args)
        return self.node_daemon.start()

    def stop_daemon(self) -> int:
        """Stop the daemon gracefully; its exit code (0 unless it failed)."""
        if self.node_daemon is None:
            return 0
        code = self.node_daemon.stop()
        return code

    @property
    def conf_dir(self) -> Path:
        return self.root / "conf"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def ipam_dir(self) -> Path:
        return self.root / "ipam"

    def write_conflist(self, name: str, plugins: list[dict[str, Any]], version: str = "1.0.0",
                       **top: Any) -> Path:
        body = {"cniVersion": version, "name": name, "plugins": plugins, **top}
        path = self.conf_dir / f"{name}.conflist"
        path.write_text(json.dumps(body, indent=2))
        return path

    def host_local(self, subnet: str, **extra: Any) -> dict[str, Any]:
        ranges = [[{"subnet": subnet}]]
        return {"type": "host-local", "dataDir": str(self.ipam_dir), "ranges": ranges, **extra}

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env.update(NETCONFPATH=str(self.conf_dir), CNI_PATH=self.cni_path, CNI_CACHE_DIR=str(self.cache_dir))
        if self.node_daemon is not None or "PODNET_SOCKET" not in env:
            # Our own daemon, or (no daemon chosen by anyone) a path where none listens.
            env["PODNET_SOCKET"] = str(self.socket_path)
        return env

    def cni(self, command: str, network: str, pod: Netns | None = None, *extra: str,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "podnet.cli.main", "cni", command, network]
        if pod is not None:
            argv.append(pod.path)
        argv.extend(extra)
        proc = self.node.run(argv, check=False, env=self.env())
        assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
        if check and proc.returncode != 0:
            raise AssertionError(f"podnet cni {command} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def add(self, network: str, pod: Netns, *extra: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.cni("add", network, pod, *extra).stdout)
        return result

    def cache_files(self) -> list[str]:
        results = self.cache_dir / "results"
        return sorted(os.listdir(results)) if results.exists() else []

    def pending_files(self) -> list[str]:
        pending = self.cache_dir / "podnet-pending" / "results"
        return sorted(os.listdir(pending)) if pending.exists() else []

    def ip_files(self, network: str) -> list[str]:
        """host-local's reservations: one file per IP (plus its bookkeeping files)."""
        d = self.ipam_dir / network
        if not d.exists():
            return []
        return sorted(n for n in os.listdir(d) if n[0].isdigit() or ":" in n)


def pod_address(pod: Netns, ifname: str = "eth0", family: int = 4) -> list[str]:
    out = pod.run(["ip", "-j", f"-{family}", "addr", "show", "dev", ifname], check=False).stdout
    if not out.strip():
        return []
    return [f"{a['local']}/{a['prefixlen']}" for link in json.loads(out) for a in link.get("addr_info", [])
            if a.get("scope") == "global"]


def veths(node: Netns) -> list[str]:
    out = node.run(["ip", "-j", "link", "show", "type", "veth"]).stdout
    return [link["ifname"] for link in json.loads(out or "[]")]
