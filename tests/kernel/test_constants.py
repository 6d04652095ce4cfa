"""Every netlink constant and struct layout podnet defines, against the kernel's own headers.

podnet writes its netlink messages by hand, so a wrong number is a wrong message. The values
are not copied from anywhere at run time; this test compiles a C program that includes the
uapi headers (``/usr/include/linux``, Debian's ``linux-libc-dev``) and prints each one, and
compares. Constants are collected from the modules automatically: a new one is checked
without being listed here (or must be listed in ``NOT_KERNEL`` with the reason).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from podnet.kernel import conntrack, conntrack_wire, dump, model, netlink, requests, unregister, wire
from podnet.kernel.nft import netlink as nftables
from podnet.kernel.nft import setelem

MODULES: tuple[ModuleType, ...] = (wire, model, requests, dump, unregister, netlink, nftables,
                                   conntrack_wire, conntrack, setelem)
HEADERS = [
    "sys/socket.h", "linux/netlink.h", "linux/rtnetlink.h", "linux/if.h", "linux/if_link.h",
    "linux/if_addr.h", "linux/netdevice.h", "linux/neighbour.h", "linux/fib_rules.h", "linux/if_bridge.h",
    "linux/veth.h",
    "linux/netfilter.h", "linux/netfilter/nfnetlink.h", "linux/netfilter/nf_tables.h",
    "linux/netfilter/nfnetlink_conntrack.h",
]
# Module constants that are podnet's own choices or combinations, not kernel values.
NOT_KERNEL = {
    "SET", "CREATE", "REPLACE",  # requests: flag combinations per kind of write
    "_RCVBUF", "_RECV_SIZE",  # dump: socket buffer sizes chosen by podnet
    "_POLL_MS",  # unregister: a poll interval
    "_PINNED_MAX",  # netlink: how many pinned links a process remembers
    "HELPERS",  # unregister: how many long-lived threads wait for the kernel's reclamation
    "COMMENT_MAX",  # nftables: nft's comment length limit (userspace, libnftnl)
    "_DUPLICATE_RETRIES",  # conntrack: dumps repeated when one names an entry twice
    "_MAX_BATCH",  # setelem: the largest element batch sent in one write
    "RTPROT_PODNET",  # model: the route protocol podnet's agent marks its routes with
    # conntrack_wire: CTA_FILTER flag bits, defined by the kernel in nf_conntrack_netlink.c, not uapi
    "FILTER_IP_SRC", "FILTER_IP_DST", "FILTER_PROTO_NUM", "FILTER_PROTO_SRC_PORT", "FILTER_PROTO_DST_PORT",
}
# Python name -> C expression, where the C name differs or the value is derived.
C_EXPRESSION = {
    "NLA_TYPE_MASK": "(NLA_TYPE_MASK) & 0xFFFF",  # ~(...) is negative as a C int
    "_NFT_MSG_GETTABLE": "(NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE",
    "_NFT_MSG_GETRULE": "(NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE",
    "_NFT_MSG_NEWRULE": "(NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE",
    "_NFT_MSG_NEWSETELEM": "(NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM",
    "_NFT_MSG_DELSETELEM": "(NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELSETELEM",
}
# struct.Struct layouts -> the C struct they stand for.
STRUCTS = {
    (wire, "NLMSG_HDR"): "struct nlmsghdr",
    (wire, "NLA_HDR"): "struct nlattr",
    (model, "IFINFOMSG"): "struct ifinfomsg",
    (model, "IFADDRMSG"): "struct ifaddrmsg",
    (model, "RTMSG"): "struct rtmsg",
    (model, "NDMSG"): "struct ndmsg",
    (model, "FIB_RULE_HDR"): "struct fib_rule_hdr",
    (model, "RTNEXTHOP"): "struct rtnexthop",
    (requests, "BRIDGE_VLAN_INFO"): "struct bridge_vlan_info",
    (nftables, "_NFGENMSG"): "struct nfgenmsg",
    (conntrack_wire, "NFGENMSG"): "struct nfgenmsg",
}
NFPROTO = {"inet": "NFPROTO_INET", "ip": "NFPROTO_IPV4", "arp": "NFPROTO_ARP", "netdev": "NFPROTO_NETDEV",
           "bridge": "NFPROTO_BRIDGE", "ip6": "NFPROTO_IPV6"}


def defined_constants() -> dict[str, tuple[int, str]]:
    """``module.NAME`` -> (value, C expression) for every upper-case int constant of the modules."""
    out: dict[str, tuple[int, str]] = {}
    for module in MODULES:
        for name, value in vars(module).items():
            if not name.lstrip("_")[:1].isupper() or name != name.upper() or name in NOT_KERNEL:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                continue
            key = f"{module.__name__.rsplit('.', 1)[1]}.{name}"
            out[key] = (value, C_EXPRESSION.get(name, name.lstrip("_")))
    for key, c_name in NFPROTO.items():
        out[f"nftables._NFPROTO[{key}]"] = (nftables._NFPROTO[key], c_name)
    for (module, name), c_struct in STRUCTS.items():
        layout: struct.Struct = getattr(module, name)
        out[f"sizeof {module.__name__.rsplit('.', 1)[1]}.{name}"] = (layout.size, f"sizeof({c_struct})")
    return out


def kernel_values(expressions: dict[str, str], tmp: Path) -> dict[str, int]:
    lines = [f"#include <{h}>" for h in HEADERS] + ["#include <stdio.h>", "int main(void) {"]
    lines += [f'    printf("%s %lld\\n", "{key}", (long long)({expr}));' for key, expr in expressions.items()]
    lines += ["    return 0;", "}"]
    source, binary = tmp / "constants.c", tmp / "constants"
    source.write_text("\n".join(lines) + "\n")
    build = subprocess.run(["cc", "-o", str(binary), str(source)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    out = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout
    return {key: int(value) for key, value in (line.rsplit(" ", 1) for line in out.splitlines())}


@pytest.mark.skipif(shutil.which("cc") is None or not Path("/usr/include/linux/rtnetlink.h").exists(),
                    reason="needs a C compiler and the kernel's uapi headers (linux-libc-dev)")
def test_every_constant_matches_the_kernel_headers(tmp_path: Path) -> None:
    ours = defined_constants()
    assert len(ours) > 100, "the constants were not collected"
    theirs = kernel_values({key: expr for key, (_, expr) in ours.items()}, tmp_path)
    wrong = {key: (value, theirs[key]) for key, (value, _) in ours.items() if theirs[key] != value}
    assert not wrong, f"(podnet, kernel) differ: {wrong}"
