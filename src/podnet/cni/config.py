"""Network configuration lists (``.conflist``) and single configs (``.conf``): parse, validate, and
build the stdin each plugin of a list receives."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from podnet.cni import version as ver
from podnet.cni.args import validate_network_name, validate_plugin_type
from podnet.cni.errors import DecodingFailure, IncompatibleVersion, InvalidNetworkConfig
from podnet.cni.jsonio import load_json

VALID_ATTACHMENTS_KEY = "cni.dev/valid-attachments"


@dataclass
class PluginConf:
    """One plugin's configuration object, kept as raw JSON: plugins own their keys."""

    raw: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.raw["type"])

    @property
    def capabilities(self) -> dict[str, bool]:
        caps = self.raw.get("capabilities")
        if not isinstance(caps, dict):
            return {}
        return {k: v for k, v in caps.items() if v is True}


@dataclass
class NetConfList:
    name: str
    cni_version: str
    plugins: list[PluginConf]
    disable_check: bool = False
    disable_gc: bool = False
    load_only_inlined_plugins: bool = False
    cni_versions: list[str] = field(default_factory=list)
    # The bytes as they were read; libcni caches these as the attachment's config.
    raw_bytes: bytes = b""
    source: str = ""


def parse_bool(value: object, key: str) -> bool:
    """Booleans may be JSON booleans or the strings "true"/"false" (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidNetworkConfig(f"'{key}' must be a boolean or \"true\"/\"false\"", f"got {value!r}")


def _decode(data: bytes | str, source: str) -> dict[str, Any]:
    obj = load_json(data, f"network configuration {source}".strip())
    if not isinstance(obj, dict):
        raise DecodingFailure(f"network configuration {source} is not a JSON object".replace("  ", " "))
    return obj


def pick_version(obj: dict[str, Any], where: str) -> tuple[str, list[str]]:
    """The version to run with: the highest supported of ``cniVersions``, else ``cniVersion``."""
    raw_list = obj.get("cniVersions")
    versions: list[str] = []
    if raw_list is not None:
        if not isinstance(raw_list, list) or not all(isinstance(v, str) for v in raw_list):
            raise InvalidNetworkConfig(f"{where}: 'cniVersions' must be a list of strings")
        versions = list(raw_list)
        best = ver.highest(versions)
        if best is not None:
            return best, versions
    raw = obj.get("cniVersion")
    if raw is None or raw == "":
        if versions:
            raise IncompatibleVersion(
                f"{where}: none of cniVersions {versions} is supported (supported: {list(ver.SUPPORTED)})")
        return ver.IMPLICIT, versions
    if not isinstance(raw, str):
        raise InvalidNetworkConfig(f"{where}: 'cniVersion' must be a string", f"got {raw!r}")
    return ver.require_supported(raw), versions


def _plugin(obj: object, where: str) -> PluginConf:
    if not isinstance(obj, dict):
        raise InvalidNetworkConfig(f"{where} must be a JSON object")
    try:
        validate_plugin_type(obj.get("type"))
    except InvalidNetworkConfig as err:
        raise InvalidNetworkConfig(f"{where}: {err.msg}", err.details) from None
    caps = obj.get("capabilities")
    if caps is not None and not isinstance(caps, dict):
        raise InvalidNetworkConfig(f"{where}.capabilities must be an object")
    return PluginConf(raw=obj)


def parse_conflist(data: bytes | str, source: str = "", *, allow_empty: bool = False) -> NetConfList:
    """Parse a ``.conflist``. ``allow_empty`` lets a loader add drop-in plugins afterwards."""
    obj = _decode(data, source)
    where = source or "conflist"
    name = validate_network_name(obj.get("name"))
    version, versions = pick_version(obj, where)
    plugins_raw = obj.get("plugins", [])
    if not isinstance(plugins_raw, list):
        raise InvalidNetworkConfig(f"{where}: 'plugins' must be a list")
    plugins = [_plugin(p, f"{where}: plugins[{i}]") for i, p in enumerate(plugins_raw)]
    conf = NetConfList(
        name=name,
        cni_version=version,
        cni_versions=versions,
        plugins=plugins,
        disable_check=parse_bool(obj.get("disableCheck", False), "disableCheck"),
        disable_gc=parse_bool(obj.get("disableGC", False), "disableGC"),
        load_only_inlined_plugins=parse_bool(obj.get("loadOnlyInlinedPlugins", False),
                                             "loadOnlyInlinedPlugins"),
        raw_bytes=data.encode() if isinstance(data, str) else data,
        source=source,
    )
    if not plugins and not allow_empty:
        raise InvalidNetworkConfig(f"{where}: network {name!r} has no plugins")
    return conf


def parse_conf(data: bytes | str, source: str = "") -> NetConfList:
    """A single-plugin ``.conf`` becomes a list of one, as libcni does."""
    obj = _decode(data, source)
    where = source or "conf"
    name = validate_network_name(obj.get("name"))
    version, versions = pick_version(obj, where)
    plugin = _plugin(obj, where)
    # libcni caches a list built around the single config; keep the original bytes the same way.
    as_list = {"cniVersion": version, "name": name, "plugins": [obj]}
    return NetConfList(name=name, cni_version=version, cni_versions=versions, plugins=[plugin],
                       raw_bytes=json.dumps(as_list).encode(), source=source)


def runtime_config(plugin: PluginConf, capability_args: dict[str, Any]) -> dict[str, Any]:
    """Only the capability args a plugin declares become its ``runtimeConfig``."""
    caps = plugin.capabilities
    return {k: v for k, v in capability_args.items() if caps.get(k) is True}


def plugin_stdin(
    conf: NetConfList,
    plugin: PluginConf,
    *,
    prev_result: dict[str, Any] | None = None,
    capability_args: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """The JSON a plugin reads on stdin: its own object plus the list's name and version,
    ``runtimeConfig`` derived from capabilities, and ``prevResult`` when there is one.

    As the spec says, ``capabilities`` is removed, and ``runtimeConfig`` is exactly the declared
    capabilities the runtime has arguments for (it replaces any static one, as libcni does; a static
    one is left alone when there is nothing to inject)."""
    body = dict(plugin.raw)
    body["cniVersion"] = conf.cni_version
    body["name"] = conf.name
    body.pop("cniVersions", None)
    body.pop("capabilities", None)
    rc = runtime_config(plugin, capability_args or {})
    if rc:
        body["runtimeConfig"] = rc
    if prev_result is not None:
        body["prevResult"] = prev_result
    if extra:
        body.update(extra)
    return json.dumps(body, separators=(",", ":")).encode()
