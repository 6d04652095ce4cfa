"""Sysctls, read and written inside a given network namespace.

``/proc/sys/net`` is resolved against the network namespace of the *thread* that opens
the file (measured; see ``netns``), so a namespace's sysctls are accessed from a
thread inside it (:func:`podnet.kernel.netns.run_in_netns`). Only ``net.*``
keys are per-namespace: any other key would change the whole machine, so with a
namespace given such keys are refused.
"""

from __future__ import annotations

import os

from podnet.kernel.errors import InvalidArgument, from_exception
from podnet.kernel.netns import NetnsRef, run_in_netns

PROC_SYS = "/proc/sys"


def sysctl_path(key: str) -> str:
    """``net.ipv4.ip_forward`` or ``net/ipv4/conf/eth0.100/forwarding`` -> /proc/sys/...

    The slash form is for keys with a dotted interface name (a VLAN such as eth0.100)
    which the dotted form cannot express.
    """
    rel = key if "/" in key else key.replace(".", "/")
    parts = rel.strip("/").split("/")
    if not key or any(p in ("", ".", "..") for p in parts):
        raise InvalidArgument(f"sysctl {key!r}: not a sysctl name")
    return os.path.join(PROC_SYS, *parts)


def _is_net(path: str) -> bool:
    return path.startswith(PROC_SYS + "/net/")


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def read_sysctl(key: str, netns: NetnsRef | None = None) -> str:
    """The value (whitespace-trimmed) in ``netns`` (None: the calling thread's namespace)."""
    path = sysctl_path(key)
    try:
        if netns is None:
            return _read(path)
        _require_net(key, path)
        return run_in_netns(netns, _read, path)
    except OSError as exc:
        raise from_exception(exc, "sysctl", f"sysctl {key}") from None


def write_sysctl(key: str, value: str | int, netns: NetnsRef | None = None) -> None:
    path = sysctl_path(key)
    try:
        if netns is None:
            _write(path, str(value))
        else:
            _require_net(key, path)
            run_in_netns(netns, _write, path, str(value))
    except OSError as exc:
        raise from_exception(exc, "sysctl", f"sysctl {key}") from None


def _require_net(key: str, path: str) -> None:
    if not _is_net(path):
        raise InvalidArgument(f"sysctl {key}: not a per-namespace (net.*) key",
                              "refusing to change the whole machine from a namespace")


__all__ = ["read_sysctl", "sysctl_path", "write_sysctl"]
