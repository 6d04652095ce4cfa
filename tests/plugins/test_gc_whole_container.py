"""One IP, one pod: GC with a valid-attachments entry that names a container without ``ifname`` keeps
every interface of that container, and the veth plugin and IPAM judge it alike (the veth, its IP
reservation and its nftables elements all stay), so the next ADD never gets that pod's address."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from vethplugins import BOTH, BRIDGE, IDS, VethPlugin, host_veths, ip_files, nft_comments, ok

from nsutil import Netns, NetnsFactory
from podnet.plugins.veth import host_veth_name

pytestmark = pytest.mark.root

NET = "gcwhole"


# A short ID; and a long one, whose nftables owner string is hashed (it does not fit nft's limit).
@pytest.mark.parametrize("cid_a", ["pod-a", "a" * 200], ids=["short-id", "long-id"])
@pytest.mark.parametrize("plugin", BOTH, ids=IDS)
def test_gc_entry_without_ifname_keeps_the_pod(node: Netns, netns: NetnsFactory, tmp_path: Path,
                                               plugin: VethPlugin, cid_a: str) -> None:
    conf = plugin.conf(NET, tmp_path)
    pod_a = netns("pod")
    result_a = ok(node, plugin, "ADD", conf, cid_a, pod_a)
    ok(node, plugin, "ADD", conf, "pod-a2", netns("pod"), ifname="net1")  # not listed: collected
    before = (host_veths(node), ip_files(tmp_path, NET), nft_comments(node))

    ok(node, plugin, "GC", {**conf, "cni.dev/valid-attachments": [{"containerID": cid_a}]})

    veth_a = host_veth_name(NET, cid_a, "eth0")
    assert host_veths(node) == [veth_a], before
    assert sorted(ip_files(tmp_path, NET).values()) == [cid_a], before
    if plugin is BRIDGE:
        masq = nft_comments(node)
        assert len(masq) == 2 and len(before[2]) == 4, (masq, before)  # A's two elements stay
    result_b = ok(node, plugin, "ADD", conf, "pod-b", netns("pod"))
    ip_a, ip_b = result_a["ips"][0]["address"], result_b["ips"][0]["address"]
    assert ip_a.split("/")[0] != ip_b.split("/")[0], (ip_a, ip_b)
    assert pod_a.run(["ip", "-j", "addr", "show", "dev", "eth0"]).stdout.count(ip_a.split("/")[0]) == 1
    ok(node, plugin, "DEL", conf, cid_a, pod_a)
    ok(node, plugin, "DEL", conf, "pod-b")
    assert host_veths(node) == [] and ip_files(tmp_path, NET) == {} and nft_comments(node) == []
    # DEL removed its attachments' lock files, GC the one of the attachment it collected.
    assert [n for n in os.listdir(os.environ["PODNET_LOCK_DIR"]) if n.endswith(".lock")] == []
