"""IPAM configuration for ``podnet-host-local`` and ``podnet-static``.

The keys are those of the reference host-local and static plugins, so an existing ``ipam`` section
works unchanged:

host-local
  ``ranges``            list of range sets; a range set is a list of ``{subnet, rangeStart, rangeEnd,
                        gateway}``; one address is allocated from every range set (dual stack = one v4
                        set and one v6 set)
  ``subnet`` ...        the legacy single range (``subnet``/``rangeStart``/``rangeEnd``/``gateway`` on
                        the ``ipam`` object); it becomes range set 0, before ``ranges``
  ``routes``, ``dataDir`` (default /var/lib/cni/networks), ``resolvConf``
  ``runtimeConfig.ipRanges``  range sets from the runtime (capability ``ipRanges``); as in the
                        reference they are put *before* the configured sets, so range set numbers
                        (and ``last_reserved_ip.N``) match the reference plugin's
  requested addresses   ``CNI_ARGS IP=a,b``, ``args.cni.ips``, ``runtimeConfig.ips`` (plain IPs; a
                        CIDR's prefix is ignored)

static
  ``addresses``         ``[{address: CIDR, gateway}]``; ``routes``; ``dns``
  requested addresses   ``CNI_ARGS IP=cidr,cidr`` and ``GATEWAY=ip,ip``, ``args.cni.ips``,
                        ``runtimeConfig.ips`` (CIDRs)

Beyond the reference: a subnet that cannot number pods (a /0, one overlapping the unspecified,
loopback, multicast, limited broadcast, link-local or IPv4-mapped blocks) is refused, as is a
static address or gateway in those blocks (link-local stays allowed there); ``dataDir`` and
``resolvConf`` must be absolute paths.

Every problem is an ``InvalidNetworkConfig`` (code 7) whose message names the key and the value.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from podnet.cni import version as ver
from podnet.cni.args import validate_network_name
from podnet.cni.errors import CNIError, InvalidNetworkConfig
from podnet.cni.result import DNS, IPAddress, IPInterface, IPNetwork, Result, Route
from podnet.ipam.dns import parse_dns as parse_dns  # re-exported: podnet.plugins.podconf uses it
from podnet.ipam.fields import (
    absolute_path,
    list_field,
    obj_field,
    parse_cidr_address,
    parse_ip,
    parse_requested_ip,
    parse_subnet,
    present,
)
from podnet.ipam.ranges import Range, RangeSet, overlapping_neighbours

DEFAULT_DATA_DIR = "/var/lib/cni/networks"

def ipam_section(conf: dict[str, Any]) -> dict[str, Any]:
    if "ipam" not in conf or conf["ipam"] is None:
        raise InvalidNetworkConfig("network configuration has no 'ipam' object")
    return obj_field(conf["ipam"], "ipam")


def parse_routes(value: object, where: str = "ipam.routes") -> list[Route]:
    """Routes with the result's rules (1.1.0 attributes included), reported as config errors."""
    items = list_field(value, where)
    try:
        return Result.from_json({"cniVersion": ver.CURRENT, "routes": items}).routes
    except CNIError as err:
        raise InvalidNetworkConfig(f"{where}: {err.msg}", err.details) from None


def cni_arg_list(args: Sequence[tuple[str, str]], key: str) -> list[str]:
    """A comma-separated CNI_ARGS value (``IP=a,b``) as items; the last ``key=`` wins."""
    raw = ""
    for k, v in args:
        if k == key:
            raw = v
    return [item.strip() for item in raw.split(",") if item.strip()]


def _runtime_config(conf: dict[str, Any]) -> dict[str, Any]:
    value = conf.get("runtimeConfig")
    return {} if value is None else obj_field(value, "runtimeConfig")


def _args_cni_ips(conf: dict[str, Any]) -> list[Any]:
    args = conf.get("args")
    if args is None:
        return []
    cni = obj_field(args, "args").get("cni")
    if cni is None:
        return []
    return list_field(obj_field(cni, "args.cni").get("ips"), "args.cni.ips")


def _check_family_count(families: Iterable[int], cni_version: str, what: str) -> None:
    """Results before 0.3.0 hold one address per family."""
    counts = {4: 0, 6: 0}
    for fam in families:
        counts[fam] += 1
    if (counts[4] > 1 or counts[6] > 1) and not ver.at_least(cni_version, "0.3.0"):
        raise InvalidNetworkConfig(
            f"CNI version {cni_version} allows one address per family, but {what} gives "
            f"{counts[4]} IPv4 and {counts[6]} IPv6")


