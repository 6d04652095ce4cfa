"""Which executables the daemon may run for a caller: only those in its own plugin directories.

A podnet plugin delegates an ``ipam`` of a type it does not implement to the executable of that
name on ``CNI_PATH``. Run by the daemon, that executable would get the daemon's full capabilities
while the caller chose both the name and the path. Of the two ways out — run it with no more
capabilities than the caller has, or run only executables from directories the daemon was
configured with — the daemon takes the second: shrinking a child's capability sets between fork
and exec inside a threaded daemon is fragile (it would need ``preexec_fn``, which Python itself
calls unsafe with threads), while a directory list is simple to state and to check. Nothing is
lost for the caller: when the delegate would come from anywhere else, the daemon refuses the call
before anything runs, and the shim runs the plugin in-process, where the delegate gets exactly
the caller's own capabilities.

The plugin then sees ``CNI_PATH`` cut to the trusted entries, so the executable it finds is the
one vetted here, even if the caller drops a file into its own directories meanwhile.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from podnet.cni.errors import InvalidNetworkConfig
from podnet.plugins.ipam_delegate import IN_PROCESS
from podnet.runtime.invoke import find_plugin


class UntrustedDelegate(Exception):
    """The call would make the daemon run an executable from a directory it does not trust."""


def _real_dirs(dirs: Sequence[str]) -> set[str]:
    return {os.path.realpath(d) for d in dirs if d}


def external_ipam(conf: Mapping[str, Any] | None) -> str | None:
    """The ``ipam.type`` that would be exec'd (None for none, or for podnet's in-process IPAM)."""
    ipam = conf.get("ipam") if conf is not None else None
    kind = ipam.get("type") if isinstance(ipam, dict) else None
    if not isinstance(kind, str) or not kind or kind in IN_PROCESS:
        return None
    return kind


def vet(env: Mapping[str, str], conf: Mapping[str, Any] | None, plugin_dirs: Sequence[str]) -> dict[str, str]:
    """The environment to run the call with (``CNI_PATH`` cut to ``plugin_dirs``); raises
    :class:`UntrustedDelegate` when the caller's path would find the delegate elsewhere."""
    kind = external_ipam(conf)
    if kind is None:
        return dict(env)  # podnet's plugins exec nothing else
    trusted = _real_dirs(plugin_dirs)
    caller_path = [d for d in env.get("CNI_PATH", "").split(os.pathsep) if d]
    kept = [d for d in caller_path if os.path.realpath(d) in trusted]
    try:
        found: str | None = find_plugin(kind, caller_path)
    except InvalidNetworkConfig:
        found = None  # not found, or not a file name: the plugin reports it, as it would in-process
    where = ", ".join(sorted(plugin_dirs)) or "none"
    if found is not None and os.path.realpath(os.path.dirname(found)) not in trusted:
        raise UntrustedDelegate(f"ipam {kind!r} would run {found}, which is not one of the daemon's "
                                f"plugin directories ({where})")
    if not kept:
        raise UntrustedDelegate(f"ipam {kind!r}: no directory on CNI_PATH is one of the daemon's plugin "
                                f"directories ({where})")
    cut = dict(env)
    cut["CNI_PATH"] = os.pathsep.join(kept)
    return cut
