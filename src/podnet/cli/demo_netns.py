"""What every ``podnet demo`` needs to build and undo: throw-away network namespaces, and signal
handling that turns SIGTERM into Ctrl-C and keeps a second one from stopping the cleanup halfway."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


def ip(*args: str) -> None:
    """``ip ARGS``; a failure raises with ip's own message."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def netns_exec(netns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]


@contextmanager
def namespace(name: str) -> Iterator[str]:
    """A network namespace with ``lo`` up, deleted when the block ends however it ends."""
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def signals() -> Iterator[None]:
    """SIGTERM ends the demo like Ctrl-C does. Once the cleanup starts, neither stops it halfway
    (a second Ctrl-C would otherwise leave namespaces or processes behind)."""
    caught = (signal.SIGINT, signal.SIGTERM)
    for s in caught:
        signal.signal(s, _interrupt)
    try:
        yield
    finally:
        for s in caught:
            signal.signal(s, signal.SIG_IGN)


def end_process(proc: subprocess.Popen[bytes] | None, grace: float) -> None:
    """SIGTERM a process the demo started (it finishes what it is doing), SIGKILL after ``grace``."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
