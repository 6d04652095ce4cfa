"""The netlink wire format, as much of it as podnet reads: headers, attributes, errors.

Pure functions over bytes, no sockets, so they are unit-tested on captured messages.
Layouts are the kernel's uapi structs (``linux/netlink.h``, ``linux/rtnetlink.h``) in
native byte order, 4-byte aligned.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterator
from typing import NamedTuple

# struct nlmsghdr { u32 len; u16 type; u16 flags; u32 seq; u32 pid; }
NLMSG_HDR = struct.Struct("=IHHII")
NLMSG_HDRLEN = NLMSG_HDR.size
# struct nlattr { u16 len; u16 type; }
NLA_HDR = struct.Struct("=HH")
_I32 = struct.Struct("=i")

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4

NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP_FILTERED = 0x20
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
# On NLMSG_ERROR / NLMSG_DONE: extended-ack attributes follow the payload.
NLM_F_CAPPED = 0x100
NLM_F_ACK_TLVS = 0x200

NLMSGERR_ATTR_MSG = 1

NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000
NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xFFFF

# Socket options (SOL_NETLINK) podnet sets on its own sockets.
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12


class WireError(ValueError):
    """The bytes are not well-formed netlink (truncated or bad lengths)."""


class Header(NamedTuple):
    """One message's header plus where its payload lies in the buffer."""

    type: int
    flags: int
    seq: int
    pid: int
    start: int  # payload offset (after the header)
    end: int  # end of the message (unaligned)


def align(n: int) -> int:
    return (n + 3) & ~3


def messages(buf: bytes) -> Iterator[Header]:
    """Walk the messages packed in one receive buffer."""
    off, size = 0, len(buf)
    while off + NLMSG_HDRLEN <= size:
        length, mtype, flags, seq, pid = NLMSG_HDR.unpack_from(buf, off)
        if length < NLMSG_HDRLEN or off + length > size:
            raise WireError(f"bad netlink message length {length} at offset {off} of {size}")
        yield Header(mtype, flags, seq, pid, off + NLMSG_HDRLEN, off + length)
        off += align(length)


def attrs(buf: bytes, off: int, end: int) -> dict[int, bytes]:
    """Attributes between ``off`` and ``end`` as {type: payload}; the last of a type wins.

    Flag bits (nested, net byte order) are masked off the type. Parsing every attribute
    into a dict costs less than testing each type inline in Python for the 5-10
    attributes of a typical message.
    """
    out: dict[int, bytes] = {}
    unpack = NLA_HDR.unpack_from
    while off + 4 <= end:
        alen, atype = unpack(buf, off)
        if alen < 4:
            raise WireError(f"bad attribute length {alen} at offset {off}")
        out[atype & NLA_TYPE_MASK] = buf[off + 4 : off + alen]
        off += (alen + 3) & ~3
    return out


def attr_list(buf: bytes, off: int, end: int) -> list[tuple[int, bytes]]:
    """Attributes in order, repeats kept (for lists such as multipath next hops)."""
    out: list[tuple[int, bytes]] = []
    while off + 4 <= end:
        alen, atype = NLA_HDR.unpack_from(buf, off)
        if alen < 4:
            raise WireError(f"bad attribute length {alen} at offset {off}")
        out.append((atype & NLA_TYPE_MASK, buf[off + 4 : off + alen]))
        off += (alen + 3) & ~3
    return out


def u32(data: bytes) -> int:
    return int.from_bytes(data[:4], sys.byteorder)


def cstr(data: bytes) -> str:
    """A NUL-terminated attribute string (interface names, labels, kinds)."""
    return data.split(b"\0", 1)[0].decode("utf-8", "replace")


def error_of(buf: bytes, hdr: Header) -> tuple[int, str]:
    """(errno, extended-ack message) of an NLMSG_ERROR or NLMSG_DONE message.

    Both carry a negative errno as their first 4 payload bytes (0 = success). An
    NLMSG_ERROR then echoes the request header (and the request body unless the socket
    set NETLINK_CAP_ACK, in which case the kernel flags it NLM_F_CAPPED); extended-ack
    attributes follow when NLM_F_ACK_TLVS is set.
    """
    if hdr.end - hdr.start < 4:
        return 0, ""
    err = -_I32.unpack_from(buf, hdr.start)[0]
    if not hdr.flags & NLM_F_ACK_TLVS:
        return err, ""
    off = hdr.start + 4
    if hdr.type == NLMSG_ERROR:
        echoed_len = NLMSG_HDR.unpack_from(buf, off)[0] if off + 4 <= hdr.end else 0
        off += NLMSG_HDRLEN if hdr.flags & NLM_F_CAPPED else align(echoed_len)
    msg = attrs(buf, off, hdr.end).get(NLMSGERR_ATTR_MSG)
    return err, cstr(msg) if msg else ""


def message(mtype: int, flags: int, seq: int, body: bytes, pid: int = 0) -> bytes:
    """One complete netlink message: header + body (body already aligned)."""
    return NLMSG_HDR.pack(NLMSG_HDRLEN + len(body), mtype, flags, seq, pid) + body


def attr(atype: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    raw = NLA_HDR.pack(4 + len(payload), atype) + payload
    return raw + b"\0" * (align(len(raw)) - len(raw))

