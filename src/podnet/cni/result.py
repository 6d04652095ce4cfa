"""CNI results: one in-memory model (the 1.1.0 shape) and JSON for every spec version.

``Result.from_json(data)`` reads a result of any version; ``result.to_json(version)`` writes it in any
version. Reading then writing converts, so every pair of versions round-trips the fields both share.

Version shapes:
  0.1.0, 0.2.0  ``ip4`` / ``ip6`` objects, each with ``ip``, ``gateway`` and its own ``routes``
  0.3.0 - 0.4.0 ``interfaces``, ``ips`` (with ``version``), ``routes``, ``dns``
  1.0.0         as 0.4.0 without ``ips[].version``
  1.1.0         adds ``interfaces[].mtu/socketPath/pciID`` and ``routes[].mtu/advmss/priority/table/scope``
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from podnet.cni import version as ver
from podnet.cni.errors import DecodingFailure, IncompatibleVersion

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""
    mtu: int = 0
    socket_path: str = ""
    pci_id: str = ""


@dataclass
class IPConfig:
    address: IPInterface
    gateway: IPAddress | None = None
    # Index into Result.interfaces; None when the IP is not bound to an interface (IPAM output).
    interface: int | None = None

    @property
    def family(self) -> int:
        return self.address.version


@dataclass
class Route:
    dst: IPNetwork
    gw: IPAddress | None = None
    mtu: int = 0
    advmss: int = 0
    priority: int = 0
    table: int | None = None
    scope: int | None = None


@dataclass
class DNS:
    nameservers: list[str] = field(default_factory=list)
    domain: str = ""
    search: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (self.nameservers or self.domain or self.search or self.options)


@dataclass
class Result:
    cni_version: str = ver.CURRENT
    interfaces: list[Interface] = field(default_factory=list)
    ips: list[IPConfig] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    dns: DNS = field(default_factory=DNS)

    @classmethod
    def from_json(cls, data: object, default_version: str | None = None) -> Result:
        """Parse a result of any supported version (taken from ``cniVersion``, else ``default_version``)."""
        if not isinstance(data, dict):
            raise DecodingFailure("result is not a JSON object")
        raw_version = data.get("cniVersion") or default_version
        if raw_version is None:
            raise DecodingFailure("result has no cniVersion")
        if not isinstance(raw_version, str):
            raise DecodingFailure("result.cniVersion must be a string", f"got {raw_version!r}")
        version = ver.require_supported(raw_version)
        if ver.compare(version, "0.3.0") < 0:
            return _parse_legacy(data, version)
        return _parse_current(data, version)

    def to_json(self, version: str | None = None) -> dict[str, Any]:
        """Serialize for ``version`` (default: the result's own version)."""
        target = ver.require_supported(version or self.cni_version)
        if ver.compare(target, "0.3.0") < 0:
            return _dump_legacy(self, target)
        return _dump_current(self, target)

    def convert(self, version: str) -> Result:
        """A copy converted to ``version``: fields the version cannot carry are dropped."""
        return Result.from_json(self.to_json(version))


# ---- parsing helpers -------------------------------------------------------------------------


_JSON_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer"}


def _get(obj: dict[str, Any], key: str, kind: type, where: str, default: Any = None) -> Any:
    value = obj.get(key, default)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DecodingFailure(f"{where}.{key} must be {_JSON_NAMES.get(kind, kind.__name__)}",
                              f"got {value!r}")
    return value


def _uint(obj: dict[str, Any], key: str, where: str, default: int | None = 0) -> Any:
    """The spec's uint fields (interface index, mtu, advmss, priority, table, scope)."""
    value = _get(obj, key, int, where, default)
    if value is not None and value < 0:
        raise DecodingFailure(f"{where}.{key} must not be negative", f"got {value}")
    return value


def _present(value: object) -> bool:
    """Optional string fields: absent, null and "" all mean "not set"."""
    return value is not None and value != ""


def _str_list(obj: dict[str, Any], key: str, where: str) -> list[str]:
    items = _get(obj, key, list, where, [])
    if not all(isinstance(x, str) for x in items):
        raise DecodingFailure(f"{where}.{key} must be a list of strings")
    return list(items)


def _check_cidr(text: object, where: str, what: str) -> str:
    """Go's net.ParseCIDR form only: a plain address, '/', a decimal prefix length. Python would also
    take a netmask ("/255.255.0.0") or an IPv6 zone ("fe80::1%eth0"), which no CNI peer can read."""
    if not isinstance(text, str) or "/" not in text:
        raise DecodingFailure(f"{where} must be {what} in CIDR form", f"got {text!r}")
    addr, _, prefix = text.partition("/")
    if not (prefix.isascii() and prefix.isdigit()) or "%" in addr:
        raise DecodingFailure(f"{where} is not a valid CIDR {what}", f"got {text!r}")
    return text


def parse_interface_addr(text: object, where: str) -> IPInterface:
    """A CIDR with host bits kept ("10.1.0.5/16")."""
    text = _check_cidr(text, where, "address")
    try:
        return ipaddress.ip_interface(text)
    except ValueError as exc:
        raise DecodingFailure(f"{where} is not a valid CIDR address", str(exc)) from None


def parse_addr(text: object, where: str) -> IPAddress:
    if not isinstance(text, str) or "%" in text:
        raise DecodingFailure(f"{where} must be an IP address string", f"got {text!r}")
    try:
        return ipaddress.ip_address(text)
    except ValueError as exc:
        raise DecodingFailure(f"{where} is not a valid IP address", str(exc)) from None


def parse_network(text: object, where: str) -> IPNetwork:
    """A route destination; host bits are masked off as Go's net.ParseCIDR does."""
    text = _check_cidr(text, where, "subnet")
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise DecodingFailure(f"{where} is not a valid subnet", str(exc)) from None


def _parse_route(obj: object, where: str) -> Route:
    if not isinstance(obj, dict):
        raise DecodingFailure(f"{where} must be an object")
    gw = obj.get("gw")
    return Route(
        dst=parse_network(obj.get("dst"), f"{where}.dst"),
        gw=parse_addr(gw, f"{where}.gw") if _present(gw) else None,
        mtu=_uint(obj, "mtu", where),
        advmss=_uint(obj, "advmss", where),
        priority=_uint(obj, "priority", where),
        table=_uint(obj, "table", where, None),
        scope=_uint(obj, "scope", where, None),
    )


def _parse_dns(data: dict[str, Any]) -> DNS:
    obj = _get(data, "dns", dict, "result", {})
    return DNS(
        nameservers=_str_list(obj, "nameservers", "dns"),
        domain=_get(obj, "domain", str, "dns", ""),
        search=_str_list(obj, "search", "dns"),
        options=_str_list(obj, "options", "dns"),
    )


def _parse_interface(obj: object, where: str) -> Interface:
    if not isinstance(obj, dict):
        raise DecodingFailure(f"{where} must be an object")
    return Interface(
        name=_get(obj, "name", str, where, ""),
        mac=_get(obj, "mac", str, where, ""),
        sandbox=_get(obj, "sandbox", str, where, ""),
        mtu=_uint(obj, "mtu", where),
        socket_path=_get(obj, "socketPath", str, where, ""),
        pci_id=_get(obj, "pciID", str, where, ""),
    )


def _gateway(obj: dict[str, Any], address: IPInterface, where: str) -> IPAddress | None:
    gw = obj.get("gateway")
    if not _present(gw):
        return None
    gateway = parse_addr(gw, f"{where}.gateway")
    if gateway.version != address.version:
        raise DecodingFailure(f"{where}.gateway {gateway} is not of the address family of {address}")
    return gateway


def _parse_ip(obj: object, where: str, version: str) -> IPConfig:
    if not isinstance(obj, dict):
        raise DecodingFailure(f"{where} must be an object")
    address = parse_interface_addr(obj.get("address"), f"{where}.address")
    gateway = _gateway(obj, address, where)
    # 0.3.x/0.4.0 carry the family explicitly; it must agree with the address.
    fam = _get(obj, "version", str, where, "")
    if fam and fam != str(address.version):
        raise DecodingFailure(f"{where}.version is {fam!r} but the address is IPv{address.version}")
    iface = _uint(obj, "interface", where, None)
    return IPConfig(address=address, gateway=gateway, interface=iface)


def _parse_current(data: dict[str, Any], version: str) -> Result:
    interfaces = [_parse_interface(x, f"interfaces[{i}]")
                  for i, x in enumerate(_get(data, "interfaces", list, "result", []))]
    ips = [_parse_ip(x, f"ips[{i}]", version) for i, x in enumerate(_get(data, "ips", list, "result", []))]
    for i, ip in enumerate(ips):
        if ip.interface is not None and ip.interface >= len(interfaces):
            raise DecodingFailure(f"ips[{i}].interface is {ip.interface}, but there are "
                                  f"{len(interfaces)} interfaces")
    routes = [_parse_route(x, f"routes[{i}]") for i, x in enumerate(_get(data, "routes", list, "result", []))]
    return Result(cni_version=version, interfaces=interfaces, ips=ips, routes=routes, dns=_parse_dns(data))


def _parse_legacy(data: dict[str, Any], version: str) -> Result:
    result = Result(cni_version=version, dns=_parse_dns(data))
    for key, family in (("ip4", 4), ("ip6", 6)):
        block = _get(data, key, dict, "result")
        if block is None:
            continue
        address = parse_interface_addr(block.get("ip"), f"{key}.ip")
        if address.version != family:
            raise DecodingFailure(f"{key}.ip {address} is not an IPv{family} address")
        result.ips.append(IPConfig(address=address, gateway=_gateway(block, address, key)))
        result.routes.extend(_parse_route(r, f"{key}.routes[{i}]")
                             for i, r in enumerate(_get(block, "routes", list, key, [])))
    return result


# ---- serialization ---------------------------------------------------------------------------


def _dump_dns(dns: DNS) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if dns.nameservers:
        out["nameservers"] = list(dns.nameservers)
    if dns.domain:
        out["domain"] = dns.domain
    if dns.search:
        out["search"] = list(dns.search)
    if dns.options:
        out["options"] = list(dns.options)
    return out


def _dump_route(route: Route, rich: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"dst": str(route.dst)}
    if route.gw is not None:
        out["gw"] = str(route.gw)
    if rich:  # 1.1.0 route attributes
        for key, value in (("mtu", route.mtu), ("advmss", route.advmss), ("priority", route.priority)):
            if value:
                out[key] = value
        if route.table is not None:
            out["table"] = route.table
        if route.scope is not None:
            out["scope"] = route.scope
    return out


def _dump_interface(iface: Interface, rich: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": iface.name}
    if iface.mac:
        out["mac"] = iface.mac
    if rich and iface.mtu:
        out["mtu"] = iface.mtu
    if iface.sandbox:
        out["sandbox"] = iface.sandbox
    if rich and iface.socket_path:
        out["socketPath"] = iface.socket_path
    if rich and iface.pci_id:
        out["pciID"] = iface.pci_id
    return out


def _dump_current(result: Result, version: str) -> dict[str, Any]:
    rich = ver.at_least(version, "1.1.0")
    with_family = ver.compare(version, "1.0.0") < 0
    out: dict[str, Any] = {"cniVersion": version}
    if result.interfaces:
        out["interfaces"] = [_dump_interface(i, rich) for i in result.interfaces]
    if result.ips:
        ips = []
        for ip in result.ips:
            item: dict[str, Any] = {}
            if with_family:
                item["version"] = str(ip.family)
            if ip.interface is not None:
                item["interface"] = ip.interface
            item["address"] = str(ip.address)
            if ip.gateway is not None:
                item["gateway"] = str(ip.gateway)
            ips.append(item)
        out["ips"] = ips
    if result.routes:
        out["routes"] = [_dump_route(r, rich) for r in result.routes]
    out["dns"] = _dump_dns(result.dns)
    return out


def _dump_legacy(result: Result, version: str) -> dict[str, Any]:
    """0.1.0/0.2.0 hold one address per family; routes go to the block of their family."""
    out: dict[str, Any] = {"cniVersion": version}
    for family, key in ((4, "ip4"), (6, "ip6")):
        first = next((ip for ip in result.ips if ip.family == family), None)
        if first is None:
            continue
        block: dict[str, Any] = {"ip": str(first.address)}
        if first.gateway is not None:
            block["gateway"] = str(first.gateway)
        routes = [_dump_route(r, False) for r in result.routes if r.dst.version == family]
        if routes:
            block["routes"] = routes
        out[key] = block
    if "ip4" not in out and "ip6" not in out:
        raise IncompatibleVersion(f"cannot convert result to version {version}: it has no IP address")
    out["dns"] = _dump_dns(result.dns)
    return out
