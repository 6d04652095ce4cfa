"""Tables whose changing data are elements owned by CNI attachments (the bridge plugin's ``ipMasq``
and ``macspoofchk``), written under three rules:

* a plugin only ever adds or deletes its own elements: every element carries its owner's comment
  (one attachment), and the keys an owner writes derive from what it holds (its IPAM addresses,
  its host veth);
* the structure (table, sets, chains and their static rules) is created only when it is missing:
  the chain is made with ``create chain``, so of several plugins racing on a fresh table exactly one
  adds the rules, and an ADD on an existing table writes nothing but its elements;
* DEL and GC remove by owner comment, never by key.

Plugins are short-lived, so these tables are not held by a :class:`~podnet.dataplane.writer.TableWriter`
(which keeps a long-lived union); the owner comment in the kernel is the record of who owns what.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from podnet.kernel.errors import InvalidArgument
from podnet.kernel.nft import (
    Element,
    Family,
    Nft,
    NftError,
    NftExec,
    NftExists,
    NftUnavailable,
    Transaction,
    check_name,
    shared_backend,
)


class OwnedElements:
    """A component's table whose changing data are set elements commented with their owner.

    Subclasses define the sets (:meth:`declarations`) and the chain with its static rules
    (:meth:`chain`); listing and removing by owner are shared here.
    """

    family: Family = "inet"
    sets: tuple[str, ...] = ()

    def __init__(self, nft: Nft, table: str, *, description: str = "podnet") -> None:
        self.nft = nft
        self.table = check_name(table, "table name")
        self.description = description

    def declarations(self) -> Transaction:
        """The table and its sets: ``add`` leaves existing ones as they are (elements included)."""
        raise NotImplementedError

    def chain(self, tx: Transaction) -> Transaction:
        """``create chain`` and its rules: the transaction fails with NftExists if the chain is there."""
        raise NotImplementedError

    def structure(self) -> Transaction:
        """Everything, for a table that does not exist yet."""
        return self.chain(self.declarations())

    def write(self, elements: Callable[[Transaction], Transaction]) -> None:
        """The owner's elements in one transaction; the structure too only when it is missing."""
        if not self.nft.has_table(self.family, self.table):
            try:
                self.nft.apply(elements(self.structure()))
                return
            except NftExists:
                pass  # another plugin created the chain first: its rules are there
        self.nft.apply(elements(self.declarations()))

    def elements(self, owner_filter: Callable[[str], bool]) -> list[tuple[str, Element]]:
        """(set, element) of every element whose owner comment passes the filter."""
        # Most DELs find no table at all (the feature is off): asking the kernel costs far less
        # than listing, and a table that is not there holds no elements.
        if not self.nft.has_table(self.family, self.table):
            return []
        state = self.nft.list_table(self.family, self.table)
        if state is None:
            return []
        return [(name, e) for name in self.sets for e in state.elements(name)
                if e.comment is not None and owner_filter(e.comment)]

    def owned_by(self, owner: str) -> list[tuple[str, Element]]:
        return self.elements(lambda c: c == owner)

    def remove(self, owner_filter: Callable[[str], bool], *, missing_ok: bool = False) -> int:
        """Remove every element whose owner passes the filter; returns how many. Idempotent and
        safe against a concurrent remover (see :meth:`Transaction.remove_element`). With
        ``missing_ok``, a node without nftables has none to remove (0) instead of an error."""
        try:
            found = self.elements(owner_filter)
        except NftUnavailable:
            if missing_ok:
                return 0
            raise
        if not found:
            return 0
        tx = Transaction(self.family, self.table)
        for name, element in found:
            tx.remove_element(name, element.key)
        self.nft.apply(tx)
        return len(found)


# ---- masquerade ----------------------------------------------------------------------------------

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True)
class MasqSets:
    pods: str  # pod addresses that are masqueraded
    local: str  # "pod . its subnet": destinations that are not masqueraded


MASQ_SETS = {4: MasqSets("masq-pods-v4", "masq-local-v4"), 6: MasqSets("masq-pods-v6", "masq-local-v6")}
MASQ_CHAIN = "nat-postrouting"


