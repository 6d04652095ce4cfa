"""The plugin skeleton: the only code that reads a plugin's environment and stdin.

A plugin is a set of plain functions (``add(args) -> Result``, ``delete(args)``, ``check(args)``,
``status(args)``, ``gc(args)``). ``run`` validates the invocation, checks versions, dispatches, prints
the result or the error JSON and returns the exit code. No traceback ever reaches stdout: an
unexpected exception becomes error 999 with a one-line message (the traceback goes to stderr only
when ``PODNET_DEBUG`` is set).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from podnet.cni import version as ver
from podnet.cni.args import (
    parse_cni_args,
    pod_netns,
    validate_container_id,
    validate_ifname,
    validate_network_name,
)
from podnet.cni.attachments import ValidAttachments
from podnet.cni.config import VALID_ATTACHMENTS_KEY
from podnet.cni.errors import (
    CNIError,
    DecodingFailure,
    IncompatibleVersion,
    InternalError,
    InvalidEnvironment,
    InvalidNetworkConfig,
    IOFailure,
)
from podnet.cni.jsonio import load_json
from podnet.cni.result import Result

COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION")
# Which variables each command requires (CNI_NETNS is optional for DEL: the pod may be gone;
# CNI_PATH is optional for STATUS in spec 1.1.0).
_REQUIRED: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "STATUS": (),
    "GC": ("CNI_PATH",),
    "VERSION": (),
}
MAX_STDIN = 4 * 1024 * 1024
# libcni 1.2 also sends the attachments under this name (the key was misspelled in an earlier draft).
_LEGACY_ATTACHMENTS_KEY = "cni.dev/attachments"


@dataclass
class CmdArgs:
    command: str
    container_id: str
    netns: str
    ifname: str
    args: list[tuple[str, str]]
    path: list[str]
    stdin_data: bytes
    conf: dict[str, Any]
    cni_version: str
    env: Mapping[str, str] = field(default_factory=dict)
    # Where a plugin reports what does not fail the call (a rollback step that failed): the
    # skel's stream, so the daemon gets each request's messages without touching sys.stderr.
    stderr: IO[str] = field(default_factory=lambda: sys.stderr)

    @property
    def prev_result(self) -> Result | None:
        raw = self.conf.get("prevResult")
        if raw is None:
            return None
        return Result.from_json(raw, default_version=self.cni_version)

    @property
    def valid_attachments(self) -> list[tuple[str, str]]:
        """GC's list of (containerID, ifname) pairs that must be kept."""
        raw = self.conf.get(VALID_ATTACHMENTS_KEY)
        if raw is None:
            raw = self.conf.get(_LEGACY_ATTACHMENTS_KEY)
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise InvalidNetworkConfig(f"'{VALID_ATTACHMENTS_KEY}' must be a list", f"got {raw!r}")
        out = []
        for i, item in enumerate(raw):
            if (not isinstance(item, dict) or not isinstance(item.get("containerID"), str)
                    or not isinstance(item.get("ifname", ""), str)):
                raise InvalidNetworkConfig(
                    f"'{VALID_ATTACHMENTS_KEY}'[{i}] must be an object with string containerID and ifname",
                    f"got {item!r}")
            out.append((item["containerID"], item.get("ifname", "")))
        return out

    @property
    def attachments_to_keep(self) -> ValidAttachments:
        """GC's valid attachments as the one shared definition of what must be kept."""
        return ValidAttachments.of(self.valid_attachments)

    def arg(self, key: str, default: str = "") -> str:
        """A CNI_ARGS value (last one wins)."""
        value = default
        for k, v in self.args:
            if k == key:
                value = v
        return value


@dataclass
class Plugin:
    add: Callable[[CmdArgs], Result]
    delete: Callable[[CmdArgs], None]
    check: Callable[[CmdArgs], None] | None = None
    status: Callable[[CmdArgs], None] | None = None
    gc: Callable[[CmdArgs], None] | None = None
    supported_versions: tuple[str, ...] = ver.SUPPORTED
    about: str = ""


def _require_env(env: Mapping[str, str], command: str) -> None:
    missing = [k for k in _REQUIRED[command] if not env.get(k)]
    if missing:
        raise InvalidEnvironment(f"required environment variables missing: {', '.join(missing)}")


def _read_conf(stdin_data: bytes) -> dict[str, Any]:
    if len(stdin_data) > MAX_STDIN:
        raise DecodingFailure(f"network configuration on stdin is larger than {MAX_STDIN} bytes")
    conf = load_json(stdin_data, "network configuration on stdin")
    if not isinstance(conf, dict):
        raise DecodingFailure("network configuration on stdin is not a JSON object")
    return conf


def _conf_version(conf: dict[str, Any], plugin: Plugin) -> str:
    raw = conf.get("cniVersion")
    if raw is None or raw == "":
        raw = ver.IMPLICIT
    if not isinstance(raw, str):
        raise InvalidNetworkConfig("'cniVersion' must be a string")
    version = ver.require_supported(raw, plugin.supported_versions)
    return version


