"""DEL racing ADD of the same attachment (a runtime cleaning up after a timeout while its ADD still
runs), each from its own plugin process, a few milliseconds apart: after both, either the pod is
fully there (veth and IP reservation) or nothing is. Without the per-attachment lock, DEL could
find no veth yet, and release the address after ADD reserved it: a running pod whose address the
next ADD hands out again.

The lock must order in-process calls against each other and against calls the daemon runs, so the
two calls are also split between a daemon and an in-process shim."""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from vethplugins import BRIDGE, ROUTED, VethPlugin, env_for, host_veths, ip_files

from cnienv import NO_DAEMON, NodeDaemon
from nsutil import Netns, NetnsFactory
from podnet.plugins.veth import host_veth_name

pytestmark = pytest.mark.root

NET = "race"
ROUNDS = 50  # without the attachment lock every variant broke within 8-48 rounds
# DEL starts up to this long after ADD (random), or up to ``lead`` before it: a call through the
# daemon starts its work sooner than one that first imports podnet (0.2 s or more on a loaded
# machine), so the in-process DEL needs a head start to overlap an ADD the daemon runs.
MAX_OFFSET = 0.25


def _start(node: Netns, plugin: VethPlugin, command: str, conf: bytes, cid: str, pod: Netns,
           socket: str) -> subprocess.Popen[bytes]:
    env = {**env_for(command, cid, pod.path), "PODNET_SOCKET": socket}
    proc = node.popen([plugin.exe], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      env=env)
    assert proc.stdin is not None
    proc.stdin.write(conf)
    proc.stdin.close()
    return proc


def _finish(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.wait(timeout=60)
    assert b"Traceback" not in out + err, err.decode()
    return proc.returncode, out.decode()


def _state(node: Netns, pod: Netns, data_dir: Path, cid: str) -> str:
    veth = host_veth_name(NET, cid, "eth0") in host_veths(node)
    reserved = cid in ip_files(data_dir, NET).values()
    in_pod = "eth0" in pod.links()
    if veth and reserved and in_pod:
        return "pod"
    if not (veth or reserved or in_pod):
        return "none"
    return f"broken(veth={veth}, ip={reserved}, pod_if={in_pod})"


@pytest.mark.inprocess_only
@pytest.mark.parametrize(("plugin", "add_via", "del_via", "lead"), [
    (ROUTED, "inprocess", "inprocess", 0.25), (BRIDGE, "inprocess", "inprocess", 0.25),
    (ROUTED, "daemon", "inprocess", 0.6), (ROUTED, "inprocess", "daemon", 0.25),
], ids=["routed", "bridge", "routed-add-in-daemon", "routed-del-in-daemon"])
def test_del_racing_add(node: Netns, netns: NetnsFactory, tmp_path: Path, plugin: VethPlugin,
                        add_via: str, del_via: str, lead: float) -> None:
    sockets = {"inprocess": str(tmp_path / NO_DAEMON)}
    daemon = None
    if "daemon" in (add_via, del_via):
        daemon = NodeDaemon(node, tmp_path / "podnet.sock", tmp_path / "daemon.log").start()
        sockets["daemon"] = str(daemon.socket)
    conf = json.dumps(plugin.conf(NET, tmp_path)).encode()
    pod = netns("pod")
    outcomes: Counter[str] = Counter()
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    try:
        for i in range(ROUNDS):
            cid = f"race{i}"
            offset = rng.uniform(-lead, MAX_OFFSET)
            first, second = ("DEL", "ADD") if offset < 0 else ("ADD", "DEL")
            via = {"ADD": add_via, "DEL": del_via}
            procs = {first: _start(node, plugin, first, conf, cid, pod, sockets[via[first]])}
            time.sleep(abs(offset))
            procs[second] = _start(node, plugin, second, conf, cid, pod, sockets[via[second]])
            add, delete = procs["ADD"], procs["DEL"]
            add_code, add_out = _finish(add)
            del_code, del_out = _finish(delete)
            assert del_code == 0, del_out
            state = _state(node, pod, tmp_path, cid)
            outcomes[state if add_code == 0 else f"{state} after a failed ADD"] += 1
            # A failed ADD left nothing; a successful one is "pod" or, DEL having won, "none".
            assert state in ("pod", "none"), (i, state, add_code, add_out, outcomes)
            assert add_code == 0 or state == "none", (i, add_out)
            _finish(_start(node, plugin, "DEL", conf, cid, pod, sockets["inprocess"]))
    finally:
        stopped = daemon.stop() if daemon is not None else 0
    assert stopped == 0, daemon.log_text() if daemon is not None else ""
    print(f"{plugin.type} ADD via {add_via}, DEL via {del_via}: {dict(outcomes)}")
    assert host_veths(node) == [] and ip_files(tmp_path, NET) == {}
    # Each attachment's DEL removed its lock file.
    assert [n for n in os.listdir(os.environ["PODNET_LOCK_DIR"]) if n.endswith(".lock")] == []
