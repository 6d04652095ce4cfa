"""``podnet status`` asks the daemon itself: its totals after real calls, and what it refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from daemon_util import plugin_env, run_plugin

from cnienv import NodeDaemon
from nsutil import Netns, NetnsFactory

pytestmark = pytest.mark.root
VENV_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"
PODNET = str(VENV_BIN / "podnet")


def test_status_reports_the_daemons_totals(node: Netns, netns: NetnsFactory, tmp_path: Path) -> None:
    daemon = NodeDaemon(node, tmp_path / "podnet.sock", tmp_path / "daemon.log").start()
    try:
        pod = netns("pod")
        conf = {"cniVersion": "1.0.0", "name": "lo", "type": "podnet-loopback"}
        for command in ("ADD", "DEL"):
            env = plugin_env(daemon.socket, VENV_BIN, command, "c", pod.path, ifname="lo")
            assert run_plugin(node, VENV_BIN / "podnet-loopback", env, conf).returncode == 0
        daemon.requests("DEL")  # counted before it is logged
        argv = [PODNET, "status", "--daemon-socket", str(daemon.socket),
                "--socket", str(tmp_path / "no-agent")]
        out = json.loads(node.run([*argv, "--json"]).stdout)
        d = out["daemon"]
        assert d["requests"] == {"ADD/ok": 1, "DEL/ok": 1} and d["in_flight"] == 0
        assert d["pid"] == daemon.proc.pid and "podnet-bridge" in d["plugins"]
        assert "no agent at" in out["agent"]["error"]
        text = node.run(argv).stdout
        assert f"daemon: pid {daemon.proc.pid}" in text and "1 ADD/ok" in text
    finally:
        assert daemon.stop() == 0


def test_status_from_a_caller_the_daemon_refuses(node: Netns, netns: NetnsFactory, tmp_path: Path) -> None:
    daemon = NodeDaemon(node, tmp_path / "podnet.sock", tmp_path / "daemon.log").start()
    try:
        # Another network namespace than the daemon's: refused like a plugin call would be.
        other = netns("elsewhere")
        proc = other.run([PODNET, "status", "--json", "--daemon-socket", str(daemon.socket),
                          "--socket", str(tmp_path / "no-agent")], check=False)
        assert proc.returncode == 1, proc.stderr  # neither answered
        assert json.loads(proc.stdout)["daemon"]["error"].startswith("the daemon refused")
    finally:
        assert daemon.stop() == 0
