"""TEST-ONLY: evaluate a compiled contribution for one new connection, in Python.

It understands exactly the statements agent.policy.compile emits (and fails loudly on anything
else), so unit tests can hold the compiled table to the semantics over many random worlds without
a kernel; the e2e tests check that the kernel reads the same statements the same way.
"""

from __future__ import annotations

import re
from ipaddress import ip_address, ip_network

from podnet.agent.model import IPAddress
from podnet.dataplane.contribution import Contribution

ADDR = re.compile(r"^(ip6?) (saddr|daddr) ")
PROTO_PORT = "meta l4proto . th dport "


class Packet:
    def __init__(self, src: IPAddress, dst: IPAddress, proto: str, port: int) -> None:
        self.src, self.dst, self.proto, self.port = src, dst, proto, port


def _in_range(value: str, text: str) -> bool:
    first, _, last = text.partition("-")
    return int(first) <= int(value) <= int(last or first)


def _addr_in(ip: IPAddress, text: str) -> bool:
    net = ip_network(text, strict=False)
    return ip.version == net.version and ip in net


def _member(elements: dict[str, str | None], fields: list[str]) -> bool:
    for key in elements:
        parts = [p.strip() for p in key.split(" . ")]
        assert len(parts) == len(fields), (key, fields)
        ok = True
        for part, value in zip(parts, fields, strict=True):
            if ":" in value or "." in value:
                ok = ok and _addr_in(ip_address(value), part)
            elif value.isdigit():
                ok = ok and _in_range(value, part)
            else:
                ok = ok and part == value
        if ok:
            return True
    return False


class Table:
    def __init__(self, contribution: Contribution) -> None:
        self.chains = {c.name: c for c in contribution.chains}
        self.elements = {k: dict(v) for k, v in contribution.elements.items()}
        for decl in contribution.sets:  # the kernel refuses a network or a range in a plain set
            if "interval" not in decl.flags:
                bad = [k for k in self.elements.get(decl.name, {}) if "/" in k or "-" in k]
                assert not bad, f"plain set {decl.name} given networks or ranges: {bad[:3]}"

    def run(self, name: str, packet: Packet) -> str | None:
        for rule in self.chains[name].rules:
            verdict = self.rule(rule, packet)
            if verdict is not None:
                return verdict
        return None

    def rule(self, rule: str, packet: Packet) -> str | None:
        if rule.startswith(("ct state", "icmpv6 type")):
            return None  # a new, valid, non-ICMP connection
        if rule in ("accept", "drop"):
            return rule
        if rule.startswith("jump "):
            return self.run(rule.split()[1], packet)
        text = rule
        while text != "accept":
            rest = self.condition(text, packet)
            if rest is None:
                return None
            text = rest
            if text.startswith("vmap @"):
                raise AssertionError(f"vmap without an address: {rule}")
        return "accept"

    def condition(self, text: str, packet: Packet) -> str | None:
        """Match the first condition of ``text``; the rest, or None when it does not match."""
        m = ADDR.match(text)
        if m:
            family = 4 if m.group(1) == "ip" else 6
            ip = packet.src if m.group(2) == "saddr" else packet.dst
            rest = text[m.end():]
            if rest.startswith("vmap @"):
                target = self.elements[rest[6:]].get(str(ip)) if ip.version == family else None
                if target is None:
                    return None
                raise _Goto(target.split()[1])
            if ip.version != family:
                return None
            if rest.startswith(". " + PROTO_PORT + "@"):
                name, _, tail = rest[len(". " + PROTO_PORT) + 1:].partition(" ")
                ok = _member(self.elements[name], [str(ip), packet.proto, str(packet.port)])
                return tail if ok else None
            name, _, tail = rest[1:].partition(" ")
            return tail if _member(self.elements[name], [str(ip)]) else None
        if text.startswith(PROTO_PORT + "@"):
            name, _, tail = text[len(PROTO_PORT) + 1:].partition(" ")
            return tail if _member(self.elements[name], [packet.proto, str(packet.port)]) else None
        raise AssertionError(f"statement not understood: {text}")


class _Goto(Exception):
    def __init__(self, chain: str) -> None:
        self.chain = chain


def allows(table: Table, packet: Packet) -> bool:
    """A new connection's first packet through the forward hook: every base chain in priority
    order; a drop in any is final."""
    bases = sorted((c for c in table.chains.values() if c.hook == "forward"),
                   key=lambda c: int(c.priority or 0))
    for base in bases:
        verdict = None
        for rule in base.rules:
            try:
                verdict = table.rule(rule, packet)
            except _Goto as goto:
                # goto: the target's verdict ends this base chain; none falls back to its policy.
                verdict = table.run(goto.chain, packet) or base.policy
            if verdict is not None:
                break
        if verdict == "drop":
            return False
    return True