class Masquerade(OwnedElements):
    """Source NAT for pod addresses, in a table owned by one component (``inet podnet-bridge``): pod
    address ``P`` with subnet ``S`` is masqueraded unless the destination is in ``S`` or multicast,
    like the reference plugins' ``ipMasq``.

    The rules never change; each pod address is two elements (``P`` in the pods set and
    ``P . S`` in the local set), both commented with the owner (one attachment).
    """

    family: Family = "inet"
    sets = tuple(name for s in MASQ_SETS.values() for name in (s.pods, s.local))

    def declarations(self) -> Transaction:
        tx = Transaction(self.family, self.table).add_table(f"{self.description}; managed by podnet")
        for family, sets in MASQ_SETS.items():
            addr = "ipv4_addr" if family == 4 else "ipv6_addr"
            tx.add_set(sets.pods, addr, comment=f"IPv{family} pod addresses to masquerade")
            tx.add_set(sets.local, (addr, addr), flags=("interval",),
                       comment=f"IPv{family} pod address . its own subnet (not masqueraded)")
        return tx

    def chain(self, tx: Transaction) -> Transaction:
        tx.create_chain(MASQ_CHAIN, type="nat", hook="postrouting", priority="srcnat", policy="accept")
        for family, sets in MASQ_SETS.items():
            ip, multicast = ("ip", "224.0.0.0/4") if family == 4 else ("ip6", "ff00::/8")
            tx.add_rule(MASQ_CHAIN, f"{ip} daddr {multicast} return", "multicast is never masqueraded")
            tx.add_rule(MASQ_CHAIN, f"{ip} saddr . {ip} daddr @{sets.local} return",
                        "pod to its own subnet")
            tx.add_rule(MASQ_CHAIN, f"{ip} saddr @{sets.pods} masquerade", "pod to anywhere else")
        return tx

    @staticmethod
    def keys(address: IPInterface) -> tuple[str, str, str, str]:
        """(pods set, its key, local set, its key) for one pod address."""
        sets = MASQ_SETS[address.version]
        return sets.pods, str(address.ip), sets.local, f"{address.ip} . {address.network}"

    def add(self, owner: str, addresses: Iterable[IPInterface]) -> None:
        """The owner's elements for its addresses, in one transaction. An element left for the same
        address by an attachment that no longer holds it is taken over (IPAM gave the address to
        this owner), so that attachment's GC cannot remove what this pod needs."""
        def elements(tx: Transaction) -> Transaction:
            for address in addresses:
                pods, pod_key, local, local_key = self.keys(address)
                tx.set_element(pods, pod_key, owner)
                tx.set_element(local, local_key, owner)
            return tx
        self.write(elements)


# ---- MAC spoof check -----------------------------------------------------------------------------

SPOOF_PORTS = "spoofchk-ports"
SPOOF_ALLOWED = "spoofchk-allowed"
SPOOF_CHAIN = "spoofchk-prerouting"
_IFNAME = re.compile(r"[A-Za-z0-9_.@+=-]{1,15}")
_ETHER = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


class SpoofCheck(OwnedElements):
    """Frames entering the bridge from a checked port must carry the pod's own source MAC.

    A bridge-family table (``bridge podnet-bridge``): the port is an element of the ports set,
    its (port . MAC) pair an element of the allowed set; two static rules let allowed frames
    through and drop anything else from a checked port, before the bridge learns or forwards it.
    """

    family: Family = "bridge"
    sets = (SPOOF_PORTS, SPOOF_ALLOWED)

    def declarations(self) -> Transaction:
        tx = Transaction(self.family, self.table).add_table(f"{self.description}; managed by podnet")
        tx.add_set(SPOOF_PORTS, "ifname", comment="bridge ports whose pods may only use their own MAC")
        return tx.add_set(SPOOF_ALLOWED, ("ifname", "ether_addr"), comment="port . the pod's MAC")

    def chain(self, tx: Transaction) -> Transaction:
        # dstnat priority (-300) in prerouting: before anything else sees the frame.
        tx.create_chain(SPOOF_CHAIN, type="filter", hook="prerouting", priority="dstnat", policy="accept")
        tx.add_rule(SPOOF_CHAIN, f"iifname . ether saddr @{SPOOF_ALLOWED} return", "the pod's own MAC")
        return tx.add_rule(SPOOF_CHAIN, f"iifname @{SPOOF_PORTS} drop",
                           "any other source MAC from a checked port")

    @staticmethod
    def keys(port: str, mac: str) -> tuple[str, str]:
        """(ports key, allowed key) as nft writes them."""
        mac = mac.lower()
        if not _IFNAME.fullmatch(port) or not _ETHER.fullmatch(mac):
            raise InvalidArgument(f"spoof check for {port!r} / {mac!r}: not an interface name and MAC")
        return f'"{port}"', f'"{port}" . {mac}'

    def add(self, owner: str, port: str, mac: str) -> None:
        port_key, allowed_key = self.keys(port, mac)
        self.write(lambda tx: tx.set_element(SPOOF_PORTS, port_key, owner)
                   .set_element(SPOOF_ALLOWED, allowed_key, owner))


def default_backend() -> Nft:
    """What plugins use: in-process libnftables when the caller acts in the process's own namespace
    (one context for the whole process), else the ``nft`` binary in the caller's namespace."""
    return shared_backend()


# What plugins write through (tests swap in a FakeNft): plugins never choose a backend themselves.
plugin_backend: Callable[[], Nft] = default_backend

# The bridge plugin's tables (inet for ipMasq, bridge for macspoofchk) have this one name.
BRIDGE_TABLE = "podnet-bridge"


def bridge_masquerade() -> Masquerade:
    return Masquerade(plugin_backend(), BRIDGE_TABLE, description="podnet-bridge ipMasq")


def bridge_spoof_check() -> SpoofCheck:
    return SpoofCheck(plugin_backend(), BRIDGE_TABLE, description="podnet-bridge macspoofchk")


def backend_in(netns: str | None) -> Nft:
    """For a one-shot look (podnet doctor): this process's context for its own namespace, the
    ``nft`` binary run in another one, so nothing (no context, no thread) stays behind."""
    return shared_backend() if netns is None else NftExec(netns=netns)


__all__ = [
    "BRIDGE_TABLE",
    "MASQ_CHAIN",
    "MASQ_SETS",
    "SPOOF_ALLOWED",
    "SPOOF_CHAIN",
    "SPOOF_PORTS",
    "Masquerade",
    "Nft",
    "NftError",
    "NftUnavailable",
    "OwnedElements",
    "SpoofCheck",
    "backend_in",
    "bridge_masquerade",
    "bridge_spoof_check",
    "default_backend",
    "plugin_backend",
]
