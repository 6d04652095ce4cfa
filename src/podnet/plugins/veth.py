"""Veth pairs for pod attachments: MACs pinned at creation, removal from the host side.

Why MACs are given at creation: the kernel then marks the address NET_ADDR_SET
(``addr_assign_type`` 3) and systemd-udevd's ``MACAddressPolicy=persistent`` never rewrites it;
a MAC the kernel picked itself (type 1, random) is rewritten by udev shortly after the link
appears, which broke pods whose static gateway neighbour entry still held the old MAC.

The host end's name and alias come from :mod:`podnet.plugins.identity`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from podnet.kernel.model import Link
from podnet.kernel.netlink import Netlink, random_mac
from podnet.kernel.unregister import open_netns, unregister
from podnet.plugins.identity import host_veth_name, is_host_veth_name, network_alias_prefixes

__all__ = ["VethPair", "create_pair", "delete_host_side", "host_veth_name", "network_veths"]


@dataclass(frozen=True)
class VethPair:
    host: Link
    pod: Link


def create_pair(host: Netlink, pod: Netlink, *, host_name: str, pod_ifname: str, alias: str,
                mtu: int | None = None, pod_mac: str | None = None) -> VethPair:
    """Create the pair with the pod end directly in the pod's namespace, both MACs explicit.
    The caller has checked that neither name is taken (:func:`podnet.plugins.attachment.preflight`);
    one taken since then makes the kernel refuse the pair."""
    link = host.add_veth(host_name, pod_ifname, mac=random_mac(), peer_mac=pod_mac or random_mac(),
                         peer_netns=pod.netns, mtu=mtu)
    host.set_alias(link, alias)
    return VethPair(host=dataclasses.replace(link, alias=alias), pod=pod.link(pod_ifname))


def delete_host_side(host: Netlink, host_name: str, pod_netns: str = "") -> bool:
    """Remove the pair from the host side (the pod end goes with it). False if it was not there.

    Returns once both ends are out of their namespaces (closed, unlisted, addresses and routes
    gone), without waiting for the ~15 ms the kernel then spends reclaiming them (see
    podnet.kernel.unregister). Without the pod's namespace (``pod_netns``) that cannot be
    observed for the pod end, and the whole deletion is waited for."""
    link = host.find_link(host_name)
    if link is None:
        return False
    pod = open_netns(pod_netns)
    try:
        unregister(host, link, pod)
    finally:
        if pod is not None:
            pod.close()
    return True


def network_veths(host: Netlink, network: str) -> list[Link]:
    """The host veths of ``network``: by alias, or, without one (its ADD died before setting it),
    by name."""
    prefixes = network_alias_prefixes(network)

    def ours(link: Link) -> bool:
        if link.alias:
            return link.alias.startswith(prefixes)
        return is_host_veth_name(network, link.name)

    return [link for link in host.links() if link.kind == "veth" and ours(link)]
