"""unregister(): a veth pair is out of both namespaces when it returns, while the kernel may still be
reclaiming it; its names can be used again at once."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from nsutil import Netns, NetnsFactory
from podnet.kernel import Netlink, random_mac
from podnet.kernel.unregister import open_netns, unregister

pytestmark = pytest.mark.root


@pytest.fixture
def nl(node: Netns) -> Iterator[Netlink]:
    with Netlink(node.name) as session:
        yield session


def _addresses(ns: Netns) -> list[str]:
    out = json.loads(ns.run(["ip", "-j", "addr", "show"]).stdout)
    return [a["local"] for link in out for a in link.get("addr_info", []) if link["ifname"] != "lo"]


def test_pair_is_gone_from_both_namespaces_on_return(node: Netns, netns: NetnsFactory, nl: Netlink) -> None:
    pod = netns("pod")
    link = nl.add_veth("vh0", "eth0", mac=random_mac(), peer_mac=random_mac(), peer_netns=pod.name)
    with Netlink(pod.name) as pod_nl:
        pod_nl.set_up("eth0")
        pod_nl.add_address("eth0", "10.61.0.5/24")
    handle = open_netns(pod.path)
    assert handle is not None
    try:
        unregister(nl, link, handle)
    finally:
        handle.close()
    assert nl.find_link("vh0") is None and node.links() == ["lo"]
    assert pod.links() == ["lo"] and _addresses(pod) == []
    # The names are free at once: the same attachment can be made again.
    again = nl.add_veth("vh0", "eth0", mac=random_mac(), peer_mac=random_mac(), peer_netns=pod.name)
    assert again.index != link.index and "eth0" in pod.links()


def test_without_the_peer_namespace_the_whole_deletion_is_awaited(netns: NetnsFactory, nl: Netlink) -> None:
    pod = netns("pod")
    link = nl.add_veth("vh0", "eth0", mac=random_mac(), peer_mac=random_mac(), peer_netns=pod.name)
    unregister(nl, link)
    assert nl.find_link("vh0") is None and pod.links() == ["lo"]
    assert open_netns("") is None and open_netns("/run/netns/podnet-no-such-ns") is None


def test_same_namespace_pair_and_a_link_already_gone(nl: Netlink) -> None:
    link = nl.add_veth("va", "vb", mac=random_mac(), peer_mac=random_mac())
    unregister(nl, link)
    assert nl.find_link("va") is None and nl.find_link("vb") is None
    unregister(nl, link)  # gone already: fine


def test_many_at_once(node: Netns, netns: NetnsFactory, nl: Netlink) -> None:
    pods = [netns("pod") for _ in range(5)]
    links = [nl.add_veth(f"vh{i}", "eth0", mac=random_mac(), peer_mac=random_mac(), peer_netns=p.name)
             for i, p in enumerate(pods)]
    start = time.monotonic()
    for link, pod in zip(links, pods, strict=True):
        handle = open_netns(pod.path)
        try:
            unregister(nl, link, handle)
        finally:
            if handle is not None:
                handle.close()
    assert node.links() == ["lo"] and all(p.links() == ["lo"] for p in pods)
    print(f"\n5 pairs unregistered in {(time.monotonic() - start) * 1e3:.1f} ms")


def test_a_namespace_that_does_not_hold_the_peer_proves_nothing(netns: NetnsFactory, nl: Netlink) -> None:
    pod, other = netns("pod"), netns("other")
    link = nl.add_veth("vh0", "eth0", mac=random_mac(), peer_mac=random_mac(), peer_netns=pod.name)
    handle = open_netns(other.path)  # the wrong namespace: the whole deletion is waited for
    assert handle is not None
    try:
        unregister(nl, link, handle)
    finally:
        handle.close()
    assert nl.find_link("vh0") is None and pod.links() == ["lo"]
