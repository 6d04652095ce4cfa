"""Veth pairs for pod attachments: deterministic host-side names, MACs pinned at creation.

Why deterministic names: DEL and GC must find the host side of an attachment without the pod's
namespace and without a cached result (both may be gone after a crash). The name is a hash of
(network, container ID, ifname), so it is the same on every call and different for every
attachment.

Why MACs are given at creation: the kernel then marks the address NET_ADDR_SET
(``addr_assign_type`` 3) and systemd-udevd's ``MACAddressPolicy=persistent`` never rewrites it;
a MAC the kernel picked itself (type 1, random) is rewritten by udev shortly after the link
appears, which broke pods whose static gateway neighbour entry still held the old MAC.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

from podnet.cni.errors import InvalidEnvironment
from podnet.kernel.errors import Exists
from podnet.kernel.model import Link
from podnet.kernel.netlink import Netlink, random_mac
from podnet.kernel.unregister import open_netns, unregister

HOST_PREFIX = "pn"
ALIAS_PREFIX = "podnet:"
ALIAS_MAX = 255


def network_veth_prefix(network: str) -> str:
    """The first 6 characters of every host veth name of ``network``."""
    return HOST_PREFIX + hashlib.sha256(network.encode()).hexdigest()[:4]


def host_veth_name(network: str, container_id: str, ifname: str) -> str:
    """``pn`` + 4 hex digits of the network + 9 of the attachment: 15 characters, the kernel's limit.

    The network is in the name (not only in the alias) because the kernel ignores IFLA_IFALIAS in
    the request that creates a link: an ADD killed between creating the pair and setting the alias
    leaves a veth without alias, and GC still has to recognise it as this network's.
    """
    digest = hashlib.sha256(f"{network}\0{container_id}\0{ifname}".encode()).hexdigest()
    return network_veth_prefix(network) + digest[:9]


def attachment_alias(network: str, container_id: str, ifname: str) -> str:
    """Written on the host veth so an operator (and GC) can tell whose it is."""
    return f"{ALIAS_PREFIX}{network}/{container_id}/{ifname}"[:ALIAS_MAX]


def network_alias_prefix(network: str) -> str:
    return f"{ALIAS_PREFIX}{network}/"


@dataclass(frozen=True)
class VethPair:
    host: Link
    pod: Link


def create_pair(host: Netlink, pod: Netlink, *, host_name: str, pod_ifname: str, alias: str,
                mtu: int | None = None, pod_mac: str | None = None) -> VethPair:
    """Create the pair with the pod end directly in the pod's namespace, both MACs explicit.

    An ``pod_ifname`` that already exists in the pod, or a host name already taken, is an error
    naming it: an attachment never adopts an interface somebody else made.
    """
    if pod.find_link(pod_ifname) is not None:
        raise InvalidEnvironment(f"interface {pod_ifname!r} already exists in {pod.netns.path}")
    if host.find_link(host_name) is not None:
        raise Exists(f"host interface {host_name} already exists",
                     "an earlier ADD for this attachment was not deleted")
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


def stale_host_veths(host: Netlink, network: str, keep: set[str]) -> list[str]:
    """Host veths of ``network`` whose names are not in ``keep``: GC's work list. A veth is the
    network's by its alias, or, when it has no alias (its ADD died before setting it), by its name."""
    prefix = network_alias_prefix(network)
    name_prefix = network_veth_prefix(network)

    def ours(link: Link) -> bool:
        if link.alias:
            return link.alias.startswith(prefix)
        return link.name.startswith(name_prefix) and len(link.name) == len(name_prefix) + 9

    return [link.name for link in host.links()
            if link.kind == "veth" and link.name not in keep and ours(link)]