# ---- host-local ranges -----------------------------------------------------------------------


def _range_ip(obj: dict[str, Any], key: str, subnet: IPNetwork, where: str) -> IPAddress | None:
    if not present(obj.get(key)):
        return None
    ip = parse_ip(obj[key], f"{where}.{key}")
    if ip.version != subnet.version or ip not in subnet:
        raise InvalidNetworkConfig(f"{where}.{key} {ip} is outside subnet {subnet}")
    return ip


def _block(cidr: str, what: str) -> tuple[IPNetwork, str]:
    return ipaddress.ip_network(cidr), f"{what} ({cidr})"


# Addresses no interface can be numbered from: a packet from or to them never leaves the host, is
# never forwarded, or is not a single host. Refused for host-local subnets and static addresses.
#
# IPv4-mapped IPv6 (RFC 4291 2.5.5.2) is among them: such an address never appears in an IPv6
# packet, the kernel and the pods' sockets treat it as the IPv4 address, so a pod given one has an
# IPv6 address that no IPv6 peer reaches, and its reservation would name an IPv4 address (the
# reference canonicalizes it) inside an IPv6 range. Files an older version wrote are still released.
_NOT_UNICAST = (
    _block("0.0.0.0/8", "the unspecified address and 'this network'"),
    _block("::/128", "the unspecified address"),
    _block("127.0.0.0/8", "loopback"),
    _block("::1/128", "loopback"),
    _block("224.0.0.0/4", "multicast"),
    _block("ff00::/8", "multicast"),
    _block("255.255.255.255/32", "the limited broadcast address"),
    _block("::ffff:0:0/96", "IPv4-mapped IPv6 addresses"),
)
# Link-local is refused for host-local ranges only: the kernel numbers every interface from
# fe80::/10 itself, routers never forward either block (so pods would be unreachable off the node),
# and 169.254.0.0/16 holds podnet-routed's pod gateway 169.254.1.1 and clouds' metadata service. A
# static address may be link-local on purpose (the operator names the one address).
_LINK_LOCAL = (_block("169.254.0.0/16", "link-local"), _block("fe80::/10", "link-local"))


def _overlapping_block(net: IPNetwork, blocks: Iterable[tuple[IPNetwork, str]]) -> str | None:
    return next((what for block, what in blocks if block.version == net.version and net.overlaps(block)),
                None)


def _check_pod_subnet(subnet: IPNetwork, where: str, text: str) -> None:
    """A subnet pods can be numbered from (``text``: the subnet as configured, for the message)."""
    if subnet.prefixlen == 0:
        raise InvalidNetworkConfig(f"{where} {text} cannot number pods: a /0 is every address")
    what = _overlapping_block(subnet, _NOT_UNICAST + _LINK_LOCAL)
    if what is not None:
        raise InvalidNetworkConfig(f"{where} {text} cannot number pods: it overlaps {what}")


def check_static_address(address: IPInterface, where: str, text: str) -> None:
    """An address an interface can hold (any prefix but /0: a /32 or /128 is how routed pods are
    numbered)."""
    if address.network.prefixlen == 0:
        raise InvalidNetworkConfig(f"{where} {text} cannot be an interface address: a /0 prefix is every "
                                   "address")
    what = _overlapping_block(ipaddress.ip_network(address.ip), _NOT_UNICAST)
    if what is not None:
        raise InvalidNetworkConfig(f"{where} {text} cannot be an interface address: it is in {what}")


def parse_range(value: object, where: str) -> Range:
    obj = obj_field(value, where)
    if not present(obj.get("subnet")):
        raise InvalidNetworkConfig(f"{where} has no 'subnet'")
    subnet = parse_subnet(obj["subnet"], f"{where}.subnet")
    if subnet.num_addresses < 4:
        raise InvalidNetworkConfig(f"{where}.subnet {subnet} is too small to allocate from (needs /"
                                   f"{subnet.max_prefixlen - 2} or larger)")
    _check_pod_subnet(subnet, f"{where}.subnet", str(obj["subnet"]))
    gateway = _range_ip(obj, "gateway", subnet, where) or subnet.network_address + 1
    start = _range_ip(obj, "rangeStart", subnet, where) or subnet.network_address + 1
    end = _range_ip(obj, "rangeEnd", subnet, where)
    if end is None:
        # Default end: the last address, or the one before the broadcast address for IPv4.
        end = subnet.broadcast_address - (1 if subnet.version == 4 else 0)
    if start > end:  # type: ignore[operator]
        raise InvalidNetworkConfig(f"{where}: rangeStart {start} is after rangeEnd {end}")
    return Range(subnet=subnet, start=start, end=end, gateway=gateway)


