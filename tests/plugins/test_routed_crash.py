"""podnet-routed ADD killed with SIGKILL at random points: DEL and GC leave no IP reservation, veth
or host route behind, the next ADD for the same pod works, and no address is ever handed out twice."""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from routed_util import (
    PLUGIN,
    add_ok,
    assert_nothing_left,
    assert_pod_wired,
    give_node_addresses,
    global_addresses,
    host_local,
    host_pod_routes,
    host_veths,
    ip_files,
    ipam_debris,
    kill_pid,
    plain,
    plugin_env,
    result_ips,
    routed_conf,
    run_plugin,
    sweep,
    with_prev,
)

from nsutil import Netns, NetnsFactory
from podnet.kernel.netlink import Netlink
from podnet.plugins.veth import host_veth_name

pytestmark = pytest.mark.root

NET = "routed-crash"
KILLS = 25


def _start_add(node: Netns, conf_bytes: bytes, cid: str, pod: Netns) -> subprocess.Popen[bytes]:
    proc = node.popen([PLUGIN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      env=plugin_env("ADD", cid, pod.path))
    assert proc.stdin is not None
    proc.stdin.write(conf_bytes)
    proc.stdin.close()
    return proc


def _timed(node: Netns, conf_bytes: bytes, cid: str, pod: Netns, command: str = "ADD") -> float:
    start = time.monotonic()
    proc = node.popen([PLUGIN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      env=plugin_env(command, cid, pod.path))
    out, err = proc.communicate(conf_bytes, timeout=30)
    assert proc.returncode == 0, out + err
    return time.monotonic() - start


# When to kill: at a random time, or a random moment after the address was reserved, or after
# the veth appeared (so every run also hits the short window in which the kernel work happens).
TRIGGERS = ("time", "address", "veth", "time", "veth")


def _wait_for_kill_point(trigger: str, rng: random.Random, proc: subprocess.Popen[bytes],
                         watch: Netlink, data_dir: Path, cid: str, t_version: float, t_add: float) -> None:
    if trigger == "time":
        time.sleep(rng.uniform(0.5 * t_version, 1.1 * t_add))
        return
    host_name = host_veth_name(NET, cid, "eth0")
    deadline = time.monotonic() + 10
    while proc.poll() is None and time.monotonic() < deadline:
        if trigger == "address" and cid in ip_files(data_dir, NET).values():
            time.sleep(rng.uniform(0, 0.004))
            return
        if trigger == "veth" and watch.find_link(host_name) is not None:
            time.sleep(rng.uniform(0, 0.008))
            return
        time.sleep(0.0005)


def _state(node: Netns, data_dir: Path, cid: str, finished: bool) -> str:
    if finished:
        return "completed"
    if host_veth_name(NET, cid, "eth0") in host_veths(node):
        return "veth made"
    if cid in ip_files(data_dir, NET).values():
        return "address reserved"
    return "nothing yet"


def _assert_no_address_twice(node: Netns, data_dir: Path, owners: dict[str, Netns]) -> None:
    """Every address configured in a pod is reserved for exactly that pod's container."""
    files = ip_files(data_dir, NET)
    seen: dict[str, str] = {}
    for cid, pod in owners.items():
        if "eth0" not in pod.links():
            continue
        for cidr in global_addresses(pod):
            ip = plain(cidr)
            assert ip not in seen, f"{ip} is configured in {seen.get(ip)} and {cid}"
            seen[ip] = cid
            assert files.get(ip) == cid, (ip, cid, files.get(ip))


@pytest.mark.inprocess_only  # the subject is the plugin process dying; through the daemon it is the shim
def test_sigkill_during_add(node: Netns, netns: NetnsFactory, tmp_path: Path) -> None:
    give_node_addresses(node)
    conf = routed_conf(NET, host_local(tmp_path, "10.94.0.0/24", "fd00:94::/64"), version="1.1.0")
    conf_bytes = json.dumps(conf).encode()
    keeper = netns("pod")
    # Calibrate: the kill window runs from the end of the imports (VERSION) to the end of an ADD.
    t_version = _timed(node, conf_bytes, "calib", keeper, "VERSION")
    t_add = _timed(node, conf_bytes, "calib", keeper)
    assert run_plugin(node, "DEL", conf, "calib", keeper)[0] == 0
    keeper_result = add_ok(node, conf, "keeper", keeper)

    seed = int(os.environ.get("PODNET_CRASH_SEED", time.time_ns() % 100000))
    rng = random.Random(seed)
    outcomes: collections.Counter[str] = collections.Counter()
    owners = {"keeper": keeper}
    with Netlink(node.path) as watch:
        for i in range(KILLS):
            cid, pod = f"kill{i}", netns("pod")
            owners[cid] = pod
            proc = _start_add(node, conf_bytes, cid, pod)
            _wait_for_kill_point(TRIGGERS[i % len(TRIGGERS)], rng, proc, watch, tmp_path, cid,
                                 t_version, t_add)
            finished = proc.poll() is not None
            kill_pid(proc, signal.SIGKILL)  # by PID: the plugin process itself (ip netns exec execs it)
            proc.wait(timeout=30)
            for stream in (proc.stdout, proc.stderr):
                assert stream is not None
                stream.close()
            outcomes[_state(node, tmp_path, cid, finished and proc.returncode == 0)] += 1
            _assert_no_address_twice(node, tmp_path, owners)
            if i % 2 == 0:  # half are cleaned by the runtime's DEL (no prevResult), half left to GC
                assert run_plugin(node, "DEL", conf, cid, pod)[0] == 0
                assert cid not in ip_files(tmp_path, NET).values() and "eth0" not in pod.links()
                assert host_veth_name(NET, cid, "eth0") not in host_veths(node)
    print(f"seed {seed}: {KILLS} kills (ADD takes {t_add:.3f} s, imports {t_version:.3f} s): "
          f"{dict(outcomes)}")

    gc_conf = {**conf, "cni.dev/valid-attachments": [{"containerID": "keeper", "ifname": "eth0"}]}
    assert run_plugin(node, "GC", gc_conf)[0] == 0
    keeper_veth = keeper_result["interfaces"][0]["name"]
    assert host_veths(node) == [keeper_veth]
    assert set(ip_files(tmp_path, NET).values()) == {"keeper"} and len(ip_files(tmp_path, NET)) == 2
    assert ipam_debris(tmp_path, NET) == []
    assert {r.split(" dev ")[1] for r in host_pod_routes(node)} == {keeper_veth}
    assert_pod_wired(node, keeper, keeper_result)

    # The next ADD for a killed pod works, and it reaches the pod that was there all along.
    again = add_ok(node, conf, "kill1", owners["kill1"])
    assert_pod_wired(node, owners["kill1"], again)
    assert not set(result_ips(again)) & set(result_ips(keeper_result))
    assert sweep(owners["kill1"], [plain(c) for c in result_ips(keeper_result)]) == []
    assert run_plugin(node, "CHECK", with_prev(conf, again), "kill1", owners["kill1"])[0] == 0
    for cid in ("kill1", "keeper"):
        assert run_plugin(node, "DEL", conf, cid, owners[cid])[0] == 0
    assert_nothing_left(node, tmp_path, NET, owners.values())
