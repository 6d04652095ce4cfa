"""Reading fields of raw Kubernetes object dicts with the API's own rules, for ``agent.objects``.

Every reader takes the field's path (``spec.ingress[0].ports[1].port``) so that what it raises,
:class:`Invalid`, names the exact field that is wrong. Raw dicts come from YAML, JSON or the API
server, so any value may have any JSON type: nothing here assumes a shape it has not checked.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Any

from podnet.agent.model import EVERYTHING, IPAddress, IPNetwork, LabelSelector, Operator, Requirement


class Invalid(ValueError):
    """A field of a raw object that is missing, of the wrong type or against the API's rules.
    The message starts with the field's path."""


# RFC 1123 label / subdomain and the label-value rules of apimachinery's validation package.
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE = _QUALIFIED_NAME
# IANA service name: what a named port must look like (1-15 chars, a letter, no "--").
_PORT_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")


def describe(value: object) -> str:
    """A short rendering of a bad value for an error message (never the whole of a huge value)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def mapping(value: object, where: str, *, optional: bool = False) -> Mapping[str, Any]:
    """A JSON object; None (or absent) is an empty one when ``optional``."""
    if value is None and optional:
        return {}
    if not isinstance(value, Mapping):
        raise Invalid(f"{where}: expected an object, got {describe(value)}")
    for key in value:
        if not isinstance(key, str):
            raise Invalid(f"{where}: keys must be strings, got {describe(key)}")
    return value


def sequence(value: object, where: str) -> Sequence[Any]:
    """A JSON array; None (or absent) is an empty one, as the API server treats a null list."""
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise Invalid(f"{where}: expected a list, got {describe(value)}")
    return value


def string(value: object, where: str, *, optional: bool = False) -> str:
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise Invalid(f"{where}: expected a string, got {describe(value)}")
    return value


def boolean(value: object, where: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise Invalid(f"{where}: expected true or false, got {describe(value)}")
    return value


def integer(value: object, where: str) -> int:
    # bool is an int to Python but never to the API.
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"{where}: expected an integer, got {describe(value)}")
    return value


def port_number(value: object, where: str) -> int:
    number = integer(value, where)
    if not 1 <= number <= 65535:
        raise Invalid(f"{where}: port {number} is not in 1-65535")
    return number


def port_name(value: str, where: str) -> str:
    if (len(value) > 15 or not _PORT_NAME.fullmatch(value) or "--" in value
            or not any(c.isalpha() for c in value)):
        raise Invalid(f"{where}: {describe(value)} is not a valid port name (at most 15 lowercase "
                      "letters, digits and '-', with at least one letter)")
    return value


def dns_label(value: object, where: str) -> str:
    """A non-empty RFC 1123 label (a Service port's name, an EndpointSlice port's name)."""
    text = string(value, where)
    if not text or len(text) > 63 or not _DNS_LABEL.fullmatch(text):
        raise Invalid(f"{where}: {describe(text)} is not a valid DNS label (lowercase letters, digits, '-')")
    return text


@functools.lru_cache(maxsize=1 << 16)
def _parse_ip(text: str) -> IPAddress:
    # Cached: every update of an EndpointSlice or Node re-reads addresses that rarely change.
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        # IPv4 with leading zeros ("010.096.000.010"): the API server still holds such legacy
        # values and Kubernetes reads them as decimal (Go's ParseIPSloppy), so podnet does too.
        parts = text.split(".")
        if len(parts) == 4 and all(p.isascii() and p.isdigit() and len(p) <= 3 for p in parts):
            return ipaddress.IPv4Address(".".join(str(int(p)) for p in parts))
        raise


def ip_address(value: object, where: str) -> IPAddress:
    text = string(value, where)
    try:
        return _parse_ip(text)
    except ValueError:
        raise Invalid(f"{where}: {describe(text)} is not an IP address") from None


def cidr(value: object, where: str) -> IPNetwork:
    text = string(value, where)
    if "/" not in text:
        raise Invalid(f"{where}: {describe(text)} is not a CIDR (it needs a /prefix length)")
    try:
        # Host bits are allowed: the API server parses with net.ParseCIDR, which masks them.
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise Invalid(f"{where}: {describe(text)} is not a CIDR") from None


def object_name(value: object, where: str, *, dns_label: bool = False) -> str:
    """metadata.name / metadata.namespace: a DNS subdomain (namespaces: a DNS label)."""
    name = string(value, where)
    limit, pattern = (63, _DNS_LABEL) if dns_label else (253, _DNS_SUBDOMAIN)
    if not name:
        raise Invalid(f"{where}: must not be empty")
    if len(name) > limit or not pattern.fullmatch(name):
        kind = "DNS label" if dns_label else "DNS subdomain"
        raise Invalid(f"{where}: {describe(name)} is not a valid {kind} (lowercase letters, digits, '-')")
    return name


def label_key(value: object, where: str) -> str:
    key = string(value, where)
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        raise Invalid(f"{where}: label key {describe(key)} has an invalid prefix (a DNS subdomain)")
    if not name or len(name) > 63 or not _QUALIFIED_NAME.fullmatch(name):
        raise Invalid(f"{where}: {describe(key)} is not a valid label key")
    return key


def label_value(value: object, where: str) -> str:
    text = string(value, where)
    if text and (len(text) > 63 or not _LABEL_VALUE.fullmatch(text)):
        raise Invalid(f"{where}: {describe(text)} is not a valid label value")
    return text


def labels(value: object, where: str) -> dict[str, str]:
    raw = mapping(value, where, optional=True)
    return {label_key(k, f"{where}"): label_value(v, f"{where}[{k}]") for k, v in raw.items()}


def _requirement(value: object, where: str) -> Requirement:
    raw = mapping(value, where)
    key = label_key(raw.get("key"), f"{where}.key")
    op_text = string(raw.get("operator"), f"{where}.operator")
    try:
        operator = Operator(op_text)
    except ValueError:
        raise Invalid(f"{where}.operator: {describe(op_text)} is not one of In, NotIn, Exists, "
                      "DoesNotExist") from None
    values = [label_value(v, f"{where}.values[{i}]")
              for i, v in enumerate(sequence(raw.get("values"), f"{where}.values"))]
    if operator in (Operator.IN, Operator.NOT_IN) and not values:
        raise Invalid(f"{where}.values: must not be empty for operator {op_text}")
    if operator in (Operator.EXISTS, Operator.DOES_NOT_EXIST) and values:
        raise Invalid(f"{where}.values: must be empty for operator {op_text}")
    return Requirement(key, operator, frozenset(values))


def selector(value: object, where: str) -> LabelSelector:
    """A metav1.LabelSelector; null or ``{}`` is the empty selector (everything)."""
    raw = mapping(value, where, optional=True)
    match_labels = labels(raw.get("matchLabels"), f"{where}.matchLabels")
    requirements = tuple(_requirement(r, f"{where}.matchExpressions[{i}]")
                         for i, r in enumerate(sequence(raw.get("matchExpressions"),
                                                        f"{where}.matchExpressions")))
    if not match_labels and not requirements:
        return EVERYTHING
    return LabelSelector(tuple(sorted(match_labels.items())), requirements)
