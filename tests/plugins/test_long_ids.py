"""Container IDs up to 255 characters (the limit the runtime and the skel allow): ADD, CHECK, GC and
DEL work, the host veth's alias fits what the kernel takes (measured here, not assumed), stays
readable when it fits, and GC recognises a pod whose alias had to be cut."""

from __future__ import annotations

from pathlib import Path

import pytest
from vethplugins import BOTH, BRIDGE, IDS, VethPlugin, host_veths, ip_files, nft_comments, ok, run

from nsutil import Netns, NetnsFactory
from podnet.kernel.errors import KernelError
from podnet.kernel.netlink import Netlink
from podnet.plugins.identity import ALIAS_MAX, attachment_alias
from podnet.plugins.veth import host_veth_name

pytestmark = pytest.mark.root

NET = "longids"


@pytest.mark.inprocess_only
def test_alias_limit_is_the_kernels(netns: NetnsFactory) -> None:
    """IFLA_IFALIAS: the kernel takes ALIAS_MAX bytes (plus the NUL the codec sends), not one more."""
    ns = netns("alias")
    with Netlink(ns.path) as nl:
        nl.set_alias("lo", "a" * ALIAS_MAX)
        assert nl.link("lo").alias == "a" * ALIAS_MAX
        with pytest.raises(KernelError):
            nl.set_alias("lo", "a" * (ALIAS_MAX + 1))


def test_alias_is_readable_when_it_fits_and_cut_otherwise() -> None:
    assert attachment_alias(NET, "abc", "eth0") == f"podnet:{NET}/abc/eth0"
    fits = "c" * (ALIAS_MAX - len(f"podnet:{NET}//eth0"))
    assert attachment_alias(NET, fits, "eth0") == f"podnet:{NET}/{fits}/eth0"
    cut = {attachment_alias(NET, "c" * n, "eth0") for n in (len(fits) + 1, 254, 255)}
    assert len(cut) == 3  # different IDs, different aliases
    for alias in cut:
        assert len(alias.encode()) <= ALIAS_MAX and alias.startswith(f"podnet:{NET}/ccc") and "~" in alias
        assert alias.endswith("/eth0")


def _veth_alias(node: Netns, name: str) -> str:
    with Netlink(node.path) as nl:
        return nl.link(name).alias or ""


@pytest.mark.parametrize("length", [240, 254, 255])
@pytest.mark.parametrize("plugin", BOTH, ids=IDS)
def test_add_check_gc_del(node: Netns, netns: NetnsFactory, tmp_path: Path, plugin: VethPlugin,
                          length: int) -> None:
    cid = ("k" * length)[:length]
    conf = plugin.conf(NET, tmp_path)
    pod = netns("pod")
    result = ok(node, plugin, "ADD", conf, cid, pod)
    veth = host_veth_name(NET, cid, "eth0")
    assert host_veths(node) == [veth]
    assert len(_veth_alias(node, veth).encode()) <= ALIAS_MAX
    ok(node, plugin, "CHECK", {**conf, "prevResult": result}, cid, pod)
    # GC recognises the pod, whether listed with its ifname or as a whole container.
    for entry in ({"containerID": cid, "ifname": "eth0"}, {"containerID": cid}):
        ok(node, plugin, "GC", {**conf, "cni.dev/valid-attachments": [entry]})
        assert host_veths(node) == [veth] and list(ip_files(tmp_path, NET).values()) == [cid]
        if plugin is BRIDGE:
            assert len(nft_comments(node)) == 2
    ok(node, plugin, "DEL", conf, cid, pod)
    assert host_veths(node) == [] and ip_files(tmp_path, NET) == {} and nft_comments(node) == []
    assert run(node, plugin, "DEL", conf, cid, pod) == (0, None)
