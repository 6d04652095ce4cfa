"""Writing podnet's own network config into a CNI conf dir: what ``podnet install`` and the agent write.

The config is one conflist with one plugin: ``podnet-bridge`` (a bridge per node, the bridge is the
pods' gateway) or ``podnet-routed`` (a veth per pod, everything routed by the host), both with
``podnet-host-local`` IPAM and one range set per pod subnet (one IPv4 and/or one IPv6 set: dual
stack is one address from each).

A conf dir is read by the container runtime at any moment, so a file is only ever replaced whole:
written to a temporary name (a dot file, which no runtime loads as a network), synced, renamed over
the old one. A file whose content is already right is not written at all, so its mtime and inode
say when it last really changed. A pod subnet that overlaps another network's in the same directory
is refused: two networks routing the same addresses break each other.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from podnet.cni.errors import CNIError
from podnet.cni.jsonio import load_json

CONF_NAME = "10-podnet.conflist"
# The files libcni loads from a conf dir.
CONF_EXTENSIONS = (".conf", ".conflist", ".json")
PLUGIN_TYPES = {"bridge": "podnet-bridge", "routed": "podnet-routed"}
IPAM_TYPE = "podnet-host-local"
TEMP_PREFIX = ".podnet-tmp-"
MAX_CONF = 1 << 20
_DEFAULT_ROUTE = {4: "0.0.0.0/0", 6: "::/0"}

Subnet = ipaddress.IPv4Network | ipaddress.IPv6Network


class OverlapError(ValueError):
    """A pod subnet overlaps a subnet of another network in the conf dir."""


@dataclass(frozen=True)
class PodNetwork:
    """What the generated conflist says. ``extra`` holds plugin keys the caller owns (``podnet
    install`` writes the daemon's socket there), added after podnet's own."""

    subnets: Sequence[Subnet]
    mode: str = "bridge"
    name: str = "podnet"
    bridge: str = "podnet0"
    cni_version: str = "1.0.0"
    data_dir: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def conflist(net: PodNetwork) -> dict[str, Any]:
    """The conflist as data; ValueError for an unknown mode, no subnet or two of one family."""
    if net.mode not in PLUGIN_TYPES:
        raise ValueError(f"unknown network mode {net.mode!r}: choose {' or '.join(PLUGIN_TYPES)}")
    if not net.subnets:
        raise ValueError("a pod network needs at least one subnet")
    families = [s.version for s in net.subnets]
    if len(set(families)) != len(families):
        raise ValueError(f"at most one subnet per family, got {', '.join(map(str, net.subnets))}")
    ipam: dict[str, Any] = {"type": IPAM_TYPE, "ranges": [[{"subnet": str(s)}] for s in net.subnets]}
    if net.mode == "bridge":
        # The bridge is each pod's gateway; podnet-routed installs its own default route (via
        # 169.254.1.1 / fe80::1) and uses none from IPAM's ranges.
        ipam["routes"] = [{"dst": _DEFAULT_ROUTE[s.version]} for s in net.subnets]
    if net.data_dir:
        ipam["dataDir"] = net.data_dir
    plugin: dict[str, Any] = {"type": PLUGIN_TYPES[net.mode]}
    if net.mode == "bridge":
        plugin.update(bridge=net.bridge, isGateway=True)
    plugin["ipam"] = ipam
    plugin.update(net.extra)
    return {"cniVersion": net.cni_version, "name": net.name, "plugins": [plugin]}


def encode(conf: Mapping[str, Any]) -> bytes:
    """The file's bytes: stable for equal data, so an unchanged config is never rewritten."""
    return (json.dumps(conf, indent=2) + "\n").encode()


def write_if_changed(path: str, data: bytes, mode: int) -> str:
    """``unchanged`` / ``installed`` / ``updated``; atomic (temp file + fsync + rename)."""
    try:
        # A symlink (a plugin that was a link to the native shim) is replaced, never written through.
        with open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NOFOLLOW)) as f:
            current: bytes | None = f.read()
    except FileNotFoundError:
        current = None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        current = b""
    if current == data and (os.stat(path).st_mode & 0o7777) == mode:
        return "unchanged"
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)
    return "installed" if current is None else "updated"


def _fsync_dir(path: str) -> None:
    """The rename survives a crash (without it the old file may come back after a power loss)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with contextlib.suppress(OSError):  # some filesystems cannot sync a directory
            os.fsync(fd)
    finally:
        os.close(fd)


def subnets_of(node: object) -> Iterator[Subnet]:
    """Every ``subnet`` in a network config: host-local's ranges, the legacy ``ipam.subnet``, other
    IPAM plugins' keys of that name. Routes are not looked at: a 0.0.0.0/0 route overlaps all."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "subnet" and isinstance(value, str):
                try:
                    yield ipaddress.ip_network(value, strict=False)
                except ValueError:
                    continue
            else:
                yield from subnets_of(value)
    elif isinstance(node, list):
        for item in node:
            yield from subnets_of(item)


def other_networks(conf_dir: str, own_path: str) -> Iterator[tuple[str, object]]:
    """(path, parsed config) of every network config in the conf dir but podnet's own file. A file
    that cannot be read or parsed is skipped: libcni cannot load it either, it is no network."""
    try:
        names = sorted(os.listdir(conf_dir))
    except FileNotFoundError:
        return
    own = os.path.realpath(own_path)
    for name in names:
        path = os.path.join(conf_dir, name)
        if name.startswith(".") or not name.endswith(CONF_EXTENSIONS) or os.path.realpath(path) == own:
            continue
        try:
            with open(path, "rb") as f:
                yield path, load_json(f.read(MAX_CONF + 1), path)
        except (OSError, CNIError):
            continue


def check_overlaps(conflist: bytes, conf_dir: str, own_path: str,
                   hint: str = "choose another --subnet") -> None:
    """Refuse pod subnets that overlap another network's (OverlapError): two bridges routing the
    same addresses break both (the node's route to each goes to whichever was set up last)."""
    mine = list(subnets_of(load_json(conflist, "the network config to install")))
    for path, body in other_networks(conf_dir, own_path):
        for theirs in subnets_of(body):
            for subnet in mine:
                if subnet.version == theirs.version and subnet.overlaps(theirs):
                    name = body.get("name") if isinstance(body, dict) else None
                    raise OverlapError(f"subnet {subnet} overlaps {theirs} of network {name!r} in {path}; "
                                       f"{hint}")
