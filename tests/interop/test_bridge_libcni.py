"""podnet-bridge driven by the Go reference runtime (libcni 1.1.2 through the godriver) in real
namespaces: ADD, the pod's wiring, connectivity, CHECK, DEL (twice, and with the namespace gone)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "plugins"))

from bridgeutil import (
    PODNET_BIN,
    addresses,
    assert_clean,
    link,
    nft_elements,
    ping_matrix,
    routes,
    veths,
)

from cnienv import CniEnv
from nsutil import Netns, NetnsFactory

pytestmark = [pytest.mark.root, pytest.mark.interop]

NET = "bridge-go"


@pytest.fixture
def runtime(go_runtime: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """libcni with podnet's plugins; no podnet daemon (the shims run the plugin in-process)."""
    monkeypatch.setenv("PODNET_SOCKET", str(tmp_path / "no-daemon.sock"))
    go_runtime.cni_path = PODNET_BIN
    return go_runtime


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_libcni_drives_podnet_bridge(runtime: Any, netns: NetnsFactory, tmp_path: Path, version: str) -> None:
    node: Netns = runtime.node
    dual = version == "1.0.0"
    subnets = ["10.97.0.0/24", "fd97::/64"] if dual else ["10.97.0.0/24"]
    env = CniEnv(node, tmp_path)  # for its IPAM directory and file listing
    ipam = {"type": "podnet-host-local", "dataDir": str(env.ipam_dir),
            "ranges": [[{"subnet": s}] for s in subnets]}
    conf = tmp_path / "bridge.conflist"
    conf.write_text(json.dumps({"cniVersion": version, "name": NET, "plugins": [
        {"type": "podnet-bridge", "bridge": "br-go", "isDefaultGateway": True, "ipMasq": dual,
         "capabilities": {"mac": True}, "ipam": ipam}]}))
    cache = tmp_path / "cache"
    pods = [netns("pod") for _ in range(2)]
    ids = ["go0", "go1"]
    mac = "02:97:00:00:00:01"
    results = [runtime.json("add", conf, cid, netns=pod.path, cache_dir=cache,
                            cap_args={"mac": mac} if i == 0 else None)
               for i, (pod, cid) in enumerate(zip(pods, ids, strict=True))]
    for pod, result in zip(pods, results, strict=True):
        assert result["cniVersion"] == version
        assert [i["name"] for i in result["interfaces"]][::2] == ["br-go", "eth0"]
        assert addresses(pod, "eth0") == {ip["address"] for ip in result["ips"]}
        assert [r["gateway"] for r in routes(pod) if r["dst"] == "default"] == ["10.97.0.1"]
    assert link(pods[0], "eth0")["address"] == mac
    assert runtime.json("cached-result", conf, ids[0], cache_dir=cache)["ips"] == results[0]["ips"]
    targets = [(pod, ip["address"].split("/")[0]) for pod, r in zip(pods, results, strict=True)
               for ip in r["ips"]]
    assert ping_matrix(targets, extra=["10.97.0.1"] + (["fd97::1"] if dual else [])) == []
    if dual:
        assert len(nft_elements(node)) == 8
    for pod, cid in zip(pods, ids, strict=True):
        runtime.run("check", conf, cid, netns=pod.path, cache_dir=cache)
    runtime.run("del", conf, ids[0], netns=pods[0].path, cache_dir=cache)
    subprocess.run(["ip", "netns", "del", pods[1].name], check=True)  # gone before its DEL
    runtime.run("del", conf, ids[1], netns=pods[1].path, cache_dir=cache)
    for pod, cid in zip(pods, ids, strict=True):  # DEL twice
        runtime.run("del", conf, cid, netns=pod.path, cache_dir=cache)
    assert_clean(env, node, NET, pods)
    assert veths(node) == []
