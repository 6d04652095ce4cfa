"""Element keys and values in one canonical text, so what the writer applied compares with what the
kernel lists: nft prints ``10.0.0.5/32`` as ``10.0.0.5``, a range that is a prefix as the prefix,
protocol numbers as names, interface names without quotes."""

from __future__ import annotations

import ipaddress

from podnet.dataplane.union import Value

_PROTOCOLS = {"1": "icmp", "6": "tcp", "17": "udp", "58": "ipv6-icmp", "132": "sctp", "icmpv6": "ipv6-icmp"}
_ADDRESS_TYPES = frozenset({"ipv4_addr", "ipv6_addr"})
_STRING_TYPES = frozenset({"ifname", "string"})


def _address(text: str) -> str:
    try:
        if "-" in text:
            low, high = (ipaddress.ip_address(p.strip()) for p in text.split("-", 1))
            nets = list(ipaddress.summarize_address_range(low, high))
            return _address(str(nets[0])) if len(nets) == 1 else f"{low}-{high}"
        if "/" in text:
            net = ipaddress.ip_network(text, strict=False)
            return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text


def _service(text: str) -> str:
    low, sep, high = text.partition("-")
    return low if sep and low == high else text


def component(text: str, kind: str) -> str:
    text = text.strip()
    if kind in _ADDRESS_TYPES:
        return _address(text)
    if kind == "inet_service":
        return _service(text)
    if kind == "inet_proto":
        return _PROTOCOLS.get(text, text)
    if kind in _STRING_TYPES and not text.startswith('"'):
        return f'"{text}"'
    return text


def key(text: str, types: tuple[str, ...]) -> str:
    parts = text.split(" . ")
    if len(parts) != len(types):
        return " ".join(text.split())
    return " . ".join(component(p, t) for p, t in zip(parts, types, strict=True))


def value(text: Value, value_type: str | None) -> Value:
    if text is None or value_type is None:
        return text
    if value_type == "verdict":
        return " ".join(text.split())
    return key(text, tuple(value_type.split(" . ")))


def elements(items: dict[str, Value], types: tuple[str, ...], value_type: str | None) -> dict[str, Value]:
    return {key(k, types): value(v, value_type) for k, v in items.items()}
