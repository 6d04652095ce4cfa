"""Seed failure 3: systemd-udevd's MACAddressPolicy=persistent rewrote the host veth's MAC after the
CNI had pinned it in the pod's static gateway entry, and the pod lost connectivity.

A stand-in for udevd (tests/plugins/udev_standin.py) runs in the node namespace and rewrites every
veth MAC the kernel chose at random (addr_assign_type 1), within milliseconds of the link appearing.
The same test shows both sides: a veth made the old way (no explicit MAC) is rewritten and its pod
goes dark, so the test can fail; podnet-routed's veths are left alone and their pods keep working.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from routed_util import (
    GW4,
    NODE_IP4,
    UDEV_STANDIN,
    VENV_BIN,
    addr_assign_type,
    assert_pod_wired,
    give_node_addresses,
    host_local,
    link,
    plain,
    result_ips,
    sweep_all,
)

from cnienv import CniEnv
from nsutil import Netns, NetnsFactory

pytestmark = pytest.mark.root

NET = "routed-udev"


def _events(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def _wait_event(log: Path, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in _events(log):
            if all(event.get(k) == v for k, v in match.items()):
                return event
        time.sleep(0.01)
    raise AssertionError(f"udev stand-in never logged {match}: {_events(log)}")


def _start_watcher(node: Netns, log: Path) -> subprocess.Popen[bytes]:
    proc = node.popen([sys.executable, UDEV_STANDIN, str(log), "0.005"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_event(log, event="ready")
    return proc


def _stop_watcher(proc: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    proc.send_signal(signal.SIGTERM)  # by its PID; we started it
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err.decode()
    return _wait_event(log, event="summary")


def _wire_like_an_unpinned_cni(node: Netns, pod: Netns, host: str, peer: str, ip: str,
                               gateway_mac: str) -> None:
    """The routed wiring by hand, with the pod's gateway entry pinned to ``gateway_mac``."""
    node.run(["ip", "link", "set", peer, "netns", pod.name, "name", "eth0"])
    node.run(["ip", "link", "set", host, "up"])
    node.run(["ip", "addr", "add", f"{GW4}/32", "dev", host, "scope", "host"])
    node.run(["ip", "route", "add", f"{ip}/32", "dev", host, "scope", "link"])
    pod_mac = link(pod, "eth0")["address"]
    node.run(["ip", "neigh", "replace", ip, "lladdr", pod_mac, "dev", host, "nud", "permanent"])
    node.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    for cmd in (["ip", "addr", "add", f"{ip}/32", "dev", "eth0"], ["ip", "link", "set", "eth0", "up"],
                ["ip", "route", "add", f"{GW4}/32", "dev", "eth0", "scope", "link"],
                ["ip", "route", "add", "default", "via", GW4, "dev", "eth0", "onlink"],
                ["ip", "neigh", "replace", GW4, "lladdr", gateway_mac, "dev", "eth0", "nud", "permanent"]):
        pod.run(cmd)


def test_udev_rewrites_random_macs_but_never_podnet_ones(node: Netns, netns: NetnsFactory,
                                                          tmp_path: Path) -> None:
    give_node_addresses(node)
    env = CniEnv(node, tmp_path, cni_path=str(VENV_BIN))
    env.write_conflist(NET, [{"type": "podnet-routed", "ipam": host_local(env.ipam_dir, "10.91.0.0/24")}])
    log = tmp_path / "udev.log"
    watcher = _start_watcher(node, log)

    # 1. The failure, reproduced: the kernel picks the MACs (addr_assign_type 1), a CNI pins the
    #    host end's MAC in the pod, and udev rewrites it right after the link appears.
    victim = netns("pod")
    node.run(["ip", "link", "add", "vrand0", "type", "veth", "peer", "name", "vrand0p"])
    rewrite = _wait_event(log, event="rewrite", ifname="vrand0")
    _wait_event(log, event="rewrite", ifname="vrand0p")  # the peer too, before it moves to the pod
    original, rewritten = rewrite["old"], rewrite["new"]
    assert original != rewritten and link(node, "vrand0")["address"] == rewritten
    assert addr_assign_type(node, "vrand0") == 3  # udev's write counts as "set" from then on
    _wire_like_an_unpinned_cni(node, victim, "vrand0", "vrand0p", "10.91.0.250", original)
    assert not victim.ping(NODE_IP4, timeout=1), "a pod pinned to the pre-udev MAC must lose its gateway"
    # It is the MAC and nothing else: pinning the current one restores connectivity.
    victim.run(["ip", "neigh", "replace", GW4, "lladdr", rewritten, "dev", "eth0", "nud", "permanent"])
    assert victim.ping(NODE_IP4)

    # 2. podnet-routed with the same udev running: MACs set at creation are never touched.
    pods = [netns("pod") for _ in range(3)]
    results = {pod.name: env.add(NET, pod) for pod in pods}
    time.sleep(0.3)  # give the stand-in every chance (it reacts within milliseconds)
    for pod in pods:
        assert_pod_wired(node, pod, results[pod.name])  # MACs unchanged, type 3, neighbour == host MAC
        env.cni("check", NET, pod)
    addrs = {pod.name: plain(result_ips(results[pod.name])[0]) for pod in pods}
    targets = {pod.name: [a for name, a in addrs.items() if name != pod.name] + [GW4, NODE_IP4]
               for pod in pods}
    assert sweep_all(pods, targets) == {}

    summary = _stop_watcher(watcher, log)
    events = _events(log)
    podnet_veths = {r["interfaces"][0]["name"] for r in results.values()}
    seen = {e["ifname"]: e["type"] for e in events if e["event"] == "seen"}
    rewritten_names = {e["ifname"] for e in events if e["event"] == "rewrite"}
    assert podnet_veths <= set(seen), seen
    assert all(seen[name] == 3 for name in podnet_veths), seen
    assert not podnet_veths & rewritten_names
    assert {"vrand0", "vrand0p"} <= rewritten_names
    print(f"udev stand-in: {summary['seen']} veths seen, {summary['rewrites']} rewritten "
          f"({sorted(rewritten_names)}); podnet host veths rewritten: 0 of {len(podnet_veths)}")

    for pod in pods:
        env.cni("del", NET, pod)
    assert env.ip_files(NET) == []
