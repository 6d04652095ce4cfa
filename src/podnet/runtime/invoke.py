"""Finding plugin executables on CNI_PATH and running them with the CNI protocol.

``Exec`` is a protocol so list operations can be tested with a fake; ``RealExec`` runs processes.
Plugin output is decoded here, in one place: a valid error object becomes the matching ``CNIError``;
a non-zero exit without one, a crash, or garbage on stdout become errors that name the plugin and
show what it said.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from podnet.cni.args import format_cni_args
from podnet.cni.errors import CNIError, DecodingFailure, InvalidNetworkConfig, TryAgainLater
from podnet.cni.jsonio import load_json

# libcni retries "text file busy" (a plugin binary being replaced while we exec it) a few times.
ETXTBSY_RETRIES = 5
ETXTBSY_BACKOFF_S = 0.05
STDERR_TAIL = 2000


class PluginNotFound(InvalidNetworkConfig):
    """The config names a plugin type that is not an executable on CNI_PATH."""


@dataclass(frozen=True)
class Invocation:
    """What one plugin call gets besides its stdin (the per-attachment runtime parameters)."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: tuple[tuple[str, str], ...] = ()
    path: tuple[str, ...] = ()

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        # Inherited CNI_* variables must not leak into the call (a stale CNI_NETNS would be wrong).
        env = {k: v for k, v in base.items() if not k.startswith("CNI_")}
        env["CNI_COMMAND"] = self.command
        env["CNI_PATH"] = os.pathsep.join(self.path)
        if self.command != "VERSION":
            env["CNI_CONTAINERID"] = self.container_id
            env["CNI_NETNS"] = self.netns
            env["CNI_IFNAME"] = self.ifname
            env["CNI_ARGS"] = format_cni_args(list(self.args))
        return env


class Exec(Protocol):
    def find(self, plugin_type: str, path: Sequence[str]) -> str: ...

    def run(self, plugin: str, inv: Invocation, stdin: bytes) -> bytes:
        """Run and return stdout on success; raise CNIError otherwise."""
        ...


def find_plugin(plugin_type: str, path: Sequence[str]) -> str:
    if "/" in plugin_type or plugin_type in ("", ".", ".."):
        raise InvalidNetworkConfig(f"invalid plugin type {plugin_type!r}: must be a file name, not a path")
    if not path:
        raise PluginNotFound(f"cannot find plugin {plugin_type!r}: CNI_PATH is empty")
    for directory in path:
        candidate = Path(directory) / plugin_type
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise PluginNotFound(f"failed to find plugin {plugin_type!r} in path {list(path)}")


def decode_failure(plugin: str, returncode: int, stdout: bytes, stderr: bytes) -> CNIError:
    """The error a failed plugin reported, or one describing how it failed."""
    name = os.path.basename(plugin)
    try:
        body = load_json(stdout, f"output of plugin {name}")
    except CNIError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("code"), int) and "msg" in body:
        err = CNIError.from_dict(body)
        if not err.msg:
            err.msg = f"plugin {name} failed with code {err.code}"
        return err
    said = stderr.decode(errors="replace").strip()[-STDERR_TAIL:]
    how = f"was killed by signal {-returncode}" if returncode < 0 else f"exited with status {returncode}"
    return CNIError(f"plugin {name} {how} without a CNI error", said or stdout.decode(errors="replace")[:200])


def decode_output(plugin: str, stdout: bytes) -> Any:
    try:
        return load_json(stdout, f"output of plugin {os.path.basename(plugin)}")
    except DecodingFailure as exc:
        text = stdout.decode(errors="replace")[:200]
        raise DecodingFailure(f"plugin {os.path.basename(plugin)} printed output that is not JSON",
                              f"{exc.details}; output starts {text!r}") from None


class RealExec:
    """Runs plugins as processes. With ``timeout``, a plugin that has not finished by then is
    killed with everything it started: each plugin runs as the leader of its own process group
    (a new session), and the whole group gets SIGKILL. Killing only the plugin would leave its
    children holding the output pipes, and the caller waiting on them."""

    def __init__(self, environ: Mapping[str, str] | None = None, timeout: float | None = None, *,
                 stderr: IO[str] | None = None) -> None:
        self.environ = dict(os.environ if environ is None else environ)
        self.timeout = timeout
        self.stderr = stderr  # where a successful plugin's stderr goes (None: this process's)

    def find(self, plugin_type: str, path: Sequence[str]) -> str:
        return find_plugin(plugin_type, path)

    def run(self, plugin: str, inv: Invocation, stdin: bytes) -> bytes:
        env = inv.env(self.environ)
        for attempt in range(ETXTBSY_RETRIES + 1):
            try:
                returncode, stdout, stderr = self._run_once(plugin, env, stdin)
                break
            except OSError as exc:
                if exc.errno == errno.ETXTBSY and attempt < ETXTBSY_RETRIES:
                    time.sleep(ETXTBSY_BACKOFF_S * (2**attempt))
                    continue
                raise CNIError(f"cannot execute plugin {plugin}", exc.strerror or str(exc)) from None
        if returncode != 0:
            raise decode_failure(plugin, returncode, stdout, stderr)
        if stderr:  # passed on as libcni does: a plugin's warnings must reach whoever called it
            sink = self.stderr if self.stderr is not None else sys.stderr
            sink.write(stderr.decode(errors="replace"))
            sink.flush()
        return stdout

    def _run_once(self, plugin: str, env: Mapping[str, str], stdin: bytes) -> tuple[int, bytes, bytes]:
        with subprocess.Popen([plugin], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env, start_new_session=True) as proc, _running(proc.pid):
            try:
                stdout, stderr = proc.communicate(stdin, timeout=self.timeout)
            except subprocess.TimeoutExpired:
                kill_group(proc)
                raise TryAgainLater(f"plugin {plugin} did not finish within {self.timeout} s",
                                    "it was killed with every process it started") from None
            return proc.returncode, stdout, stderr


# Process groups of plugins running now, for a process that must end before they do (the daemon
# past its stop deadline): their groups would outlive it otherwise.
_groups: set[int] = set()
_groups_lock = threading.Lock()


@contextlib.contextmanager
def _running(pgid: int) -> Iterator[None]:
    with _groups_lock:
        _groups.add(pgid)
    try:
        yield
    finally:
        with _groups_lock:
            _groups.discard(pgid)


def kill_running() -> int:
    """SIGKILL the process group of every plugin still running; how many there were."""
    with _groups_lock:
        groups = list(_groups)
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    return len(groups)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group ``proc`` leads, and reap ``proc`` (its pipes are then closed
    unread: a process that left the group may hold them forever)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
