"""podnet-loopback: bring the pod's ``lo`` up (ADD), down (DEL), and verify it (CHECK)."""

from __future__ import annotations

import ipaddress

from podnet.cni import skel
from podnet.cni.errors import CNIError
from podnet.cni.result import Interface, IPConfig, Result
from podnet.kernel.errors import NetnsNotFound
from podnet.kernel.netlink import Netlink

LOOPBACK_IPS = ("127.0.0.1/8", "::1/128")


def _lo_addresses(nl: Netlink) -> list[IPConfig]:
    have = {a.interface for a in nl.addresses("lo")}
    return [IPConfig(address=ipaddress.ip_interface(c), interface=0)
            for c in LOOPBACK_IPS if ipaddress.ip_interface(c) in have]


def cmd_add(args: skel.CmdArgs) -> Result:
    with Netlink(args.netns) as nl:
        nl.set_up("lo")
        ips = _lo_addresses(nl)
    # In a chain, loopback passes the previous result on unchanged.
    prev = args.prev_result
    if prev is not None:
        return prev
    return Result(cni_version=args.cni_version, ips=ips,
                  interfaces=[Interface(name="lo", mac="00:00:00:00:00:00", sandbox=args.netns)])


def cmd_del(args: skel.CmdArgs) -> None:
    if not args.netns:
        return
    try:
        with Netlink(args.netns) as nl:
            nl.set_down("lo")
    except NetnsNotFound:
        return  # the pod is gone already: nothing to undo


def cmd_check(args: skel.CmdArgs) -> None:
    with Netlink(args.netns) as nl:
        if not nl.link("lo").up:
            raise CNIError(f"CHECK: lo is down in {args.netns}")


def _nothing(args: skel.CmdArgs) -> None:
    """STATUS and GC: loopback holds no state and is always ready."""


PLUGIN = skel.Plugin(add=cmd_add, delete=cmd_del, check=cmd_check, status=_nothing, gc=_nothing,
                     about="podnet-loopback: sets up the loopback interface in a pod")


def main() -> None:
    skel.main(PLUGIN)
