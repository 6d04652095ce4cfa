"""What cross-node routing should be, computed from the Nodes alone (no kernel): the desired routes,
VXLAN devices and their neighbour and forwarding entries, and a line per peer for status.

For every other node and each of its pod CIDRs, per address family:

* **host-gw** when the peer's InternalIP of that family is on-link (the caller's ``onlink`` says
  through which link, from this namespace's connected routes): ``podCIDR via peerIP``.
* **vxlan** otherwise, over an underlay family both nodes have an InternalIP of (the pod CIDR's own
  family first): ``podCIDR via peerVTEP dev podnet.vxN onlink``, a permanent neighbour peerVTEP ->
  peer MAC and a forwarding entry peer MAC -> peer InternalIP. As flannel does, a node's VTEP
  address is the network address of its pod CIDR (as a /32 or /128), and its VXLAN MAC is derived
  from its name, so a peer needs nothing but the Node object to reach it.

Readiness does not matter: a NotReady node's pods may still run, and routes that come and go with a
flapping kubelet would only cut them off. A node with no pod CIDR or no InternalIP is listed with
why it gets no route.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from podnet.agent.model import IPAddress, IPNetwork, Node

DEVICE_PREFIX = "podnet.vx"
VXLAN_VNI = 1
# The Linux kernel's default VXLAN port, and flannel's: IANA's 4789 is where other overlays of the
# node may already listen (Cilium, OVN, a cloud's own), which podnet must not receive for. With
# flannel's VNI (1) as well, the kernel refuses a second device for the same local address, so a
# node where flannel already runs gets an error in podnet's status, never two overlays at once.
VXLAN_PORT = 8472
# The underlay's 1500 less VXLAN's headers (outer IPv6 40 + UDP 8 + VXLAN 8 + inner Ethernet 14):
# the larger IPv6 overhead for both, so one MTU fits either underlay.
VXLAN_MTU = 1430


def device_name(underlay_version: int) -> str:
    return f"{DEVICE_PREFIX}{underlay_version}"


def vxlan_mac(node_name: str) -> str:
    """The VXLAN MAC of a node: locally administered unicast, from a hash of its name."""
    raw = bytearray(hashlib.sha256(b"podnet-vxlan\0" + node_name.encode()).digest()[:6])
    raw[0] = (raw[0] & 0xFC) | 0x02
    return raw.hex(":")


def vtep_address(cidr: IPNetwork) -> str:
    return str(cidr.network_address)


@dataclass(frozen=True)
class RouteSpec:
    """A route podnet wants: ``dst via gateway``, out of link ``oif`` (host-gw) or of the VXLAN
    device ``device`` (vxlan, always onlink: the peer's VTEP address is on no subnet here)."""

    dst: IPNetwork
    gateway: str
    oif: int | None = None
    device: str | None = None

    @property
    def onlink(self) -> bool:
        return self.device is not None


@dataclass
class Overlay:
    """One VXLAN device and everything podnet puts on it."""

    device: str
    local: str  # this node's InternalIP of the underlay family
    mac: str
    addresses: set[str] = field(default_factory=set)  # this node's VTEP addresses, as CIDRs
    neighbours: dict[str, str] = field(default_factory=dict)  # peer VTEP -> peer MAC
    fdb: dict[str, str] = field(default_factory=dict)  # peer MAC -> peer InternalIP


@dataclass(frozen=True)
class PeerState:
    name: str
    mode: str  # host-gw | vxlan | mixed | none
    state: str  # "ok" or why some of its CIDRs have no route
    pod_cidrs: tuple[str, ...]


@dataclass
class Plan:
    routes: dict[IPNetwork, RouteSpec] = field(default_factory=dict)
    overlays: dict[str, Overlay] = field(default_factory=dict)
    peers: list[PeerState] = field(default_factory=list)

    def key(self) -> tuple[object, ...]:
        """Equal for equal plans (what a sync is compared with, to tell drift from a model change)."""
        overlays = tuple(sorted((o.device, o.local, tuple(sorted(o.addresses)),
                                 tuple(sorted(o.neighbours.items())), tuple(sorted(o.fdb.items())))
                                for o in self.overlays.values()))
        return (tuple(sorted(self.routes.items(), key=lambda kv: str(kv[0]))), overlays)


OnLink = Callable[[IPAddress], int | None]  # the link a directly reachable address is on, else None


def plan(me: str, nodes: Mapping[str, Node], onlink: OnLink) -> Plan:
    out = Plan()
    mine = nodes.get(me)
    my_ips = _by_version(mine.internal_ips if mine else ())
    for version, local in sorted(my_ips.items()):
        # A device even with no peer behind it yet: a peer that finds this node off-link sends to it
        # at once, whatever this node decided about that peer.
        overlay = Overlay(device_name(version), str(local), vxlan_mac(me))
        overlay.addresses = {f"{vtep_address(c)}/{c.max_prefixlen}" for c in (mine.pod_cidrs if mine else ())}
        out.overlays[overlay.device] = overlay
    claimed = Claims()
    for c in mine.pod_cidrs if mine else ():
        claimed.claim(c, me)
    for name in sorted(nodes):
        if name != me:
            out.peers.append(_peer(out, nodes[name], my_ips, onlink, claimed))
    return out


class Claims:
    """Pod CIDRs already given a node, by family and prefix length, so that finding one that
    overlaps a new CIDR costs the number of prefix lengths in use, not the number of nodes (two
    networks overlap when one holds the other: a supernet of the new one at a claimed length, or,
    rarer, a claimed longer one inside it)."""

    def __init__(self) -> None:
        self._by_length: dict[tuple[int, int], dict[IPNetwork, str]] = {}

    def claim(self, cidr: IPNetwork, node: str) -> None:
        self._by_length.setdefault((cidr.version, cidr.prefixlen), {})[cidr] = node

    def holder(self, cidr: IPNetwork) -> str | None:
        """The node whose claimed CIDR overlaps ``cidr``, if any."""
        for (version, length), claimed in self._by_length.items():
            if version != cidr.version:
                continue
            if length <= cidr.prefixlen:
                found = claimed.get(cidr.supernet(new_prefix=length))
            else:
                inside = (n for c, n in claimed.items() if c.supernet(new_prefix=cidr.prefixlen) == cidr)
                found = next(inside, None)
            if found is not None:
                return found
        return None


def _peer(out: Plan, peer: Node, my_ips: Mapping[int, IPAddress], onlink: OnLink,
          claimed: Claims) -> PeerState:
    """The peer's routes into ``out``; a pod CIDR that overlaps one this node or an earlier peer
    (in name order) has gets none: a route there would take another node's pods."""
    cidrs = tuple(str(c) for c in peer.pod_cidrs)
    if not peer.pod_cidrs:
        return PeerState(peer.name, "none", "no pod CIDR", cidrs)
    ips = _by_version(peer.internal_ips)
    modes: set[str] = set()
    problems: list[str] = []
    for cidr in peer.pod_cidrs:
        holder = claimed.holder(cidr)
        if holder is not None:
            problems.append(f"{cidr}: overlaps the pod CIDR of node {holder}")
            continue
        claimed.claim(cidr, peer.name)
        ip = ips.get(cidr.version)
        oif = onlink(ip) if ip is not None else None
        if ip is not None and oif is not None:
            out.routes[cidr] = RouteSpec(cidr, str(ip), oif=oif)
            modes.add("host-gw")
            continue
        underlay = next((v for v in (cidr.version, 10 - cidr.version) if v in ips and v in my_ips), None)
        if underlay is None:
            why = "this node has no InternalIP" if not my_ips else "no InternalIP of a family both nodes have"
            problems.append(f"{cidr}: not on-link, and {why} for an overlay")
            continue
        overlay = out.overlays[device_name(underlay)]
        vtep, mac = vtep_address(cidr), vxlan_mac(peer.name)
        out.routes[cidr] = RouteSpec(cidr, vtep, device=overlay.device)
        overlay.neighbours[vtep] = mac
        overlay.fdb[mac] = str(ips[underlay])
        modes.add("vxlan")
    mode = modes.pop() if len(modes) == 1 else ("mixed" if modes else "none")
    return PeerState(peer.name, mode, "; ".join(problems) or "ok", cidrs)


def _by_version(ips: Iterable[IPAddress]) -> dict[int, IPAddress]:
    """The first address of each family (a node's first InternalIP of a family is its address)."""
    out: dict[int, IPAddress] = {}
    for ip in ips:
        out.setdefault(ip.version, ip)
    return out


def covering(routes: Iterable[tuple[IPNetwork, str | None, int | None]], ip: IPAddress) -> int | None:
    """The link ``ip`` is directly reachable on: the most specific of ``routes`` (destination,
    gateway, oif) that covers it has no gateway. None when that route has one, or none covers it."""
    best: tuple[int, str | None, int | None] | None = None
    for dst, gateway, oif in routes:
        if dst.version == ip.version and ip in dst and (best is None or dst.prefixlen > best[0]):
            best = (dst.prefixlen, gateway, oif)
    if best is None or best[1] is not None:
        return None
    return best[2]
