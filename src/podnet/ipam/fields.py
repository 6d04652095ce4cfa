"""Small parsers for IPAM configuration fields: every error is ``InvalidNetworkConfig`` (code 7)
and names the key and the value."""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from podnet.cni.errors import InvalidNetworkConfig
from podnet.cni.result import IPAddress, IPInterface, IPNetwork


def present(value: object) -> bool:
    """Absent, null and "" all mean "not set" (Go decodes an empty IP string to nil)."""
    return value is not None and value != ""


def canonical(ip: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address is the IPv4 address (the reference canonicalizes the same way)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_ip(value: object, where: str) -> IPAddress:
    if not isinstance(value, str) or not value or "%" in value or "/" in value:
        raise InvalidNetworkConfig(f"{where}: invalid IP address {value!r}")
    try:
        return canonical(ipaddress.ip_address(value))
    except ValueError:
        raise InvalidNetworkConfig(f"{where}: invalid IP address {value!r}") from None


def _split_cidr(value: object, where: str, what: str) -> tuple[str, int]:
    """Go's ParseCIDR form only: ``address/decimal-prefix`` (no netmask, no zone)."""
    if not isinstance(value, str) or "/" not in value:
        raise InvalidNetworkConfig(f"{where}: invalid {what} {value!r}: expected CIDR notation (a.b.c.d/n)")
    addr, _, prefix = value.partition("/")
    if not (prefix.isascii() and prefix.isdigit()) or "%" in addr or len(prefix) > 3:
        raise InvalidNetworkConfig(f"{where}: invalid {what} {value!r}: expected CIDR notation (a.b.c.d/n)")
    return addr, int(prefix)


def parse_subnet(value: object, where: str) -> IPNetwork:
    """A subnet; host bits are dropped as Go's ParseCIDR does (10.1.2.3/24 -> 10.1.2.0/24)."""
    _split_cidr(value, where, "subnet")
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError as exc:
        raise InvalidNetworkConfig(f"{where}: invalid subnet {value!r}", str(exc)) from None


def parse_cidr_address(value: object, where: str) -> IPInterface:
    """An address with its prefix, host bits kept (10.1.2.3/24)."""
    _split_cidr(value, where, "address")
    try:
        return ipaddress.ip_interface(str(value))
    except ValueError as exc:
        raise InvalidNetworkConfig(f"{where}: invalid address {value!r}", str(exc)) from None


def parse_requested_ip(value: object, where: str) -> IPAddress:
    """host-local's requested IPs: a plain IP, or a CIDR whose prefix is ignored."""
    if isinstance(value, str) and "/" in value:
        return canonical(parse_cidr_address(value, where).ip)
    return parse_ip(value, where)


def obj_field(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidNetworkConfig(f"{where} must be an object", f"got {value!r}")
    return value


def list_field(value: object, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidNetworkConfig(f"{where} must be a list", f"got {value!r}")
    return value


def string_field(value: object, where: str, default: str = "") -> str:
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidNetworkConfig(f"{where} must be a string", f"got {value!r}")
    return value


def absolute_path(value: object, where: str, default: str = "") -> str:
    """A path that names the same file for every caller. A relative one would be resolved against
    the working directory of whichever process runs the plugin (the node daemon, or a shim running
    it in-process), so two pods could get two data directories and the same address."""
    path = string_field(value, where) or default
    if "\0" in path:
        raise InvalidNetworkConfig(f"{where} {path!r} contains a NUL byte")
    if path and not os.path.isabs(path):
        raise InvalidNetworkConfig(f"{where} {path!r} is not an absolute path",
                                   "a relative path would depend on the working directory of the caller")
    return path
