"""Whether a table exists, asked over nf_tables netlink: one request (~0.05 ms) instead of running
nft or listing the table (linux/netfilter/nfnetlink.h, nf_tables.h)."""

from __future__ import annotations

import errno
import os
import socket
import struct

from podnet.kernel.netns import NetnsRef, socket_in_netns
from podnet.kernel.wire import NLM_F_REQUEST, NLMSG_ERROR, attr, error_of, message, messages

NETLINK_NETFILTER = 12
_NFT_MSG_GETTABLE = (10 << 8) | 1  # NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETTABLE
_NFTA_TABLE_NAME = 1
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
