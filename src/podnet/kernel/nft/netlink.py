"""Questions asked over nf_tables netlink instead of running nft or listing the table
(linux/netfilter/nfnetlink.h, nf_tables.h): whether a table exists (one request, ~0.05 ms), and the
handles of its rules (one dump, without libnftables building and printing every rule)."""

from __future__ import annotations

import errno
import os
import socket
import struct

from podnet.kernel.netns import NetnsRef, socket_in_netns
from podnet.kernel.wire import (
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    attr,
    attrs,
    cstr,
    error_of,
    message,
    messages,
)

NETLINK_NETFILTER = 12
_NFT_MSG_GETTABLE = (10 << 8) | 1  # NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETTABLE
_NFTA_TABLE_NAME = 1
_NFT_MSG_GETRULE = (10 << 8) | 7  # NFT_MSG_GETRULE
_NFT_MSG_NEWRULE = (10 << 8) | 6  # what a rule dump answers with
_NFTA_RULE_TABLE, _NFTA_RULE_CHAIN, _NFTA_RULE_HANDLE = 1, 2, 3
_NFGENMSG = struct.Struct("=BBH")  # family, version (NFNETLINK_V0), resource id
_NFPROTO = {"inet": 1, "ip": 2, "arp": 3, "netdev": 5, "bridge": 7, "ip6": 10}


def table_exists(family: str, table: str, netns: NetnsRef | None = None, timeout: float = 5.0) -> bool:
    """Whether the kernel has the table (NFT_MSG_GETTABLE: the table back, or ENOENT).
    OSError for any other answer (nf_tables missing, no permission)."""
    with socket_in_netns(netns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.settimeout(timeout)
        body = _NFGENMSG.pack(_NFPROTO[family], 0, 0) + attr(_NFTA_TABLE_NAME, table.encode() + b"\0")
        sock.send(message(_NFT_MSG_GETTABLE, NLM_F_REQUEST, 1, body))
        buf = sock.recv(1 << 16)
    for hdr in messages(buf):
        if hdr.type != NLMSG_ERROR:
            return True  # NFT_MSG_NEWTABLE: the table
        err, reason = error_of(buf, hdr)
        if err == errno.ENOENT:
            return False
        raise OSError(err, reason or os.strerror(err))
    raise OSError(errno.EPROTO, "no answer to NFT_MSG_GETTABLE")


def rule_handles(family: str, table: str, chain: str | None = None, netns: NetnsRef | None = None,
                 timeout: float = 30.0) -> dict[str, list[int]]:
    """The handles of the table's rules (or one chain's), per chain in rule order: a rule dump
    filtered by the kernel, of which only chain and handle are read (nothing for a table or chain
    that does not exist). OSError when the kernel refuses."""
    body = _NFGENMSG.pack(_NFPROTO[family], 0, 0) + attr(_NFTA_RULE_TABLE, table.encode() + b"\0")
    if chain is not None:
        body += attr(_NFTA_RULE_CHAIN, chain.encode() + b"\0")
    out: dict[str, list[int]] = {}
    with socket_in_netns(netns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.settimeout(timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.send(message(_NFT_MSG_GETRULE, NLM_F_REQUEST | NLM_F_DUMP, 1, body))
        while True:
            buf = sock.recv(1 << 20)
            for hdr in messages(buf):
                if hdr.type == NLMSG_DONE:
                    return out
                if hdr.type == NLMSG_ERROR:
                    err, reason = error_of(buf, hdr)
                    raise OSError(err, reason or os.strerror(err))
                if hdr.type == _NFT_MSG_NEWRULE:
                    found = attrs(buf, hdr.start + _NFGENMSG.size, hdr.end)
                    out.setdefault(cstr(found[_NFTA_RULE_CHAIN]), []).append(
                        int.from_bytes(found[_NFTA_RULE_HANDLE], "big"))
