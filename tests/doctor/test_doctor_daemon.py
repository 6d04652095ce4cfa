"""The daemon's netlink dump counters, read from its metrics endpoint inside the node namespace."""

from __future__ import annotations

from pathlib import Path

import pytest
from doctor_util import ROUTED, doctor, make_env

from cnienv import NodeDaemon
from nsutil import Netns, NetnsFactory

pytestmark = pytest.mark.root

METRICS = "127.0.0.1:9617"  # inside the test's node namespace: nothing else listens there


def test_dump_counters_from_the_daemon(node: Netns, netns: NetnsFactory, tmp_path: Path) -> None:
    env = make_env(node, tmp_path)
    daemon = NodeDaemon(node, tmp_path / "podnet.sock", tmp_path / "daemon.log",
                        ("--metrics-addr", METRICS)).start()
    try:
        env.node_daemon = daemon  # plugin calls go through it, so it makes dumps of its own
        pod = netns("pod")
        env.add(ROUTED, pod)
        env.cni("check", ROUTED, pod)  # CHECK dumps routes and neighbours
        run = doctor(env, "--metrics-url", f"http://{METRICS}/metrics")
        (note,) = run.of_kind("dump-counters")
        assert note["severity"] == "note" and "retries" in note["what"] and "gave_up 0" in note["what"]
        assert note["data"]["dumps"] > 0 and note["data"]["gave_up"] == 0, (note["data"], daemon.log_text())
        assert run.code == 0, run.text
    finally:
        assert daemon.stop() == 0
    # Without the option, or with the daemon gone: said plainly, and not a problem of the node.
    (note,) = doctor(env).of_kind("dump-counters")
    assert "not available" in note["what"] and "--metrics-url" in note["what"]
    gone = doctor(env, "--metrics-url", f"http://{METRICS}/metrics")
    assert gone.code == 0 and "not available" in gone.of_kind("dump-counters")[0]["what"]
