"""podnet-routed driven by the Go reference runtime (libcni 1.1.2, through the godriver) in real
namespaces: ADD, the wiring inside the pod, connectivity, CHECK, DEL (twice, and with the pod's
namespace gone), for every spec version libcni knows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "plugins"))

from routed_util import (
    GW4,
    GW6,
    NODE_IP4,
    NODE_IP6,
    VENV_BIN,
    assert_nothing_left,
    assert_pod_wired,
    give_node_addresses,
    host_local,
    plain,
    result_ips,
    sweep_all,
)

from nsutil import Netns, NetnsFactory

pytestmark = [pytest.mark.root, pytest.mark.interop]

NET = "routed-go"


@pytest.fixture
def runtime(go_runtime: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """libcni with podnet's plugins; no podnet daemon (the shims run the plugin in-process)."""
    monkeypatch.setenv("PODNET_SOCKET", str(tmp_path / "no-daemon.sock"))
    go_runtime.cni_path = str(VENV_BIN)
    give_node_addresses(go_runtime.node)
    return go_runtime


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_libcni_drives_podnet_routed(runtime: Any, netns: NetnsFactory, tmp_path: Path,
                                     version: str) -> None:
    node: Netns = runtime.node
    subnets = ("10.96.0.0/24", "fd00:96::/64") if version == "1.0.0" else ("10.96.0.0/24",)
    conf = tmp_path / "routed.conflist"
    conf.write_text(json.dumps({"cniVersion": version, "name": NET, "plugins": [
        {"type": "podnet-routed", "ipam": host_local(tmp_path / "ipam", *subnets)}]}))
    cache = tmp_path / "cache"
    pods = [netns("pod") for _ in range(2)]
    ids = [f"go{i}" for i in range(2)]
    results = {}
    for pod, cid in zip(pods, ids, strict=True):
        result = runtime.json("add", conf, cid, netns=pod.path, cache_dir=cache)
        assert result["cniVersion"] == version
        assert {ip["gateway"] for ip in result["ips"]} <= {GW4, GW6}
        assert_pod_wired(node, pod, result)
        results[pod.name] = result
    addrs = {pod.name: [plain(c) for c in result_ips(results[pod.name])] for pod in pods}
    extra = [GW4, NODE_IP4] + ([NODE_IP6] if version == "1.0.0" else [])
    targets = {pod.name: [a for other in pods if other is not pod for a in addrs[other.name]] + extra
               for pod in pods}
    assert sweep_all(pods, targets) == {}
    if version != "0.3.1":
        for pod, cid in zip(pods, ids, strict=True):
            runtime.run("check", conf, cid, netns=pod.path, cache_dir=cache)
    runtime.run("del", conf, ids[0], netns=pods[0].path, cache_dir=cache)
    subprocess.run(["ip", "netns", "del", pods[1].name], check=True)  # gone before its DEL
    runtime.run("del", conf, ids[1], netns=pods[1].path, cache_dir=cache)
    assert_nothing_left(node, tmp_path / "ipam", NET, [pods[0]])
    for pod, cid in zip(pods, ids, strict=True):  # DEL twice
        runtime.run("del", conf, cid, netns=pod.path, cache_dir=cache)
    assert_nothing_left(node, tmp_path / "ipam", NET)


def test_libcni_check_reports_mac_drift(runtime: Any, netns: NetnsFactory, tmp_path: Path) -> None:
    node: Netns = runtime.node
    conf = tmp_path / "routed.conflist"
    conf.write_text(json.dumps({"cniVersion": "1.0.0", "name": NET, "plugins": [
        {"type": "podnet-routed", "ipam": host_local(tmp_path / "ipam", "10.96.0.0/24")}]}))
    pod = netns("pod")
    result = runtime.json("add", conf, "drift", netns=pod.path, cache_dir=tmp_path)
    host_name, set_mac = result["interfaces"][0]["name"], result["interfaces"][0]["mac"]
    node.run(["ip", "link", "set", "dev", host_name, "address", "02:de:ad:be:ef:02"])
    res = runtime.run("check", conf, "drift", netns=pod.path, cache_dir=tmp_path, check=False)
    assert res.returncode != 0 and "02:de:ad:be:ef:02" in res.stderr and set_mac in res.stderr, res.stderr
    runtime.run("del", conf, "drift", netns=pod.path, cache_dir=tmp_path)
    assert_nothing_left(node, tmp_path / "ipam", NET, [pod])
