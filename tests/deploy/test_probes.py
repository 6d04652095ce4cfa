"""The DaemonSet's readiness probes, run exactly as the manifest writes them against a real
`podnet daemon` and `podnet agent` in a node namespace of the test's: not ready while either is
down, ready once the daemon answers and the agent has listed everything."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cnienv import NodeDaemon
from deploy.deployfiles import REPO, container
from nsutil import Netns

VENV_BIN = REPO / ".venv" / "bin"


def probe(name: str) -> list[str]:
    command: list[str] = container(name)["readinessProbe"]["exec"]["command"]
    return command


@pytest.fixture
def shell_env(tmp_path: Path) -> dict[str, str]:
    """The image's PATH (the venv's bin first), with `podnet` pointed at this test's sockets."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "podnet"
    wrapper.write_text(f'#!/bin/sh\nexec {VENV_BIN}/podnet "$@" --socket {tmp_path}/agent.sock '
                       f"--daemon-socket {tmp_path}/podnet.sock\n")
    wrapper.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{VENV_BIN}:{os.environ['PATH']}"}


def ready(node: Netns | None, name: str, env: dict[str, str]) -> bool:
    argv = probe(name) if node is None else node.exec_argv(probe(name))
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode in (0, 1), proc.stderr  # a probe that crashes is not "not ready"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode == 0


def test_nothing_running_is_not_ready(shell_env: dict[str, str]) -> None:
    assert not ready(None, "daemon", shell_env)
    assert not ready(None, "agent", shell_env)


@pytest.fixture
def agent(node: Netns, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    with open(tmp_path / "agent.log", "wb") as log:
        proc = node.popen([str(VENV_BIN / "podnet"), "agent", "--manifests", str(manifests),
                           "--node-name", "n1", "--socket", str(tmp_path / "agent.sock")],
                          stdout=log, stderr=log)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        proc.wait(30)



@pytest.mark.root
def test_ready_once_the_daemon_answers_and_the_agent_has_listed(
        node: Netns, tmp_path: Path, shell_env: dict[str, str], agent: subprocess.Popen[bytes]) -> None:
    daemon = NodeDaemon(node, tmp_path / "podnet.sock", tmp_path / "daemon.log").start()
    try:
        assert ready(node, "daemon", shell_env)
        deadline = time.monotonic() + 30
        while not ready(node, "agent", shell_env):
            assert agent.poll() is None, (tmp_path / "agent.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "agent.log").read_text()
            time.sleep(0.2)
    finally:
        daemon.stop()
    assert not ready(node, "daemon", shell_env)
    os.kill(agent.pid, signal.SIGTERM)
    agent.wait(30)
    assert not ready(node, "agent", shell_env)