def parse_range_set(value: object, where: str) -> RangeSet:
    items = list_field(value, where)
    if not items:
        raise InvalidNetworkConfig(f"{where} is an empty range set")
    ranges = tuple(parse_range(item, f"{where}[{i}]") for i, item in enumerate(items))
    for r in ranges:
        if r.version != ranges[0].version:
            raise InvalidNetworkConfig(f"{where} mixes address families: {ranges[0].subnet} and {r.subnet}")
    pairs = overlapping_neighbours(ranges)
    if pairs:
        i, j = min(pairs, key=lambda p: (p[1], p[0]))  # the pair a scan in config order meets first
        raise InvalidNetworkConfig(f"{where}: ranges {ranges[i]} and {ranges[j]} overlap")
    return RangeSet(ranges)


def _raw_range_sets(conf: dict[str, Any], ipam: dict[str, Any]) -> list[tuple[str, object]]:
    """Range sets with where they came from, in the reference's order: runtime, legacy, ``ranges``."""
    raw: list[tuple[str, object]] = []
    for i, rs in enumerate(list_field(_runtime_config(conf).get("ipRanges"), "runtimeConfig.ipRanges")):
        raw.append((f"runtimeConfig.ipRanges[{i}]", rs))
    if present(ipam.get("subnet")):
        legacy = {k: ipam[k] for k in ("subnet", "rangeStart", "rangeEnd", "gateway") if k in ipam}
        raw.append(("ipam", [legacy]))
    for i, rs in enumerate(list_field(ipam.get("ranges"), "ipam.ranges")):
        raw.append((f"ipam.ranges[{i}]", rs))
    return raw


def parse_range_sets(conf: dict[str, Any], ipam: dict[str, Any]) -> list[RangeSet]:
    raw = _raw_range_sets(conf, ipam)
    if not raw:
        raise InvalidNetworkConfig(
            "no IP ranges specified: set ipam.ranges (or ipam.subnet, or runtimeConfig.ipRanges)")
    sets = [parse_range_set(value, where) for where, value in raw]
    flat = [(idx, r) for idx, rs in enumerate(sets) for r in rs.ranges]
    # No set overlaps itself any more, so every overlap left is between two sets.
    pairs = overlapping_neighbours([r for _, r in flat])
    if pairs:
        a, b = min(pairs, key=lambda p: (flat[p[1]][0], flat[p[0]][0], p[1], p[0]))
        (j, earlier), (i, later) = flat[a], flat[b]
        raise InvalidNetworkConfig(
            f"range set {i} ({raw[i][0]}: {later}) overlaps range set {j} ({raw[j][0]}: {earlier})")
    return sets


def _requested_ips(conf: dict[str, Any], cni_args: Sequence[tuple[str, str]]) -> list[IPAddress]:
    items = [(f"CNI_ARGS IP[{i}]", v) for i, v in enumerate(cni_arg_list(cni_args, "IP"))]
    items += [(f"args.cni.ips[{i}]", v) for i, v in enumerate(_args_cni_ips(conf))]
    items += [(f"runtimeConfig.ips[{i}]", v)
              for i, v in enumerate(list_field(_runtime_config(conf).get("ips"), "runtimeConfig.ips"))]
    out: list[IPAddress] = []
    for where, value in items:
        ip = parse_requested_ip(value, where)
        if ip not in out:
            out.append(ip)
    return out


@dataclass
class HostLocalConfig:
    name: str
    cni_version: str
    range_sets: list[RangeSet]
    routes: list[Route] = field(default_factory=list)
    data_dir: str = DEFAULT_DATA_DIR
    resolv_conf: str = ""
    requested: list[IPAddress] = field(default_factory=list)


def store_location(conf: dict[str, Any]) -> tuple[str, str]:
    """``(dataDir, network name)``: all DEL and GC need, so they work even when the ranges do not parse.

    A location ADD refuses (relative, a NUL byte, a name that is not one path component) raises
    ``InvalidNetworkConfig``; DEL and GC take that to mean nothing was ever reserved there."""
    ipam = ipam_section(conf)
    data_dir = absolute_path(ipam.get("dataDir"), "ipam.dataDir", DEFAULT_DATA_DIR)
    return data_dir, validate_network_name(conf.get("name"))


