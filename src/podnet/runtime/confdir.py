"""Loading network configurations from a directory, as libcni does.

Files are read in name order. ``.conflist`` files are searched first, then single-plugin ``.conf`` and
``.json`` files (turned into a list of one). A conflist that does not set ``loadOnlyInlinedPlugins``
may also take drop-in plugin configs from ``<dir>/<network name>/*.conf`` (spec 1.1.0), appended after
its inline plugins; each is a plugin configuration object (a ``type``, no network name needed).
A file that cannot be parsed does not hide the others: it is skipped, and named in the error if
the network is not found.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from podnet.cni.args import validate_network_name, validate_plugin_type
from podnet.cni.config import NetConfList, PluginConf, parse_conf, parse_conflist
from podnet.cni.errors import CNIError, DecodingFailure, InvalidNetworkConfig
from podnet.cni.jsonio import load_json

LIST_EXTENSIONS = (".conflist",)
SINGLE_EXTENSIONS = (".conf", ".json")
MAX_FILE = 1024 * 1024


class NetworkNotFound(InvalidNetworkConfig):
    """No configuration in the directory has the requested network name."""


def conf_files(directory: Path, extensions: tuple[str, ...]) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix in extensions and p.is_file())


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE + 1)
    except OSError as exc:
        raise InvalidNetworkConfig(f"cannot read {path}", exc.strerror or str(exc)) from None
    if len(data) > MAX_FILE:
        raise InvalidNetworkConfig(f"{path} is larger than {MAX_FILE} bytes")
    return data


def _probe(data: bytes) -> tuple[str | None, str]:
    """The network name without full validation, to find the file before parsing it strictly,
    and, when there is no usable name, why (so a not-found error can name the broken file)."""
    try:
        obj = load_json(data, "network configuration")
    except CNIError as exc:
        return None, f"not JSON ({exc.msg}: {exc.details})"
    if not isinstance(obj, dict):
        return None, "not a JSON object"
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return None, "has no network name"
    try:
        validate_network_name(name)
    except CNIError as err:
        return name, str(err)
    return name, ""


def _drop_in_plugin(path: Path) -> PluginConf:
    """A drop-in file is one plugin configuration object: it needs a ``type``, not a network name."""
    data = _read(path)
    obj = load_json(data, f"plugin configuration {path}")
    if not isinstance(obj, dict):
        raise DecodingFailure(f"plugin configuration {path} is not a JSON object")
    try:
        validate_plugin_type(obj.get("type"))
    except CNIError as err:
        raise InvalidNetworkConfig(f"{path}: {err.msg}", err.details) from None
    if obj.get("capabilities") is not None and not isinstance(obj["capabilities"], dict):
        raise InvalidNetworkConfig(f"{path}: 'capabilities' must be an object")
    return PluginConf(raw=obj)


def _drop_in_plugins(directory: Path, name: str) -> list[PluginConf]:
    return [_drop_in_plugin(path) for path in conf_files(directory / name, (".conf",))]


def _matching(directory: Path, extensions: tuple[str, ...], name: str,
              broken: list[str]) -> Iterator[tuple[Path, bytes]]:
    """Files (in name order) whose network name is ``name``; unreadable ones go to ``broken``."""
    for path in conf_files(directory, extensions):
        try:
            data = _read(path)
        except CNIError as err:
            broken.append(str(err))
            continue
        found, problem = _probe(data)
        if found == name:
            yield path, data
        elif problem:
            broken.append(f"{path}: {problem}")


def load_network(directory: str | Path, name: str) -> NetConfList:
    """The network called ``name`` from ``directory``; raises ``NetworkNotFound`` naming bad files."""
    directory = Path(directory)
    broken: list[str] = []
    for path, data in _matching(directory, LIST_EXTENSIONS, name, broken):
        conf = parse_conflist(data, str(path), allow_empty=True)
        if not conf.load_only_inlined_plugins:
            conf.plugins.extend(_drop_in_plugins(directory, name))
        if not conf.plugins:
            raise InvalidNetworkConfig(f"{path}: network {name!r} has no plugins")
        return conf
    for path, data in _matching(directory, SINGLE_EXTENSIONS, name, broken):
        return parse_conf(data, str(path))
    if not directory.is_dir():
        raise NetworkNotFound(f"network {name!r} not found: config directory {directory} does not exist")
    raise NetworkNotFound(f"network {name!r} not found in {directory}",
                          f"skipped broken files: {'; '.join(broken)}" if broken else "")


def load_file(path: str | Path) -> NetConfList:
    """A network from an explicit file: ``.conflist`` as a list, anything else as a single config."""
    path = Path(path)
    data = _read(path)
    try:
        if path.suffix in LIST_EXTENSIONS:
            return parse_conflist(data, str(path))
        return parse_conf(data, str(path))
    except RecursionError:  # the JSON decoder recurses once per nesting level
        raise DecodingFailure(f"cannot parse network configuration {path}", "nested too deeply") from None


def network_names(directory: str | Path) -> list[str]:
    """Names of every readable network in ``directory`` (GC uses them to tell prefixes apart)."""
    names = []
    for path in conf_files(Path(directory), LIST_EXTENSIONS + SINGLE_EXTENSIONS):
        try:
            name, problem = _probe(_read(path))
        except CNIError:
            continue
        if name is not None and not problem:
            names.append(name)
    return names
