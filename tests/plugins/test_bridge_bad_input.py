"""podnet-bridge bad input: the right CNI error code, a message naming what is wrong, nothing half-built."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from bridgeutil import assert_clean, ipam, links, net_conf, nft_elements, plugin_ok, run_plugin, veths

from cnienv import CniEnv
from nsutil import Netns, NetnsFactory

pytestmark = pytest.mark.root

V4 = "10.88.0.0/24"


def _ranges(env: CniEnv, *rng: dict[str, Any]) -> dict[str, Any]:
    return {"ipam": {**ipam(env), "ranges": [list(rng)]}}


# (id, config changes, expected code, words the message must contain)
CASES: list[tuple[str, Any, int, tuple[str, ...]]] = [
    ("subnet-prefix", lambda env: _ranges(env, {"subnet": "10.0.0.0/33"}), 7, ("10.0.0.0/33",)),
    ("subnet-garbage", lambda env: _ranges(env, {"subnet": "banana"}), 7, ("banana",)),
    ("range-outside", lambda env: _ranges(env, {"subnet": V4, "rangeStart": "10.89.0.5"}), 7,
     ("rangeStart", "10.89.0.5")),
    ("vlan-negative", {"vlan": -1}, 7, ("VLAN ID -1",)),
    ("vlan-too-big", {"vlan": 5000}, 7, ("VLAN ID 5000",)),
    ("vlan-string", {"vlan": "ten"}, 7, ("VLAN ID 'ten'",)),
    ("vlan-with-gateway", {"vlan": 10, "isGateway": True}, 2, ("vlan", "isGateway")),
    ("mtu-small", {"mtu": 10}, 7, ("MTU 10",)),
    ("mtu-big", {"mtu": 70000}, 7, ("MTU 70000",)),
    ("mtu-string", {"mtu": "1500"}, 7, ("MTU '1500'",)),
    ("mtu-bool", {"mtu": True}, 7, ("MTU True",)),
    ("hairpin-and-promisc", {"hairpinMode": True, "promiscMode": True}, 7, ("hairpin", "promiscuous")),
    ("gateway-not-bool", {"isGateway": "yes"}, 7, ("isGateway", "'yes'")),
    ("bridge-name-long", {"bridge": "b" * 16}, 7, ("bridge name",)),
    ("mac-multicast", {"runtimeConfig": {"mac": "01:00:5e:00:00:01"}}, 7, ("runtimeConfig.mac",)),
    ("mac-garbage", {"args": {"cni": {"mac": "zz:zz"}}}, 7, ("args.cni.mac", "zz:zz")),
    ("ipam-without-type", {"ipam": {"ranges": []}}, 7, ("ipam", "type")),
    ("vlan-trunk", {"vlanTrunk": [{"id": 5}]}, 2, ("vlanTrunk",)),
]


def _nothing_built(env: CniEnv, node: Netns, pod: Netns, pod_links: list[str]) -> None:
    assert veths(node) == [] and env.ip_files("bnet") == [] and nft_elements(node) == []
    assert sorted(x["ifname"] for x in links(pod)) == sorted(pod_links)


# Configuration checks happen before any kernel work, the same code in both modes: run once (the
# daemon's error relay is covered by the other tests here).
@pytest.mark.inprocess_only
@pytest.mark.parametrize(("changes", "code", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_config(node: Netns, netns: NetnsFactory, tmp_path: Path, changes: Any, code: int,
                    words: tuple[str, ...]) -> None:
    env = CniEnv(node, tmp_path)
    pod = netns("pod")
    conf = {**net_conf(env, "bnet", V4, ipMasq=True), **(changes(env) if callable(changes) else changes)}
    got, out = run_plugin(node, "ADD", conf, "cid", pod)
    assert got == 1 and out["code"] == code, out
    assert all(w in out["msg"] + out.get("details", "") for w in words), out
    _nothing_built(env, node, pod, ["lo"])


def test_runtime_input(node: Netns, netns: NetnsFactory, tmp_path: Path) -> None:
    """Bad CNI_ARGS, a missing namespace, an ifname that exists in the pod."""
    env = CniEnv(node, tmp_path)
    conf = net_conf(env, "bnet", V4, ipMasq=True, isGateway=True)
    pod = netns("pod")
    code, out = run_plugin(node, "ADD", conf, "cid", pod, args="MAC=nonsense")
    assert code == 1 and out["code"] == 4 and "CNI_ARGS MAC" in out["msg"]
    code, out = run_plugin(node, "ADD", conf, "cid", "/run/netns/podnet-no-such-ns")
    assert code == 1 and out["code"] == 3 and "podnet-no-such-ns" in out["msg"]
    pod.run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other0"])
    code, out = run_plugin(node, "ADD", conf, "cid", pod)
    assert code == 1 and out["code"] == 4 and "'eth0' already exists" in out["msg"]
    _nothing_built(env, node, pod, ["lo", "other0", "eth0"])


def test_exhausted_and_taken(node: Netns, netns: NetnsFactory, tmp_path: Path) -> None:
    """A /29 with rangeEnd .3: .2 and .3 are usable (.1 is the gateway)."""
    env = CniEnv(node, tmp_path)
    conf = {**net_conf(env, "bnet", V4, version="1.1.0", isGateway=True, ipMasq=True),
            **_ranges(env, {"subnet": "10.88.0.0/29", "rangeEnd": "10.88.0.3"})}
    pods = [netns("pod") for _ in range(4)]
    first = plugin_ok(node, "ADD", conf, "c0", pods[0])
    taken = first["ips"][0]["address"].split("/")[0]
    code, out = run_plugin(node, "ADD", conf, "c1", pods[1], args=f"IP={taken}")
    assert code == 1 and out["code"] == 999 and taken in out["msg"] and "reserved" in out["msg"], out
    _nothing_built_but(env, node, pods[1], keep=1)
    plugin_ok(node, "ADD", conf, "c2", pods[2])
    code, out = run_plugin(node, "STATUS", conf)
    assert code == 1 and out["code"] == 50 and "no free address" in out["msg"], out
    code, out = run_plugin(node, "ADD", conf, "c3", pods[3])
    assert code == 1 and out["code"] == 999 and "10.88.0.0/29" in out["msg"], out
    _nothing_built_but(env, node, pods[3], keep=2)
    for i in (0, 2):
        plugin_ok(node, "DEL", conf, f"c{i}")
    plugin_ok(node, "STATUS", conf)
    assert_clean(env, node, "bnet", pods)


def _nothing_built_but(env: CniEnv, node: Netns, pod: Netns, keep: int) -> None:
    """The failed pod got nothing; the ``keep`` earlier attachments are untouched."""
    assert len(veths(node)) == keep and len(env.ip_files("bnet")) == keep
    assert len(nft_elements(node)) == 2 * keep
    assert [x["ifname"] for x in links(pod)] == ["lo"]


def test_vlan_access_port(node: Netns, netns: NetnsFactory, tmp_path: Path) -> None:
    """'vlan' needs bridge VLAN filtering: where the kernel has it the port is an access port of that
    VLAN; where it lacks it, ADD fails naming the cause and builds nothing."""
    env = CniEnv(node, tmp_path)
    conf = net_conf(env, "bnet", V4, vlan=100, bridge="br-vlan")
    pod = netns("pod")
    code, out = run_plugin(node, "ADD", conf, "cid", pod)
    if code == 0:
        shown = node.run(["bridge", "-j", "vlan", "show"]).stdout
        assert '"vlan":100' in shown.replace(" ", "")
        plugin_ok(node, "DEL", conf, "cid", pod)
    else:
        assert "VLAN filtering" in out["msg"] and "100" in out["msg"], out
    _nothing_built(env, node, pod, ["lo"])
