"""``podnet-static``: static IPAM (the reference static plugin's keys).

ADD returns the configured addresses, routes and DNS; nothing is stored, so DEL and GC have nothing
to do. CHECK validates the configuration and, given a previous result, that every configured
address is in it (with its gateway). STATUS validates the configuration.
"""

from __future__ import annotations

from podnet.cni import skel
from podnet.cni.errors import InvalidNetworkConfig
from podnet.cni.result import IPConfig, Result
from podnet.ipam.config import StaticConfig, load_static


def load(args: skel.CmdArgs) -> StaticConfig:
    return load_static(args.conf, args.args, args.cni_version)


def cmd_add(args: skel.CmdArgs) -> Result:
    conf = load(args)
    ips = [IPConfig(address=a.address, gateway=a.gateway) for a in conf.addresses]
    return Result(cni_version=args.cni_version, ips=ips, routes=list(conf.routes), dns=conf.dns)


def cmd_del(args: skel.CmdArgs) -> None:
    """Nothing was allocated, so there is nothing to release (and a broken config must not block DEL)."""


def cmd_check(args: skel.CmdArgs) -> None:
    conf = load(args)
    prev = args.prev_result
    if prev is None:
        return
    # Only the address itself is IPAM's to vouch for: the main plugin may legitimately report
    # another prefix or gateway (podnet-routed gives the pod a /32 behind 169.254.1.1).
    reported = {ip.address.ip for ip in prev.ips}
    for a in conf.addresses:
        if a.address.ip not in reported:
            raise InvalidNetworkConfig(f"static address {a.address} is not in the previous result")


def cmd_status(args: skel.CmdArgs) -> None:
    load(args)


def cmd_gc(args: skel.CmdArgs) -> None:
    """Nothing is stored, so nothing can leak."""


PLUGIN = skel.Plugin(add=cmd_add, delete=cmd_del, check=cmd_check, status=cmd_status, gc=cmd_gc,
                     about="podnet static IPAM")


def main() -> None:
    skel.main(PLUGIN)
