"""Element-only transactions sent as one nf_tables netlink batch (linux/netfilter/nf_tables.h),
without libnftables.

libnftables reads the table's sets and chains (and the elements of every interval set) into its
cache before any element command, which on a table with thousands of sets costs tens of
milliseconds per command; the kernel needs none of that to add or delete an element. This encodes
what podnet's element commands say (addresses, protocol names, ports, verdicts) for sets whose key
types it knows, and declines anything else (an interval set, a type it does not know) so the caller
falls back to the script. The batch is atomic like any nf_tables transaction: one refused element
and nothing changes.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address, IPv6Address
from typing import NamedTuple

from podnet.kernel.nft.errors import NftError, NftExists, NftNotFound, NftPermissionDenied
from podnet.kernel.nft.netlink import _NFPROTO, NETLINK_NETFILTER
from podnet.kernel.nft.transaction import Op
from podnet.kernel.wire import (
    NETLINK_CAP_ACK,
    NETLINK_EXT_ACK,
    NLA_F_NESTED,
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    SOL_NETLINK,
    attr,
    error_of,
    message,
    messages,
)

# Kernel values under their uapi names (tests/kernel/test_constants.py holds them to the headers).
_NFNL_SUBSYS_NFTABLES = 10
_NFNL_MSG_BATCH_BEGIN, _NFNL_MSG_BATCH_END = 0x10, 0x11
_NFT_MSG_NEWSETELEM = (_NFNL_SUBSYS_NFTABLES << 8) | 12
_NFT_MSG_DELSETELEM = (_NFNL_SUBSYS_NFTABLES << 8) | 14
_NLM_F_CREATE = 0x400
_NFTA_SET_ELEM_LIST_TABLE, _NFTA_SET_ELEM_LIST_SET, _NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
_NFTA_LIST_ELEM = 1
_NFTA_SET_ELEM_KEY, _NFTA_SET_ELEM_DATA = 1, 2
_NFTA_DATA_VALUE, _NFTA_DATA_VERDICT = 1, 2
_NFTA_VERDICT_CODE, _NFTA_VERDICT_CHAIN = 1, 2
_NF_DROP, _NF_ACCEPT = 0, 1
_NFT_CONTINUE, _NFT_JUMP, _NFT_GOTO, _NFT_RETURN = -1, -3, -4, -5
_VERDICTS = {"drop": _NF_DROP, "accept": _NF_ACCEPT, "continue": _NFT_CONTINUE, "return": _NFT_RETURN}
_CHAIN_VERDICTS = {"jump": _NFT_JUMP, "goto": _NFT_GOTO}
_PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58, "sctp": 132}
_MAX_BATCH = 1 << 20  # bigger changes go through the script (one send must carry the batch)


class SetType(NamedTuple):
    """What encoding an element needs: the key's types (several: a concatenation), the value's
    type (None: a set), and whether the set takes intervals (never encoded here)."""

    key: tuple[str, ...]
    value: str | None = None
    interval: bool = False


def _field(kind: str, text: str) -> bytes | None:
    try:
        if kind == "ipv4_addr":
            return IPv4Address(text).packed
        if kind == "ipv6_addr":
            return IPv6Address(text).packed
        if kind == "inet_proto":
            number = _PROTOCOLS[text] if text in _PROTOCOLS else int(text)
            return bytes((number,)) if 0 <= number <= 255 else None
        if kind == "inet_service" and text.isdigit() and int(text) <= 65535:
            return struct.pack("!H", int(text))
    except (ValueError, KeyError):
        return None
    return None


def encode_key(types: Sequence[str], key: str) -> bytes | None:
    """The key as the kernel stores it; each field of a concatenation takes whole 32-bit words."""
    parts = [p.strip() for p in key.split(" . ")]
    if len(parts) != len(types):
        return None
    out = b""
    for kind, part in zip(types, parts, strict=True):
        raw = _field(kind, part)
        if raw is None:
            return None
        out += raw + b"\0" * ((-len(raw)) % 4 if len(types) > 1 else 0)
    return out


def encode_verdict(text: str) -> bytes | None:
    words = text.split()
    if len(words) == 1 and words[0] in _VERDICTS:
        body = attr(_NFTA_VERDICT_CODE, struct.pack("!i", _VERDICTS[words[0]]))
    elif len(words) == 2 and words[0] in _CHAIN_VERDICTS:
        body = (attr(_NFTA_VERDICT_CODE, struct.pack("!i", _CHAIN_VERDICTS[words[0]]))
                + attr(_NFTA_VERDICT_CHAIN, words[1].encode() + b"\0"))
    else:
        return None
    return attr(_NFTA_DATA_VERDICT | NLA_F_NESTED, body)


def _element(kind: SetType, key: str, value: str | None) -> bytes | None:
    raw = encode_key(kind.key, key)
    if raw is None or (value is None) != (kind.value is None):
        return None
    body = attr(_NFTA_SET_ELEM_KEY | NLA_F_NESTED, attr(_NFTA_DATA_VALUE, raw))
    if value is not None and kind.value is not None:
        data = encode_verdict(value) if kind.value == "verdict" else _data_value(kind.value, value)
        if data is None:
            return None
        body += attr(_NFTA_SET_ELEM_DATA | NLA_F_NESTED, data)
    return attr(_NFTA_LIST_ELEM | NLA_F_NESTED, body)


def _data_value(value_type: str, text: str) -> bytes | None:
    """A map value that is data (``10.0.0.2 . 8080``): encoded like a key of the value's types."""
    raw = encode_key(tuple(value_type.split(" . ")), text)
    return None if raw is None else attr(_NFTA_DATA_VALUE, raw)


