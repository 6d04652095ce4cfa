"""Plugins by name: ``podnet-bridge`` is ``podnet.plugins.bridge.PLUGIN``.

The daemon and the shims' in-process fallback find plugins the same way, so a plugin module that
lands later (with a ``PLUGIN`` and a ``main()``) is served without touching this file. Names are
checked against a strict pattern before anything is imported: a request cannot make the daemon
import an arbitrary module.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import threading

from podnet.cni import skel

PREFIX = "podnet-"
_NAME = re.compile(r"podnet-[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
_cache: dict[str, skel.Plugin] = {}
_lock = threading.Lock()


class UnknownPlugin(LookupError):
    """No podnet plugin of that name (or the name is not a podnet plugin name at all)."""


def module_name(plugin: str) -> str:
    if len(plugin) > 64 or not _NAME.fullmatch(plugin):
        raise UnknownPlugin(f"{plugin!r} is not a podnet plugin name")
    return "podnet.plugins." + plugin[len(PREFIX):].replace("-", "_")


def load(plugin: str) -> skel.Plugin:
    """The plugin's ``PLUGIN`` object (imported once, then cached)."""
    found = _cache.get(plugin)
    if found is not None:
        return found
    name = module_name(plugin)
    with _lock:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                raise UnknownPlugin(f"no podnet plugin {plugin!r} (module {name} does not exist)") from None
            raise  # the plugin exists but something it imports is missing: a real error
        found = getattr(module, "PLUGIN", None)
        if not isinstance(found, skel.Plugin):
            raise UnknownPlugin(f"module {name} has no PLUGIN: {plugin!r} is not a plugin")
        _cache[plugin] = found
    return found


def available() -> list[str]:
    """Every plugin name in ``podnet.plugins`` (modules that define a ``PLUGIN``)."""
    import podnet.plugins

    names = []
    for info in pkgutil.iter_modules(podnet.plugins.__path__):
        if info.ispkg or info.name.startswith("_"):
            continue
        plugin = PREFIX + info.name.replace("_", "-")
        try:
            load(plugin)
        except UnknownPlugin:
            continue
        names.append(plugin)
    return sorted(names)