def load_host_local(conf: dict[str, Any], cni_args: Sequence[tuple[str, str]],
                    cni_version: str) -> HostLocalConfig:
    ipam = ipam_section(conf)
    data_dir, name = store_location(conf)
    sets = parse_range_sets(conf, ipam)
    _check_family_count((rs.version for rs in sets), cni_version, "ipam.ranges")
    return HostLocalConfig(
        name=name,
        cni_version=cni_version,
        range_sets=sets,
        routes=parse_routes(ipam.get("routes")),
        data_dir=data_dir,
        resolv_conf=absolute_path(ipam.get("resolvConf"), "ipam.resolvConf"),
        requested=_requested_ips(conf, cni_args),
    )


# ---- static ----------------------------------------------------------------------------------


@dataclass
class StaticAddress:
    address: IPInterface
    gateway: IPAddress | None = None


@dataclass
class StaticConfig:
    name: str
    cni_version: str
    addresses: list[StaticAddress]
    routes: list[Route] = field(default_factory=list)
    dns: DNS = field(default_factory=DNS)


def _static_gateway(value: object, address: IPInterface, where: str) -> IPAddress | None:
    """Any address of the same family: routed setups use a /32 with an on-link gateway outside it."""
    if not present(value):
        return None
    gateway = parse_ip(value, where)
    if gateway.version != address.version:
        raise InvalidNetworkConfig(f"{where} {gateway} is not of the address family of {address}")
    what = _overlapping_block(ipaddress.ip_network(gateway), _NOT_UNICAST)
    if what is not None:
        raise InvalidNetworkConfig(f"{where} {value} cannot be a gateway: it is in {what}")
    return gateway


def _static_address(value: object, where: str) -> IPInterface:
    address = parse_cidr_address(value, where)
    check_static_address(address, where, str(value))
    return address


def _static_addresses(conf: dict[str, Any], ipam: dict[str, Any],
                      cni_args: Sequence[tuple[str, str]]) -> list[StaticAddress]:
    out: list[StaticAddress] = []
    for i, item in enumerate(list_field(ipam.get("addresses"), "ipam.addresses")):
        where = f"ipam.addresses[{i}]"
        obj = obj_field(item, where)
        address = _static_address(obj.get("address"), f"{where}.address")
        out.append(StaticAddress(address, _static_gateway(obj.get("gateway"), address, f"{where}.gateway")))
    extra = [(f"CNI_ARGS IP[{i}]", v) for i, v in enumerate(cni_arg_list(cni_args, "IP"))]
    extra += [(f"args.cni.ips[{i}]", v) for i, v in enumerate(_args_cni_ips(conf))]
    extra += [(f"runtimeConfig.ips[{i}]", v)
              for i, v in enumerate(list_field(_runtime_config(conf).get("ips"), "runtimeConfig.ips"))]
    out.extend(StaticAddress(_static_address(v, where)) for where, v in extra)
    for i, gw_text in enumerate(cni_arg_list(cni_args, "GATEWAY")):
        gateway = parse_ip(gw_text, f"CNI_ARGS GATEWAY[{i}]")
        owners = [a for a in out if gateway in a.address.network]
        if not owners:
            raise InvalidNetworkConfig(f"CNI_ARGS GATEWAY {gateway} is in none of the addresses' subnets")
        for a in owners:
            a.gateway = gateway
    return out


def load_static(conf: dict[str, Any], cni_args: Sequence[tuple[str, str]], cni_version: str) -> StaticConfig:
    ipam = ipam_section(conf)
    addresses = _static_addresses(conf, ipam, cni_args)
    if not addresses:
        raise InvalidNetworkConfig(
            "static IPAM has no addresses: set ipam.addresses "
            "(or CNI_ARGS IP, args.cni.ips, runtimeConfig.ips)")
    seen: set[IPAddress] = set()
    for a in addresses:
        if a.address.ip in seen:
            raise InvalidNetworkConfig(f"static IPAM address {a.address.ip} is given twice")
        seen.add(a.address.ip)
    _check_family_count((a.address.version for a in addresses), cni_version, "the static addresses")
    return StaticConfig(
        name=str(conf.get("name", "")),
        cni_version=cni_version,
        addresses=addresses,
        routes=parse_routes(ipam.get("routes")),
        dns=parse_dns(ipam.get("dns")),
    )
