"""The udev seed failure on a live node: a podnet host veth whose MAC the kernel chose (random,
addr_assign_type 1), and a routed pod whose pinned gateway entry no longer matches its host veth
after udev rewrote that veth's MAC. Doctor reports both with the fix a person runs (DEL + ADD of
the pod) and never touches the live pod itself."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from doctor_util import ROUTED, Foreign, assert_found, doctor, links, make_env

from nsutil import Netns, NetnsFactory
from podnet.cli.cni_cmd import default_container_id
from podnet.plugins.identity import attachment_alias, host_veth_name

pytestmark = pytest.mark.root


def persistent_mac(ifname: str) -> str:
    """What udev's MACAddressPolicy=persistent writes: a stable MAC derived from the name."""
    raw = bytearray(hashlib.sha256(b"doctor-udev\0" + ifname.encode()).digest()[:6])
    raw[0] = (raw[0] & 0xFC) | 0x02
    return raw.hex(":")


def assign_type(node: Netns, ifname: str) -> int:
    # `ip netns exec` mounts the node's own /sys, so this reads the node's link.
    return int(node.run(["cat", f"/sys/class/net/{ifname}/addr_assign_type"]).stdout)


def test_host_veth_with_a_kernel_chosen_mac(node: Netns, netns: NetnsFactory, tmp_path: Path) -> None:
    env = make_env(node, tmp_path)
    foreign = Foreign(env)  # its veths have random MACs too, and are not podnet's
    pod, cid = netns("pod"), "made-without-a-mac"
    name = host_veth_name(ROUTED, cid, "eth0")
    # What an older CNI (or a person) does: no MAC given, the kernel picks one at random.
    node.run(["ip", "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", pod.name])
    node.run(["ip", "link", "set", name, "alias", attachment_alias(ROUTED, cid, "eth0")])
    (env.ipam_dir / ROUTED).mkdir(parents=True, exist_ok=True)
    (env.ipam_dir / ROUTED / "10.71.0.50").write_bytes(f"{cid}\r\neth0".encode())
    assert assign_type(node, name) == 1
    mac = links(node)[name]["address"]

    run = assert_found(env, "veth-random-mac")
    (finding,) = run.of_kind("veth-random-mac")
    assert finding["where"] == name and finding["containerID"] == cid and not finding["fixable"]
    assert "DEL and ADD" in finding["fix"]
    after = doctor(env, "--fix")
    assert after.code == 1 and after.of_kind("veth-random-mac")[0]["status"] == "found"
    assert links(node)[name]["address"] == mac  # the live pod's veth is untouched

    # The fix a person runs: DEL and ADD that pod; podnet's ADD sets the MAC (type 3).
    env.cni("del", ROUTED, pod, "--container-id", cid)
    env.add(ROUTED, pod, "--container-id", cid)
    assert assign_type(node, name) == 3
    assert doctor(env).code == 0
    foreign.assert_untouched()


def test_udev_rewrote_the_host_veth_mac_of_a_routed_pod(node: Netns, netns: NetnsFactory,
                                                         tmp_path: Path) -> None:
    env = make_env(node, tmp_path)
    foreign = Foreign(env)
    pod, other = netns("pod"), netns("pod")
    env.add(ROUTED, pod)
    env.add(ROUTED, other)
    name = host_veth_name(ROUTED, default_container_id(pod.path), "eth0")
    old = links(node)[name]["address"]
    new = persistent_mac(name)
    # udev's rewrite: a plain link set of the interface's address.
    node.run(["ip", "link", "set", "dev", name, "address", new])

    run = assert_found(env, "gateway-mac-drift")
    (finding,) = run.of_kind("gateway-mac-drift")
    assert finding["where"] == name and new in finding["what"] and old in finding["what"]
    assert not finding["fixable"] and "DEL and ADD" in finding["fix"]
    text = doctor(env, json_out=False).text
    assert f"PROBLEM [gateway-mac-drift] {name}" in text
    after = doctor(env, "--fix")
    assert after.code == 1 and links(node)[name]["address"] == new  # reported, not touched

    env.cni("del", ROUTED, pod)
    env.add(ROUTED, pod)
    assert doctor(env).code == 0
    foreign.assert_untouched()
