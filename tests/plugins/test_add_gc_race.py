"""GC racing an ADD of an attachment GC does not know yet, with the daemon down: each call in its
own plugin process, a few milliseconds apart. After both, the pod is either fully there (veth and
IP reservation) or fully gone. Without a per-network lock, GC could release the address the ADD
had just reserved and then miss the veth the ADD created after GC listed the links: a running pod
whose address the next ADD hands to a second pod. (The daemon orders GC against its own ADDs in
memory; an in-process shim is another process, so the order has to live on the node.)"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from test_add_del_race import NET, _finish, _start, _state
from vethplugins import BRIDGE, ROUTED, VethPlugin, env_for, host_veths, ip_files

from cnienv import NO_DAEMON
from nsutil import Netns, NetnsFactory

pytestmark = pytest.mark.root

ROUNDS = 20  # without the network lock GC broke it at round 8


def _gc(node: Netns, plugin: VethPlugin, conf: dict[str, Any], socket: str) -> subprocess.Popen[bytes]:
    body = json.dumps({**conf, "cni.dev/valid-attachments": []}).encode()
    env = {**env_for("GC"), "PODNET_SOCKET": socket}
    proc = node.popen([plugin.exe], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      env=env)
    assert proc.stdin is not None
    proc.stdin.write(body)
    proc.stdin.close()
    return proc


@pytest.mark.inprocess_only
@pytest.mark.parametrize("plugin", [ROUTED, BRIDGE], ids=["routed", "bridge"])
def test_gc_racing_add(node: Netns, netns: NetnsFactory, tmp_path: Path, plugin: VethPlugin) -> None:
    socket = str(tmp_path / NO_DAEMON)
    conf = plugin.conf(NET, tmp_path)
    body = json.dumps(conf).encode()
    pod = netns("pod")
    outcomes: Counter[str] = Counter()
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    for i in range(ROUNDS):
        cid = f"gcrace{i}"
        add = _start(node, plugin, "ADD", body, cid, pod, socket)
        time.sleep(rng.uniform(0.0, 0.25))
        gc = _gc(node, plugin, conf, socket)
        add_code, add_out = _finish(add)
        gc_code, gc_out = _finish(gc)
        assert gc_code == 0, gc_out
        state = _state(node, pod, tmp_path, cid)
        outcomes[state] += 1
        assert state in ("pod", "none"), (i, state, add_code, add_out, dict(outcomes))
        _finish(_start(node, plugin, "DEL", body, cid, pod, socket))
    print(f"{plugin.type} ADD against GC: {dict(outcomes)}")
    assert host_veths(node) == [] and ip_files(tmp_path, NET) == {}
