"""Who an attachment is: the names of what it owns, derived from (network, container ID, ifname).

DEL and GC must find what ADD made without the pod's namespace, without a cached result and
without the rest of the config (any of them may be gone or changed), so every name is a pure
function of the attachment's identity:

* the host veth: ``pn`` + 4 hex digits of the network + 9 of the attachment (15 characters, the
  kernel's limit). The network is in the name, not only in the alias, because the kernel ignores
  IFLA_IFALIAS in the request that creates a link: an ADD killed between creating the pair and
  setting the alias leaves a veth without alias, and GC still has to recognise it;
* the veth's alias ``podnet:<network>/<container ID>/<ifname>``, for operators. When that does
  not fit IFLA_IFALIAS, the container ID is cut and marked with a digest of the whole ID. The alias
  tells GC the veth's network and ifname; which attachment it is, GC checks by recomputing the
  veth's name, never by reading a container ID out of an alias that may be cut;
* the comment on the attachment's nftables elements (:func:`owner`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from podnet.cni import skel

HOST_PREFIX = "pn"
ALIAS_PREFIX = "podnet:"
# The longest IFLA_IFALIAS the kernel takes, in bytes without the NUL the codec appends
# (IFALIASZ is 256 with the NUL; measured by tests/plugins/test_long_ids.py).
ALIAS_MAX = 254
_OWNER_SAFE = re.compile(r"[A-Za-z0-9_.@+=-]+")
_NETWORK_PLAIN_MAX = 64  # bytes of a network name kept readable in owners and aliases


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def network_token(network: str) -> str:
    """The network's part of an owner string and alias (hashed when long; '#' cannot start a
    network name, so the two forms never collide)."""
    return network if len(network.encode()) <= _NETWORK_PLAIN_MAX else "#" + _digest(network)[:16]


def owner(network: str, container_id: str, ifname: str) -> str:
    """The comment on an attachment's nftables elements: readable when it fits nft's limits."""
    plain = f"{network_token(network)}/{container_id}/{ifname}"
    if len(plain.encode()) < 120 and _OWNER_SAFE.fullmatch(ifname):
        return plain
    return f"{network_token(network)}/#{_digest(network, container_id, ifname)[:32]}"


def network_veth_prefix(network: str) -> str:
    """The first 6 characters of every host veth name of ``network``."""
    return HOST_PREFIX + hashlib.sha256(network.encode()).hexdigest()[:4]


def host_veth_name(network: str, container_id: str, ifname: str) -> str:
    return network_veth_prefix(network) + _digest(network, container_id, ifname)[:9]


def is_host_veth_name(network: str, name: str) -> bool:
    prefix = network_veth_prefix(network)
    return name.startswith(prefix) and len(name) == len(prefix) + 9


def network_alias_prefixes(network: str) -> tuple[str, ...]:
    """How the aliases of ``network``'s veths start (the second form: aliases written before long
    network names were hashed)."""
    return tuple(dict.fromkeys((f"{ALIAS_PREFIX}{network_token(network)}/", f"{ALIAS_PREFIX}{network}/")))


def attachment_alias(network: str, container_id: str, ifname: str) -> str:
    head, tail = f"{ALIAS_PREFIX}{network_token(network)}/", f"/{ifname}"
    plain = f"{head}{container_id}{tail}"
    if len(plain.encode()) <= ALIAS_MAX:
        return plain
    # '~' never occurs in a container ID: a cut ID cannot pass for a whole one.
    mark = "~" + _digest(container_id)[:16]
    room = ALIAS_MAX - len(head.encode()) - len(tail.encode()) - len(mark)
    return f"{head}{container_id.encode()[:room].decode(errors='ignore')}{mark}{tail}"


def alias_ifname(alias: str) -> str:
    """The ifname an alias names (its last part; neither an ifname nor a container ID has a '/')."""
    return alias.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Attachment:
    network: str
    container_id: str
    ifname: str

    @classmethod
    def of(cls, args: skel.CmdArgs) -> Attachment:
        """Only the network's name is read from the config: DEL and GC must work with a config
        that no longer validates (the skel has checked that the name is there)."""
        return cls(str(args.conf.get("name", "")), args.container_id, args.ifname)

    @property
    def host_name(self) -> str:
        return host_veth_name(self.network, self.container_id, self.ifname)

    @property
    def alias(self) -> str:
        return attachment_alias(self.network, self.container_id, self.ifname)

    @property
    def owner(self) -> str:
        return owner(self.network, self.container_id, self.ifname)