def _items(op: Op) -> list[tuple[str, str | None]] | None:
    if op.verb == "add-elements":
        return list(op.items)
    if op.verb in ("add-element", "delete-element") and op.comment is None:
        return [(op.value, op.data)]
    return None


def _nfgen(family: int, res_id: int = 0) -> bytes:
    return struct.pack("=BB", family, 0) + struct.pack("!H", res_id)


def _grouped(ops: Sequence[Op]) -> list[tuple[bool, str, list[tuple[str, str | None]]]] | None:
    """(delete, set, items): one message per set for each run of adds or of deletes. The kernel
    looks the set up by name once per message, a walk over the table's sets, so a message per
    element would cost that walk each time; runs keep every delete before the adds that follow it."""
    out: list[tuple[bool, str, list[tuple[str, str | None]]]] = []
    run: dict[str, list[tuple[str, str | None]]] = {}
    deleting: bool | None = None
    for op in ops:
        items = _items(op)
        if items is None:
            return None
        delete = op.verb == "delete-element"
        if delete is not deleting:
            out.extend((bool(deleting), name, found) for name, found in run.items())
            run, deleting = {}, delete
        run.setdefault(op.name, []).extend(items)
    out.extend((bool(deleting), name, found) for name, found in run.items())
    return out


def encode_batch(family: str, table: str, ops: Sequence[Op], types: Mapping[str, SetType],
                 seq: int) -> tuple[bytes, list[int]] | None:
    """The batch for ``ops`` and the sequence numbers whose acknowledgement to await; None when
    some op is not an element command this module encodes."""
    groups = _grouped(ops)
    if groups is None:
        return None
    proto = _NFPROTO[family]
    head = attr(_NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
    parts = [message(_NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, _nfgen(0, _NFNL_SUBSYS_NFTABLES))]
    acks: list[int] = []
    size = 0
    for delete, name, items in groups:
        kind = types.get(name)
        if kind is None or kind.interval:
            return None
        if delete:  # a delete names the key only, of a map too
            kind = SetType(kind.key)
        encoded = [_element(kind, key, None if delete else value) for key, value in items]
        if any(e is None for e in encoded):
            return None
        listed = b"".join(e for e in encoded if e is not None)
        body = (_nfgen(proto) + head + attr(_NFTA_SET_ELEM_LIST_SET, name.encode() + b"\0")
                + attr(_NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, listed))
        seq += 1
        flags = NLM_F_REQUEST | NLM_F_ACK | (0 if delete else _NLM_F_CREATE)
        parts.append(message(_NFT_MSG_DELSETELEM if delete else _NFT_MSG_NEWSETELEM, flags, seq, body))
        acks.append(seq)
        size += len(parts[-1])
        if size > _MAX_BATCH:
            return None
    parts.append(message(_NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + 1, _nfgen(0, _NFNL_SUBSYS_NFTABLES)))
    return b"".join(parts), acks


class ElementSocket:
    """A netlink socket of the namespace it was opened in, sending element batches."""

    def __init__(self, timeout: float) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        self.timeout = timeout
        self.sock.settimeout(timeout)
        self.sock.bind((0, 0))
        self.seq = 1

    def send(self, family: str, table: str, ops: Sequence[Op], types: Mapping[str, SetType],
             what: str) -> bool:
        """Apply ``ops`` in one batch; False (nothing sent) when they cannot be encoded here."""
        encoded = encode_batch(family, table, ops, types, self.seq)
        if encoded is None:
            return False
        batch, acks = encoded
        self.seq += len(acks) + 2
        self.sock.send(batch)
        waiting = set(acks)
        while waiting:
            buf = self.sock.recv(1 << 16)
            for hdr in messages(buf):
                if hdr.type != NLMSG_ERROR or hdr.seq not in waiting:
                    continue
                err, reason = error_of(buf, hdr)
                if err:
                    self._drain(waiting)
                    raise _error(what, err, reason)
                waiting.discard(hdr.seq)
        return True

    def _drain(self, waiting: set[int]) -> None:
        """After a refused message the kernel aborts the batch and acknowledges nothing more; read
        what is queued so the next batch's answers start clean."""
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            pass
        finally:
            self.sock.settimeout(self.timeout)
        waiting.clear()

    def close(self) -> None:
        self.sock.close()


def _error(what: str, err: int, reason: str) -> NftError:
    text = f"{os.strerror(err)}{f': {reason}' if reason else ''}"
    known = {errno.ENOENT: NftNotFound, errno.EEXIST: NftExists, errno.EPERM: NftPermissionDenied}
    klass = known.get(err, NftError)
    return klass(f"{what}: {os.strerror(err).lower()}", text)
