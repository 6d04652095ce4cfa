"""What doctor calls a *live attachment*, and how it finds them.

podnet's veth plugins (``podnet-bridge``, ``podnet-routed``) name an attachment's host veth
deterministically from (network, container ID, ifname) (:func:`podnet.plugins.identity.host_veth_name`)
and label it with the alias ``podnet:<network>/<containerID>/<ifname>``. The pod end of the pair
lives in the pod's network namespace, and the kernel destroys both ends when that namespace goes:
the host veth exists exactly while the pod's namespace does.

So an attachment (network, containerID, ifname) of a network that uses one of those plugins is
**live** if and only if the inspected node namespace holds a veth with the name
``host_veth_name(network, containerID, ifname)``. Anything podnet keeps for an attachment that is
not live (a cache entry, a pending marker, an IP reservation, nftables elements) is debris of a
pod that is gone. A host veth is the network's by its alias or, when it has no alias (its ADD died
before setting it), by its name's network prefix, as GC decides
(:func:`podnet.plugins.veth.network_veths`); the attachment it belongs to is known from the
alias when the alias names one whose host veth name is this link's name (an alias whose container
ID was cut to fit names none).

A reservation written by an old host-local with only a container ID is live while any live
attachment of that container exists on the network. Networks whose plugins make no podnet veth
are never judged this way: there, nothing tells a live attachment from a dead one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from podnet.kernel.model import Link
from podnet.kernel.netlink import Netlink
from podnet.plugins.identity import host_veth_name, is_host_veth_name, network_alias_prefixes


@dataclass(frozen=True)
class HostVeth:
    link: Link
    network: str
    attachment: tuple[str, str] | None  # (container ID, ifname), when the alias names it


def _identity(link: Link, network: str) -> tuple[str, str] | None:
    """The attachment the alias names, if recomputing its host veth name gives this link's name
    (an alias whose container ID was cut to fit, or was edited, names none)."""
    for prefix in network_alias_prefixes(network):
        if link.alias and link.alias.startswith(prefix):
            container_id, sep, ifname = link.alias[len(prefix):].rpartition("/")
            if sep and host_veth_name(network, container_id, ifname) == link.name:
                return container_id, ifname
    return None


def is_networks(link: Link, network: str) -> bool:
    if link.kind != "veth":
        return False
    if link.alias:
        return link.alias.startswith(network_alias_prefixes(network))
    return is_host_veth_name(network, link.name)


class LiveAttachments:
    """The host veths of the judged networks in one snapshot of the node's links."""

    def __init__(self, links: Iterable[Link], networks: Iterable[str]) -> None:
        all_links = list(links)
        self.by_network: dict[str, list[HostVeth]] = {}
        for network in networks:
            self.by_network[network] = [HostVeth(link, network, _identity(link, network))
                                        for link in all_links if is_networks(link, network)]
        self._names = {net: {v.link.name for v in veths} for net, veths in self.by_network.items()}

    @classmethod
    def read(cls, nl: Netlink, networks: Iterable[str]) -> LiveAttachments:
        return cls(nl.links(), networks)

    @classmethod
    def read_now(cls, netns: str | None, networks: Iterable[str]) -> LiveAttachments:
        """A fresh snapshot through a session of its own (a repair may run after the scan's
        session is closed)."""
        with Netlink(netns) as nl:
            return cls.read(nl, networks)

    def veths(self, network: str) -> list[HostVeth]:
        return list(self.by_network.get(network, []))

    def is_live(self, network: str, container_id: str, ifname: str) -> bool:
        return host_veth_name(network, container_id, ifname) in self._names.get(network, set())

    def container_live(self, network: str, container_id: str) -> bool:
        """Some attachment of the container is live (for reservations that record no ifname)."""
        return any(v.attachment is not None and v.attachment[0] == container_id
                   for v in self.by_network.get(network, []))

    def unidentified(self, network: str) -> list[HostVeth]:
        return [v for v in self.by_network.get(network, []) if v.attachment is None]


def still_live(netns: str | None, network: str, container_id: str, ifname: str) -> bool:
    """One fresh lookup in the node namespace, for a repair about to act on what the scan called
    dead."""
    with Netlink(netns) as nl:
        return nl.find_link(host_veth_name(network, container_id, ifname)) is not None