def _check_command_version(command: str, version: str) -> None:
    if command == "CHECK" and not ver.allows_check(version):
        raise IncompatibleVersion(f"config version {version} does not allow CHECK (needs 0.4.0 or later)")
    if command in ("STATUS", "GC") and not ver.allows_status_and_gc(version):
        raise IncompatibleVersion(f"config version {version} does not allow {command} (needs 1.1.0 or later)")


def build_args(env: Mapping[str, str], stdin_data: bytes, plugin: Plugin,
               stderr: IO[str] | None = None, netns: str | None = None) -> CmdArgs:
    command = env.get("CNI_COMMAND", "")
    if not command:
        raise InvalidEnvironment("required environment variables missing: CNI_COMMAND")
    if command not in COMMANDS:
        raise InvalidEnvironment(f"unknown CNI_COMMAND {command!r}; expected one of {', '.join(COMMANDS)}")
    _require_env(env, command)
    container_id = env.get("CNI_CONTAINERID", "")
    ifname = env.get("CNI_IFNAME", "")
    if command in ("ADD", "DEL", "CHECK"):
        validate_container_id(container_id)
        validate_ifname(ifname)
    if netns is None:
        netns = pod_netns(command, env.get("CNI_NETNS", ""))
    conf = _read_conf(stdin_data)
    validate_network_name(conf.get("name"))
    version = _conf_version(conf, plugin)
    _check_command_version(command, version)
    return CmdArgs(
        command=command,
        container_id=container_id,
        netns=netns,
        ifname=ifname,
        args=parse_cni_args(env.get("CNI_ARGS", "")),
        path=[p for p in env.get("CNI_PATH", "").split(os.pathsep) if p],
        stdin_data=stdin_data,
        conf=conf,
        cni_version=version,
        env=env,
        stderr=sys.stderr if stderr is None else stderr,
    )


def _emit(stream: IO[str], obj: dict[str, Any]) -> None:
    stream.write(json.dumps(obj))
    stream.write("\n")
    stream.flush()


def _dispatch(plugin: Plugin, args: CmdArgs, stdout: IO[str]) -> None:
    if args.command == "ADD":
        result = plugin.add(args)
        _emit(stdout, result.to_json(args.cni_version))
        return
    handlers = {"DEL": plugin.delete, "CHECK": plugin.check, "STATUS": plugin.status, "GC": plugin.gc}
    handler = handlers[args.command]
    if handler is not None:
        handler(args)


def _one_line(exc: BaseException) -> str:
    """``Type: message`` on one line, so a multi-line exception text cannot spread over the output."""
    text = " ".join(str(exc).split())
    if len(text) > 500:
        text = text[:497] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _read_stdin(stdin: IO[bytes] | None) -> bytes:
    try:
        return (sys.stdin.buffer if stdin is None else stdin).read(MAX_STDIN + 1)
    except OSError as exc:
        raise IOFailure("cannot read network configuration from stdin", _one_line(exc)) from None


def _guess_version(stdin_data: bytes) -> str:
    """The version to write an error in: the config's, when it can be read at all."""
    try:
        raw = load_json(stdin_data, "network configuration").get("cniVersion")
        if isinstance(raw, str) and ver.is_supported(raw):
            return ver.normalize(raw)
    except Exception:
        pass
    return ver.CURRENT


def run(
    plugin: Plugin,
    *,
    env: Mapping[str, str] | None = None,
    stdin: IO[bytes] | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    netns: str | None = None,
) -> int:
    """Run one invocation; returns the process exit code (0 on success, 1 on a CNI error).

    ``netns``: the pod's namespace as the caller handed it over, used instead of CNI_NETNS (the
    daemon passes the namespace the shim opened; "" for none). Given, it is the plugin's as is:
    whoever passes it has checked it (podnet.daemon.netns_fd)."""
    env = os.environ if env is None else env
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    stdin_data = b""
    try:
        if env.get("CNI_COMMAND") == "VERSION":
            _emit(stdout, ver.version_info(plugin.supported_versions))
            return 0
        stdin_data = _read_stdin(stdin)
        _dispatch(plugin, build_args(env, stdin_data, plugin, stderr, netns), stdout)
        return 0
    except CNIError as err:
        if not env.get("CNI_COMMAND") and plugin.about:
            # Someone ran the plugin by hand: say what it is (the Go skel does the same).
            stderr.write(f"{plugin.about}\nCNI protocol versions supported: "
                         f"{', '.join(plugin.supported_versions)}\n")
        _emit(stdout, err.to_dict(_guess_version(stdin_data)))
        return 1
    except Exception as exc:
        if env.get("PODNET_DEBUG"):
            traceback.print_exc(file=stderr)
        internal = InternalError(f"internal error: {_one_line(exc)}")
        _emit(stdout, internal.to_dict(_guess_version(stdin_data)))
        return 1


def main(plugin: Plugin) -> None:
    sys.exit(run(plugin))
