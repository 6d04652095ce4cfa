"""DEL and GC always clean up: a network config edited after ADD into one ADD would refuse, or the
same bad CNI_ARGS that made ADD fail, never blocks removing what ADD made (veth, IP, nftables
elements). Both plugins, both modes (daemon and in-process), and once through ``podnet cni``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from vethplugins import BOTH, BRIDGE, IDS, ROUTED, VethPlugin, host_veths, ip_files, nft_comments, ok, run

from cnienv import CniEnv
from nsutil import Netns, NetnsFactory

pytestmark = pytest.mark.root

NET = "cleanup"
BAD_MAC = {"runtimeConfig": {"mac": "01:00:5e:00:00:01"}}
# Edits each plugin's ADD refuses (codes 7 and 2), made to the config between ADD and DEL/GC.
EDITS: dict[str, list[dict[str, Any]]] = {
    BRIDGE.type: [{"mtu": 70000}, {"hairpinMode": True, "promiscMode": True}, {"vlanTrunk": [{"id": 5}]},
                  {"vlan": 10}, {"dns": {"nameservers": "10.0.0.1"}}, {"bridge": "b" * 16}, BAD_MAC],
    ROUTED.type: [{"mtu": 70000}, {"ipMasq": True}, {"dns": {"nameservers": "10.0.0.1"}}, BAD_MAC],
}


def _clean(node: Netns, data_dir: Path) -> None:
    assert host_veths(node) == []
    assert ip_files(data_dir, NET) == {}
    assert [c for c in nft_comments(node) if c.startswith(f"{NET}/")] == []


@pytest.mark.parametrize("plugin", BOTH, ids=IDS)
def test_del_after_config_edit(node: Netns, netns: NetnsFactory, tmp_path: Path, plugin: VethPlugin) -> None:
    good = plugin.conf(NET, tmp_path)
    for i, edit in enumerate(EDITS[plugin.type]):
        pod = netns("pod")
        ok(node, plugin, "ADD", good, f"c{i}", pod)
        edited = {**good, **edit}
        code, out = run(node, plugin, "ADD", edited, f"x{i}", netns("pod"))
        assert code == 1 and out["code"] in (2, 7), (edit, out)  # the edit really is refused by ADD
        code, out = run(node, plugin, "DEL", edited, f"c{i}", pod)
        assert code == 0, (edit, out)
        _clean(node, tmp_path)
        code, out = run(node, plugin, "DEL", edited, f"c{i}", pod)  # and again: idempotent
        assert code == 0, (edit, out)


@pytest.mark.parametrize("plugin", BOTH, ids=IDS)
def test_del_with_the_bad_args_of_a_failed_add(node: Netns, netns: NetnsFactory, tmp_path: Path,
                                               plugin: VethPlugin) -> None:
    conf = plugin.conf(NET, tmp_path)
    pod = netns("pod")
    code, out = run(node, plugin, "ADD", conf, "cid", pod, cni_args="MAC=nonsense")
    assert code == 1 and out["code"] == 4 and "CNI_ARGS MAC" in out["msg"], out
    assert run(node, plugin, "DEL", conf, "cid", pod, cni_args="MAC=nonsense") == (0, None)
    # An attachment that exists, deleted by a DEL whose args ADD would refuse.
    ok(node, plugin, "ADD", conf, "cid", pod)
    assert run(node, plugin, "DEL", conf, "cid", pod, cni_args="MAC=nonsense") == (0, None)
    _clean(node, tmp_path)


@pytest.mark.parametrize("plugin", BOTH, ids=IDS)
def test_gc_after_config_edit(node: Netns, netns: NetnsFactory, tmp_path: Path, plugin: VethPlugin) -> None:
    good = plugin.conf(NET, tmp_path)
    ok(node, plugin, "ADD", good, "gone", netns("pod"))
    for edit in EDITS[plugin.type]:
        code, out = run(node, plugin, "GC", {**good, **edit, "cni.dev/valid-attachments": []})
        assert code == 0, (edit, out)
    _clean(node, tmp_path)


def _bridge_list(env: CniEnv, **keys: Any) -> None:
    ipam = {"type": "podnet-host-local", "dataDir": str(env.ipam_dir),
            "ranges": [[{"subnet": BRIDGE.subnet}]]}
    env.write_conflist(NET, [{"type": "podnet-bridge", "bridge": "br-vp", "isGateway": True, "ipMasq": True,
                              "ipam": ipam, **keys}])


def test_runtime_del_after_config_edit(node: Netns, netns: NetnsFactory, tmp_path: Path) -> None:
    """``podnet cni del`` after the conflist was edited to an MTU ADD refuses: exit 0, nothing left,
    no pending marker. And an ADD refused for its CNI_ARGS is rolled back completely."""
    env = CniEnv(node, tmp_path, cni_path=str(BRIDGE.exe.rsplit("/", 1)[0]))
    _bridge_list(env)
    pod = netns("pod")
    env.add(NET, pod)
    assert host_veths(node) and ip_files(env.ipam_dir, NET)
    _bridge_list(env, mtu=70000)
    proc = env.cni("del", NET, pod, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert host_veths(node) == [] and ip_files(env.ipam_dir, NET) == {}
    assert env.cache_files() == [] and env.pending_files() == []

    _bridge_list(env)
    proc = env.cni("add", NET, pod, "--args", "MAC=nonsense", check=False)
    assert proc.returncode != 0 and json.loads(proc.stdout)["code"] == 4, proc.stdout + proc.stderr
    # The rollback DEL ran with the same args and succeeded: no marker left for GC.
    assert env.pending_files() == []
    assert env.cni("del", NET, pod, "--args", "MAC=nonsense", check=False).returncode == 0
    assert host_veths(node) == [] and ip_files(env.ipam_dir, NET) == {} and env.cache_files() == []


def test_runtime_gc_after_config_edit(node: Netns, netns: NetnsFactory, tmp_path: Path) -> None:
    """``podnet cni gc`` after the conflist was edited into one ADD refuses: the cached attachment is
    DELed and the plugin's GC runs, both succeed, nothing is left."""
    env = CniEnv(node, tmp_path, cni_path=str(BRIDGE.exe.rsplit("/", 1)[0]))
    _bridge_list(env)
    env.add(NET, netns("pod"))
    _bridge_list(env, hairpinMode=True, promiscMode=True)
    proc = env.cni("gc", NET, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert host_veths(node) == [] and ip_files(env.ipam_dir, NET) == {}
    assert env.cache_files() == [] and env.pending_files() == []
