"""No caller can wedge the daemon: a hanging delegated plugin is killed (its whole process group) on
a timeout, slow and idle clients do not hold the workers, a pod's retries do not each take a
worker while its first call hangs, and SIGTERM ends the daemon within its deadline."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_daemon_server import Recorder
from test_daemon_trust import call_frame

from podnet.cni import skel
from podnet.cni.errors import TryAgainLater
from podnet.daemon import protocol as p
from podnet.daemon import registry
from podnet.daemon.logs import JsonLog
from podnet.daemon.server import Config, Daemon
from podnet.plugins import ipam_delegate
from podnet.runtime.invoke import Invocation, RealExec

REPO = Path(__file__).resolve().parents[2]


def _gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its new parent to reap it counts)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _end(pid: int) -> None:
    if not _gone(pid):
        os.kill(pid, signal.SIGKILL)


def _hanging_plugin(directory: Path, name: str = "hang-ipam") -> Path:
    """An executable that starts a child in its process group and then hangs; both write their pid."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / name
    script.write_text(f"#!/bin/sh\nsleep 6 &\necho $! >{directory}/child.pid\necho $$ >{directory}/main.pid\n"
                      "sleep 6\n")
    script.chmod(0o755)
    return script


def _pids(directory: Path) -> list[int]:
    return [int((directory / f).read_text()) for f in ("main.pid", "child.pid") if (directory / f).exists()]


def test_a_hanging_plugin_is_killed_with_its_process_group(tmp_path: Path) -> None:
    plugin = _hanging_plugin(tmp_path)
    start = time.monotonic()
    try:
        with pytest.raises(TryAgainLater, match=r"did not finish within 0\.5 s"):
            RealExec(environ={"PATH": os.environ["PATH"]}, timeout=0.5).run(
                str(plugin), Invocation("ADD", "c1", "/x", "eth0"), b"{}")
        assert time.monotonic() - start < 3  # not the 6 s its child would have held the pipes
        pids = _pids(tmp_path)
        assert len(pids) == 2 and all(_gone(pid) for pid in pids)
    finally:
        for pid in _pids(tmp_path):
            _end(pid)


# -- through the daemon ------------------------------------------------------------------------------


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder(delay=0)
    registry._cache["podnet-fake"] = rec.plugin()
    registry._cache["podnet-delegating"] = skel.Plugin(add=ipam_delegate.ipam_add, delete=lambda args: None)
    yield rec
    registry._cache.pop("podnet-fake", None)
    registry._cache.pop("podnet-delegating", None)


def _serve(config: Config) -> tuple[Daemon, threading.Thread]:
    d = Daemon(config, log=JsonLog(io.StringIO()))
    d.start()
    thread = threading.Thread(target=d.serve_forever, daemon=True)
    thread.start()
    return d, thread


def _stop(d: Daemon, thread: threading.Thread) -> None:
    d.stop()
    thread.join(timeout=15)
    assert not thread.is_alive()


def test_a_hanging_delegated_ipam_is_killed_and_the_call_answered(tmp_path: Path, recorder: Recorder) -> None:
    trusted = tmp_path / "bin"
    _hanging_plugin(trusted)
    d, thread = _serve(Config(socket_path=str(tmp_path / "d.sock"), workers=2, plugin_dirs=(str(trusted),),
                              delegate_timeout=0.5))
    conf = {"cniVersion": "1.1.0", "name": "n1", "type": "podnet-delegating", "ipam": {"type": "hang-ipam"}}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/x", "CNI_IFNAME": "eth0",
           "CNI_PATH": str(trusted)}
    frame = p.encode_request(b"podnet-delegating", json.dumps(conf).encode(),
                             [f"{k}={v}".encode() for k, v in env.items()])
    try:
        start = time.monotonic()
        kind, code, out, _ = call_frame(d, frame)
        assert (kind, code) == (p.KIND_RAN, 1) and json.loads(out)["code"] == 11
        assert time.monotonic() - start < 3
        assert all(_gone(pid) for pid in _pids(trusted))
    finally:
        for pid in _pids(trusted):
            _end(pid)
        _stop(d, thread)
