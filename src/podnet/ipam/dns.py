"""DNS settings of IPAM results: an ``ipam.dns`` object (static, and the main plugins' own ``dns``)
or a resolv.conf file (host-local's ``resolvConf``).

The runtime writes these strings into the pod's resolv.conf, one setting per line, so a value that
is not a single word (a NUL byte, a line break, any whitespace) or a nameserver that is not an IP
address is refused as configuration (code 7) instead of corrupting or adding lines there.
"""

from __future__ import annotations

import ipaddress
import os
import stat

from podnet.cni import version as ver
from podnet.cni.errors import CNIError, InvalidNetworkConfig
from podnet.cni.result import DNS, Result
from podnet.ipam.fields import absolute_path, obj_field

MAX_RESOLV_CONF = 64 * 1024  # far more than any resolv.conf; a bound so /dev/zero cannot fill memory


def _word(value: str, where: str) -> None:
    if not value or any(c.isspace() or not c.isprintable() for c in value):
        raise InvalidNetworkConfig(f"{where} {value!r} must be one word (no whitespace, line break or NUL)")


def _nameserver(value: str, where: str) -> None:
    _word(value, where)
    try:
        ipaddress.ip_address(value)  # a scoped IPv6 address (fe80::53%eth0) is fine
    except ValueError:
        raise InvalidNetworkConfig(f"{where} {value!r} is not an IP address") from None


def check_dns(dns: DNS, where: str) -> DNS:
    for i, server in enumerate(dns.nameservers):
        _nameserver(server, f"{where}.nameservers[{i}]")
    if dns.domain:
        _word(dns.domain, f"{where}.domain")
    for key, values in (("search", dns.search), ("options", dns.options)):
        for i, item in enumerate(values):
            _word(item, f"{where}.{key}[{i}]")
    return dns


def parse_dns(value: object, where: str = "ipam.dns") -> DNS:
    if value is None:
        return DNS()
    try:
        dns = Result.from_json({"cniVersion": ver.CURRENT, "dns": obj_field(value, where)}).dns
    except CNIError as err:
        raise InvalidNetworkConfig(f"{where}: {err.msg}", err.details) from None
    return check_dns(dns, where)


def _read_regular_file(path: str, where: str) -> str:
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidNetworkConfig(f"{where}: cannot read {path!r}", exc.strerror or str(exc)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidNetworkConfig(f"{where} {path!r} is not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_RESOLV_CONF and (chunk := os.read(fd, MAX_RESOLV_CONF + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise InvalidNetworkConfig(f"{where}: cannot read {path!r}", exc.strerror or str(exc)) from None
    finally:
        os.close(fd)
    if size > MAX_RESOLV_CONF:
        raise InvalidNetworkConfig(f"{where} {path!r} is larger than {MAX_RESOLV_CONF} bytes")
    return b"".join(chunks).decode("utf-8", errors="replace")


def parse_resolv_conf(path: str) -> DNS:
    """The DNS settings of a resolv.conf file (nameserver, domain, search, options)."""
    path = absolute_path(path, "ipam.resolvConf")
    text = _read_regular_file(path, "ipam.resolvConf")
    dns = DNS()
    for line in text.splitlines():
        words = line.split()
        if len(words) < 2 or words[0][0] in "#;":
            continue
        key, values = words[0], words[1:]
        if key == "nameserver":
            dns.nameservers.append(values[0])
        elif key == "domain":
            dns.domain = values[0]
        elif key == "search":
            dns.search = values
        elif key == "options":
            dns.options = values
    return check_dns(dns, f"ipam.resolvConf ({path})")
