"""podnet-bridge killed with SIGKILL at random points of ADD: DEL and GC leave nothing behind, the
next ADD for the same pod works, and no address is ever handed out twice."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from bridgeutil import (
    PLUGIN,
    addresses,
    ip_files,
    links,
    net_conf,
    nft_elements,
    ping_matrix,
    plugin_env,
    plugin_ok,
    routes,
    run_plugin,
    veths,
)

from cnienv import CniEnv
from nsutil import Netns, NetnsFactory
from podnet.plugins.veth import host_veth_name

pytestmark = [pytest.mark.root, pytest.mark.slow]

KILLS = 25


def _start_add(node: Netns, conf: dict[str, object], cid: str, pod: Netns) -> subprocess.Popen[bytes]:
    # `ip netns exec` execs the plugin in place, so the process we signal is podnet-bridge itself.
    proc = node.popen([PLUGIN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      env=plugin_env("ADD", cid, pod.path))
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(conf).encode())
    proc.stdin.close()
    return proc


def _kill_at(proc: subprocess.Popen[bytes], delay: float) -> bool:
    """SIGKILL after ``delay`` seconds; True if the plugin was still running then."""
    time.sleep(delay)
    alive = proc.poll() is None
    if alive:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return alive


def _phase(env: CniEnv, node: Netns, cid: str) -> str:
    """How far the killed ADD got, from what it left."""
    if any(c == f"bnet/{cid}/eth0" for _, c in nft_elements(node)):
        return "masquerade"
    if any(host_veth_name("bnet", cid, "eth0") == v for v in veths(node)):
        return "veth"
    if any((env.ipam_dir / "bnet" / f).read_text().startswith(cid) for f in ip_files(env, "bnet")):
        return "address"
    return "nothing"


def _calibrate(node: Netns, conf: dict[str, object], pod: Netns) -> tuple[float, float]:
    """How long start-up and config loading take (an ADD that fails on its config), and a whole
    ADD (+ DEL). The kills land between the two, where ADD builds things, and a bit past it."""
    startups, wholes = [], []
    for _ in range(2):
        started = time.monotonic()
        assert run_plugin(node, "ADD", {**conf, "mtu": 1}, "calibrate", pod)[0] == 1
        startups.append(time.monotonic() - started)
        started = time.monotonic()
        plugin_ok(node, "ADD", conf, "calibrate", pod)
        wholes.append(time.monotonic() - started)
        plugin_ok(node, "DEL", conf, "calibrate", pod)
    return min(startups), max(wholes)


# The plugin itself is killed, so it must be the one doing the work: through the daemon, SIGKILL
# would hit only the shim while the daemon finished the ADD.
@pytest.mark.inprocess_only
def test_sigkill_during_add(node: Netns, netns: NetnsFactory, tmp_path: Path) -> None:
    env = CniEnv(node, tmp_path)
    conf = net_conf(env, "bnet", "10.88.0.0/24", version="1.1.0", isDefaultGateway=True, ipMasq=True)
    live = netns("live")
    startup, duration = _calibrate(node, conf, live)
    live_ip = plugin_ok(node, "ADD", conf, "live", live)["ips"][0]["address"]

    rng = random.Random(20240611)
    pods = [netns("pod") for _ in range(KILLS)]
    phases: Counter[str] = Counter()
    for i, pod in enumerate(pods):
        # Some kills hit a finished plugin (harmless: it is then a normal attachment).
        alive = _kill_at(_start_add(node, conf, f"k{i}", pod), rng.uniform(0.9 * startup, 1.1 * duration))
        phases[_phase(env, node, f"k{i}") if alive else "finished"] += 1
    print(f"\nSIGKILL during ADD, what each kill left behind: {dict(phases)}")
    assert KILLS - phases["finished"] - phases["nothing"] >= 3  # some kills hit ADD mid-work

    # Half are cleaned by DEL (some without the namespace), the rest by GC.
    for i in range(0, KILLS, 2):
        plugin_ok(node, "DEL", conf, f"k{i}", pods[i] if i % 4 else None)
    plugin_ok(node, "GC", {**conf, "cni.dev/valid-attachments": [{"containerID": "live", "ifname": "eth0"}]})
    assert len(veths(node)) == 1 and ip_files(env, "bnet") == [live_ip.split("/")[0]]
    assert sorted(c for _, c in nft_elements(node)) == ["bnet/live/eth0"] * 2
    assert [r["dst"] for r in routes(node)] == ["10.88.0.0/24"]
    assert all([x["ifname"] for x in links(pod)] == ["lo"] for pod in pods)

    # The next ADD of the same pods works; addresses are unique; everyone reaches everyone.
    again = [plugin_ok(node, "ADD", conf, f"k{i}", pods[i])["ips"][0]["address"] for i in range(0, KILLS, 5)]
    assert len({live_ip, *again}) == len(again) + 1
    assert ping_matrix([(live, live_ip.split("/")[0])] +
                       [(pods[i], a.split("/")[0]) for i, a in zip(range(0, KILLS, 5), again, strict=True)],
                       extra=["10.88.0.1"]) == []
    assert addresses(live, "eth0") == {live_ip}
    for i in range(0, KILLS, 5):
        plugin_ok(node, "DEL", conf, f"k{i}", pods[i])
    plugin_ok(node, "DEL", conf, "live", live)
    assert veths(node) == [] and ip_files(env, "bnet") == [] and nft_elements(node) == []
