"""podnet-loopback in real namespaces, through podnet's runtime, for every spec version it serves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnienv import REPO, CniEnv
from nsutil import Netns, NetnsFactory

pytestmark = pytest.mark.root
PODNET_BIN = str(REPO / ".venv" / "bin")


def _lo_up(pod: Netns) -> bool:
    return "UP" in json.loads(pod.run(["ip", "-j", "link", "show", "lo"]).stdout)[0]["flags"]


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_loopback_lifecycle(node: Netns, netns: NetnsFactory, tmp_path: Path, version: str) -> None:
    env = CniEnv(node, tmp_path, cni_path=PODNET_BIN)
    env.write_conflist("lo", [{"type": "podnet-loopback"}], version=version)
    pod = netns("pod")
    pod.run(["ip", "link", "set", "lo", "down"])
    result = env.add("lo", pod, "--ifname", "lo")
    assert result["cniVersion"] == version
    assert result["interfaces"][0]["name"] == "lo" and result["interfaces"][0]["sandbox"] == pod.path
    assert {ip["address"] for ip in result["ips"]} >= {"127.0.0.1/8"}
    assert _lo_up(pod) and pod.ping("127.0.0.1")
    if version != "0.3.1":
        env.cni("check", "lo", pod, "--ifname", "lo")
    if version == "1.1.0":
        env.cni("status", "lo")
        env.cni("gc", "lo", None, "--valid", "x:lo")
    env.cni("del", "lo", pod, "--ifname", "lo")
    assert not _lo_up(pod)
    env.cni("del", "lo", pod, "--ifname", "lo")  # DEL twice is fine
    assert env.cache_files() == [] and env.pending_files() == []


def test_check_reports_lo_down(node: Netns, netns: NetnsFactory, tmp_path: Path) -> None:
    env = CniEnv(node, tmp_path, cni_path=PODNET_BIN)
    env.write_conflist("lo", [{"type": "podnet-loopback"}], version="1.1.0")
    pod = netns("pod")
    env.add("lo", pod, "--ifname", "lo")
    pod.run(["ip", "link", "set", "lo", "down"])
    proc = env.cni("check", "lo", pod, "--ifname", "lo", check=False)
    assert proc.returncode == 1 and "lo is down" in proc.stdout


def test_del_with_namespace_gone(node: Netns, netns: NetnsFactory, tmp_path: Path) -> None:
    env = CniEnv(node, tmp_path, cni_path=PODNET_BIN)
    env.write_conflist("lo", [{"type": "podnet-loopback"}], version="1.1.0")
    pod = netns("pod")
    env.add("lo", pod, "--ifname", "lo", "--container-id", "gone")
    path = pod.path
    node.run(["ip", "netns", "del", pod.name])
    env.cni("del", "lo", None, path, "--ifname", "lo", "--container-id", "gone")
    assert env.cache_files() == []


def test_add_with_missing_namespace_is_unknown_container(node: Netns, tmp_path: Path) -> None:
    env = CniEnv(node, tmp_path, cni_path=PODNET_BIN)
    env.write_conflist("lo", [{"type": "podnet-loopback"}], version="1.1.0")
    proc = env.cni("add", "lo", None, "/run/netns/pn-does-not-exist", "--ifname", "lo", check=False)
    assert proc.returncode == 1 and '"code": 3' in proc.stdout
    assert not Path("/run/netns/pn-does-not-exist").exists()
    assert env.cache_files() == [] and env.pending_files() == []
