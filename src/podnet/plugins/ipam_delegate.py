"""Running a plugin's ``ipam`` section: podnet's own IPAM in-process, any other IPAM as an executable.

The bridge and routed plugins call ``ipam_add(args)`` etc. with their own ``CmdArgs``. When
``ipam.type`` is ``podnet-host-local`` or ``podnet-static`` the IPAM functions run in this process
(no fork/exec, no JSON round trip); for any other type the executable of that name is looked up on
``CNI_PATH`` and run with the caller's environment (``CNI_COMMAND`` set to the operation) and the same
network configuration on stdin, as the reference ``invoke.Delegate*`` functions do. Errors come back
as the IPAM plugin's ``CNIError`` either way.

An exec'd IPAM runs under :data:`exec_timeout` (seconds; the daemon sets it from its own
configuration): a hanging one is killed with its whole process group and the call fails with
CNI error 11 (try again later) instead of holding the caller forever.

``conf`` overrides the configuration (for a caller that edits it before delegating); by default the
caller's stdin is passed on byte for byte.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from podnet.cni import skel
from podnet.cni.errors import InvalidNetworkConfig
from podnet.cni.result import Result
from podnet.plugins import host_local, static
from podnet.runtime.invoke import Exec, Invocation, RealExec, decode_output

exec_timeout: float = 60.0

IN_PROCESS: dict[str, skel.Plugin] = {
    "podnet-host-local": host_local.PLUGIN,
    "podnet-static": static.PLUGIN,
}


def ipam_type(conf: dict[str, Any]) -> str:
    ipam = conf.get("ipam")
    if not isinstance(ipam, dict):
        raise InvalidNetworkConfig("network configuration has no 'ipam' object")
    kind = ipam.get("type")
    if not isinstance(kind, str) or not kind:
        raise InvalidNetworkConfig("ipam has no 'type'", f"got {kind!r}")
    return kind


def _for_command(args: skel.CmdArgs, command: str, conf: dict[str, Any] | None) -> skel.CmdArgs:
    if conf is None:
        return dataclasses.replace(args, command=command)
    return dataclasses.replace(args, command=command, conf=conf, stdin_data=json.dumps(conf).encode())


def _exec(args: skel.CmdArgs, kind: str, runner: Exec | None) -> bytes:
    runner = runner if runner is not None else RealExec(environ=args.env or None, timeout=exec_timeout)
    plugin = runner.find(kind, args.path)
    inv = Invocation(command=args.command, container_id=args.container_id, netns=args.netns,
                     ifname=args.ifname, args=tuple(args.args), path=tuple(args.path))
    return runner.run(plugin, inv, args.stdin_data)


def ipam_add(args: skel.CmdArgs, conf: dict[str, Any] | None = None, *,
             runner: Exec | None = None) -> Result:
    call = _for_command(args, "ADD", conf)
    kind = ipam_type(call.conf)
    plugin = IN_PROCESS.get(kind)
    if plugin is not None:
        return plugin.add(call)
    out = _exec(call, kind, runner)
    return Result.from_json(decode_output(kind, out), default_version=call.cni_version)


def _run(command: str, args: skel.CmdArgs, conf: dict[str, Any] | None, runner: Exec | None) -> None:
    call = _for_command(args, command, conf)
    kind = ipam_type(call.conf)
    plugin = IN_PROCESS.get(kind)
    if plugin is None:
        _exec(call, kind, runner)
        return
    handler = {"DEL": plugin.delete, "CHECK": plugin.check, "STATUS": plugin.status, "GC": plugin.gc}[command]
    if handler is not None:
        handler(call)


def ipam_del(args: skel.CmdArgs, conf: dict[str, Any] | None = None, *,
             runner: Exec | None = None) -> None:
    _run("DEL", args, conf, runner)


def ipam_check(args: skel.CmdArgs, conf: dict[str, Any] | None = None, *,
               runner: Exec | None = None) -> None:
    _run("CHECK", args, conf, runner)


def ipam_status(args: skel.CmdArgs, conf: dict[str, Any] | None = None, *,
                runner: Exec | None = None) -> None:
    _run("STATUS", args, conf, runner)


def ipam_gc(args: skel.CmdArgs, conf: dict[str, Any] | None = None, *,
            runner: Exec | None = None) -> None:
    _run("GC", args, conf, runner)
