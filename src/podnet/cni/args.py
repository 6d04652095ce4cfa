"""Validation of the per-invocation parameters: container ID, interface name, pod namespace,
CNI_ARGS, names."""

from __future__ import annotations

import os
import re

from podnet.cni.errors import InvalidEnvironment, InvalidNetworkConfig

# Spec: starts with an alphanumeric, then alphanumerics, '_', '.', '-'. The same rule names networks.
# Always used with fullmatch: a "$" anchor would accept a trailing newline ("abc\n").
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
# Kernel limit for an interface name is IFNAMSIZ (16) including the NUL byte.
IFNAME_MAX = 15
# Names end up in file names (result cache, IPAM files); NAME_MAX on Linux is 255 bytes.
ID_MAX = 255


def validate_container_id(container_id: str) -> str:
    if not container_id:
        raise InvalidEnvironment("container ID (CNI_CONTAINERID) is empty")
    if len(container_id) > ID_MAX:
        raise InvalidEnvironment(
            f"container ID is {len(container_id)} characters long, the limit is {ID_MAX}"
        )
    if not _ID.fullmatch(container_id):
        raise InvalidEnvironment(
            f"invalid container ID {container_id!r}: must start with a letter or digit and contain "
            "only letters, digits, '_', '.' and '-'"
        )
    return container_id


def validate_ifname(ifname: str) -> str:
    if not ifname:
        raise InvalidEnvironment("interface name (CNI_IFNAME) is empty")
    if len(ifname.encode()) > IFNAME_MAX:
        raise InvalidEnvironment(f"interface name {ifname!r} is longer than {IFNAME_MAX} characters")
    if ifname in (".", ".."):
        raise InvalidEnvironment(f"interface name {ifname!r} is not allowed")
    for ch in ifname:
        if ch in "/:\x00" or ch.isspace():
            raise InvalidEnvironment(f"interface name {ifname!r} contains invalid character {ch!r}")
    return ifname


# The caller's own network namespace, as its thread sees it and as its process does. They differ
# in a thread that entered another namespace; in the daemon they are the daemon's, which is also
# the caller's (it refuses callers from another namespace).
_OWN_NETNS = ("/proc/thread-self/ns/net", "/proc/self/ns/net")


def _identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of what ``path`` resolves to; None if it cannot be looked at. Identity,
    never the path: /proc/self/ns/net, /proc/PID/ns/net and a bind mount under /run/netns can all
    be the same namespace."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def pod_netns(command: str, netns: str) -> str:
    """The pod's namespace path to hand the plugin, after refusing the caller's own.

    A plugin treats CNI_NETNS as the pod and the namespace it runs in as the host: given its own
    namespace, loopback DEL would take the node's lo down and bridge ADD would move the node's
    default route to a pod veth (containernetworking/plugins issue 714). ADD and CHECK are refused
    (code 4). DEL must still remove what an ADD made on the host side, so it gets no namespace at
    all, the case every plugin already handles (the pod's namespace may be gone by DEL): it then
    never touches the pod side, which here would be the node. A path that cannot be looked at is
    passed on: opening it reports why (podnet.kernel.netns)."""
    if not netns or command not in ("ADD", "CHECK", "DEL"):
        return netns
    target = _identity(netns)
    if target is None or target not in {_identity(own) for own in _OWN_NETNS}:
        return netns
    if command == "DEL":
        return ""
    raise InvalidEnvironment(
        f"CNI_NETNS {netns!r} is the plugin's own network namespace (the node's), not a pod's")


def validate_network_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidNetworkConfig("network configuration has no name")
    if len(name) > ID_MAX or not _ID.fullmatch(name):
        raise InvalidNetworkConfig(
            f"invalid network name {name!r}: must start with a letter or digit and contain only "
            "letters, digits, '_', '.' and '-'"
        )
    return name


def validate_plugin_type(plugin_type: object) -> str:
    """A plugin type is an executable's file name: no path separators, no '.' or '..'."""
    if not isinstance(plugin_type, str) or not plugin_type:
        raise InvalidNetworkConfig("plugin configuration has no 'type'")
    if any(c in plugin_type for c in "/\\\x00") or plugin_type in (".", ".."):
        raise InvalidNetworkConfig(f"invalid plugin type {plugin_type!r}: must be a file name, not a path")
    if len(plugin_type.encode()) > ID_MAX:
        raise InvalidNetworkConfig(
            f"plugin type is {len(plugin_type)} characters long, the limit for a file name is {ID_MAX}")
    return plugin_type


def parse_cni_args(raw: str) -> list[tuple[str, str]]:
    """``"K1=V1;K2=V2"`` -> pairs. An item without '=' or with an empty key is an error (code 4)."""
    pairs: list[tuple[str, str]] = []
    if not raw:
        return pairs
    for item in raw.split(";"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidEnvironment(f"invalid CNI_ARGS item {item!r}: expected KEY=VALUE")
        pairs.append((key, value))
    return pairs


def format_cni_args(pairs: list[tuple[str, str]]) -> str:
    return ";".join(f"{k}={v}" for k, v in pairs)
