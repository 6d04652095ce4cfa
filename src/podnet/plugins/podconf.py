"""Configuration values both veth plugins (bridge, routed) read, each parsed one way only.

Only ADD, CHECK and STATUS read these: DEL and GC need nothing but what finds an attachment
(:mod:`podnet.plugins.attachment`), so a value that no longer validates never blocks cleanup.

The pod's MAC comes from three places, as in the reference bridge plugin, the later one winning:
``CNI_ARGS`` ``MAC=``, then ``args.cni.mac``, then ``runtimeConfig.mac`` (capability ``mac``).
A pod MAC must be a unicast address other than all zeros: the kernel refuses the zero MAC on a
veth only when the link goes up, and a multicast source address is dropped by every switch.
Errors in ``CNI_ARGS`` are code 4 (the runtime's input), in the config code 7.
"""

from __future__ import annotations

import re
from typing import Any

from podnet.cni import skel
from podnet.cni.errors import CNIError, InvalidEnvironment, InvalidNetworkConfig
from podnet.cni.result import DNS
from podnet.ipam.config import parse_dns

MTU_MIN, MTU_MAX = 68, 65535
ZERO_MAC = "00:00:00:00:00:00"
_MAC = re.compile(r"[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(?:\1[0-9a-fA-F]{2}){4}")


def flag(conf: dict[str, Any], key: str, default: bool = False) -> bool:
    value = conf.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidNetworkConfig(f"'{key}' must be true or false", f"got {value!r}")
    return value


def integer(conf: dict[str, Any], key: str, low: int, high: int, what: str) -> int:
    """0 or absent means unset; anything else must lie in [low, high]."""
    value = conf.get(key, 0)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or (value != 0 and not low <= value <= high):
        raise InvalidNetworkConfig(f"invalid {what} {value!r}: '{key}' must be 0 (unset) or an integer "
                                   f"from {low} to {high}")
    return value


def mtu(conf: dict[str, Any]) -> int | None:
    """None: the kernel's default (as in the reference plugins, 0 means unset)."""
    return integer(conf, "mtu", MTU_MIN, MTU_MAX, "MTU") or None


def section(conf: dict[str, Any], *path: str) -> dict[str, Any]:
    """A nested object of the config ({} when absent); a value that is not an object is an error."""
    obj: Any = conf
    for depth, key in enumerate(path):
        obj = obj.get(key)
        if obj is None:
            return {}
        if not isinstance(obj, dict):
            raise InvalidNetworkConfig(f"'{'.'.join(path[:depth + 1])}' must be an object", f"got {obj!r}")
    return obj  # type: ignore[no-any-return]


def parse_mac(value: object, where: str, error: type[CNIError] = InvalidNetworkConfig) -> str:
    """A unicast, non-zero Ethernet MAC (``-`` separators accepted), lower-cased with ``:``."""
    if not isinstance(value, str) or not _MAC.fullmatch(value):
        raise error(f"invalid MAC address {value!r} in {where}",
                    "expected six hex octets such as 02:42:0a:00:00:05")
    mac = value.lower().replace("-", ":")
    if int(mac[:2], 16) & 1:
        raise error(f"invalid MAC address {value!r} in {where}", "a multicast address cannot be a pod's MAC")
    if mac == ZERO_MAC:
        raise error(f"invalid MAC address {value!r} in {where}", "the all-zero address cannot be a pod's MAC")
    return mac


def pod_mac(args: skel.CmdArgs) -> str | None:
    """The pod interface's MAC if one is asked for: the later source wins (see the module doc)."""
    env = args.arg("MAC")
    mac = parse_mac(env, "CNI_ARGS MAC", InvalidEnvironment) if env else None
    for where, value in (("args.cni.mac", section(args.conf, "args", "cni").get("mac")),
                         ("runtimeConfig.mac", section(args.conf, "runtimeConfig").get("mac"))):
        if value not in (None, ""):
            mac = parse_mac(value, where)
    return mac


def dns(conf: dict[str, Any]) -> DNS:
    """The network config's own ``dns`` (empty when absent); in the result it wins over IPAM's."""
    return parse_dns(conf.get("dns"), "dns")


def result_dns(own: DNS, ipam: DNS) -> DNS:
    return ipam if own.is_empty() else own
