"""``podnet-host-local``: host-local IPAM (same configuration keys and data directory as the reference).

ADD allocates one address per range set and prints an IPAM result (no interfaces); DEL releases the
attachment's addresses (nothing reserved is success; it needs only ``dataDir`` and the network name,
so it works even when the ranges no longer parse, and a location ADD refuses, such as a relative
``dataDir``, held nothing); CHECK verifies the reservations still exist; GC releases every
reservation whose attachment is not in ``cni.dev/valid-attachments``; STATUS fails with code 50
when a range set has no free address.
"""

from __future__ import annotations

from podnet.cni import skel
from podnet.cni.errors import InvalidNetworkConfig, PluginNotAvailable, UnknownContainer
from podnet.cni.result import DNS, Result
from podnet.ipam import allocator
from podnet.ipam.config import HostLocalConfig, load_host_local, store_location
from podnet.ipam.disk_store import DiskStore
from podnet.ipam.dns import parse_resolv_conf


def load(args: skel.CmdArgs) -> HostLocalConfig:
    return load_host_local(args.conf, args.args, args.cni_version)


def existing_store(args: skel.CmdArgs) -> DiskStore | None:
    """The network's store when its directory exists; never creates it. A location that ADD refuses
    (see ``store_location``) never held a reservation: there is no store to find, and DEL and GC
    must not look for one elsewhere (a relative path would mean whatever the caller's cwd holds)."""
    try:
        data_dir, name = store_location(args.conf)
    except InvalidNetworkConfig:
        return None
    store = DiskStore(data_dir, name, create=False)
    return store if store.exists() else None


def cmd_add(args: skel.CmdArgs) -> Result:
    conf = load(args)
    # Everything that can fail on configuration alone fails before anything is reserved.
    dns = parse_resolv_conf(conf.resolv_conf) if conf.resolv_conf else DNS()
    store = DiskStore(conf.data_dir, conf.name)
    ips = allocator.allocate(store, conf.range_sets, args.container_id, args.ifname, conf.requested)
    return Result(cni_version=args.cni_version, ips=ips, routes=list(conf.routes), dns=dns)


def cmd_del(args: skel.CmdArgs) -> None:
    store = existing_store(args)
    if store is not None:
        allocator.release(store, args.container_id, args.ifname)


def cmd_check(args: skel.CmdArgs) -> None:
    conf = load(args)
    store = existing_store(args)
    if store is None:
        raise UnknownContainer(f"no address is reserved for container {args.container_id} interface "
                               f"{args.ifname}: network {conf.name} has no IPAM directory")
    prev = args.prev_result
    expected = [ip.address.ip for ip in prev.ips] if prev is not None else []
    allocator.check(store, conf.range_sets, args.container_id, args.ifname, expected)


def cmd_gc(args: skel.CmdArgs) -> None:
    valid = args.attachments_to_keep
    store = existing_store(args)
    if store is not None:
        allocator.gc(store, valid)


def cmd_status(args: skel.CmdArgs) -> None:
    conf = load(args)
    store = existing_store(args)
    if store is None:
        return
    full = [(idx, used, cap) for idx, (used, cap) in enumerate(allocator.usage(store, conf.range_sets))
            if used >= cap]
    if full:
        sets = "; ".join(f"range set {idx} ({conf.range_sets[idx]}): {used} of {cap} in use"
                         for idx, used, cap in full)
        raise PluginNotAvailable(f"network {conf.name} has no free address: {sets}")


PLUGIN = skel.Plugin(add=cmd_add, delete=cmd_del, check=cmd_check, status=cmd_status, gc=cmd_gc,
                     about="podnet host-local IPAM")


def main() -> None:
    skel.main(PLUGIN)
