"""``podnet cni``: drive a network's plugins like cnitool, with podnet's runtime."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import Any

from podnet.cni.args import parse_cni_args
from podnet.cni.errors import CNIError, InvalidEnvironment
from podnet.runtime.cache import DEFAULT_CACHE_DIR

DEFAULT_CONF_DIR = "/etc/cni/net.d"

HELP = """\
Run a CNI operation for NETWORK (a config in the conf dir) on the namespace NETNS.

  add     attach NETNS; prints the result JSON
  del     detach NETNS (always cleans up, even with a damaged result cache)
  check   verify the attachment made by add (needs cniVersion 0.4.0 or later)
  status  ask each plugin whether it is ready to add (cniVersion 1.1.0 or later); NETNS unused
  gc      remove every cached attachment of NETWORK that is not listed with --valid; NETNS unused

Environment (as cnitool): NETCONFPATH conf dir (default /etc/cni/net.d), CNI_PATH plugin
directories (':'-separated), CNI_ARGS 'K=V;K2=V2', CAP_ARGS capability args as JSON,
CNI_IFNAME interface name (default eth0), CNI_CACHE_DIR cache dir (default /var/lib/cni).
Options override the environment. The container ID defaults to cnitool's:
'cnitool-' + the first 20 hex digits of sha512(absolute NETNS path).

On failure the CNI error JSON is printed on stdout, a readable line on stderr, and the
exit status is 1.
"""


def register(sub: Any) -> None:
    p = sub.add_parser("cni", help="run CNI operations (like cnitool)", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["add", "del", "check", "status", "gc"])
    p.add_argument("network", help="network name (the 'name' in a .conflist/.conf)")
    p.add_argument("netns", nargs="?", default="", help="network namespace path (add/del/check)")
    p.add_argument("--ifname", help="interface name inside the namespace (env CNI_IFNAME, default eth0)")
    p.add_argument("--container-id", help="container ID (default: derived from NETNS, like cnitool)")
    p.add_argument("--conf-dir", help="config directory (env NETCONFPATH)")
    p.add_argument("--conf-file", help="use this .conflist/.conf file instead of searching the conf dir")
    p.add_argument("--cni-path", help="plugin directories, ':'-separated (env CNI_PATH)")
    p.add_argument("--cache-dir", help="result cache directory (env CNI_CACHE_DIR, default /var/lib/cni)")
    p.add_argument("--args", dest="cni_args", help="CNI_ARGS, 'K=V;K2=V2' (env CNI_ARGS)")
    p.add_argument("--cap-args", help="capability args as a JSON object (env CAP_ARGS)")
    p.add_argument("--valid", action="append", default=[], metavar="CONTAINERID:IFNAME",
                   help="gc: an attachment to keep (repeatable)")
    p.set_defaults(func=run)


def absolute(path: str) -> str:
    """The path as Go's ``filepath.Abs`` makes it: absolute and clean. POSIX normalisation keeps a
    leading '//' (``os.path.abspath('//x') == '//x'``); Go's cleaning does not."""
    path = os.path.abspath(path)
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    return path


def default_container_id(netns: str) -> str:
    """cnitool's rule, so podnet and cnitool address the same attachment."""
    digest = hashlib.sha512(absolute(netns).encode()).hexdigest()
    return "cnitool-" + digest[:20]


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's decoder takes NaN and Infinity; Go's does not


def _cap_args(raw: str) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = json.loads(raw, parse_constant=_not_json)
    except (ValueError, RecursionError) as exc:
        raise InvalidEnvironment("CAP_ARGS is not valid JSON", str(exc)) from None
    if not isinstance(value, dict):
        raise InvalidEnvironment("CAP_ARGS must be a JSON object")
    return value


def _valid(items: list[str]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        cid, sep, ifname = item.partition(":")
        if not sep or not cid or not ifname:
            raise InvalidEnvironment(f"--valid {item!r}: expected CONTAINERID:IFNAME")
        out.append((cid, ifname))
    return out


def _execute(ns: argparse.Namespace) -> int:
    from podnet.cni.config import NetConfList
    from podnet.runtime import confdir
    from podnet.runtime.operations import CNIRuntime, RuntimeConf

    env = os.environ
    conf_dir = ns.conf_dir or env.get("NETCONFPATH") or DEFAULT_CONF_DIR
    conf: NetConfList = (confdir.load_file(ns.conf_file) if ns.conf_file
                         else confdir.load_network(conf_dir, ns.network))
    cni_path = ns.cni_path if ns.cni_path is not None else env.get("CNI_PATH", "")
    cache_dir = ns.cache_dir or env.get("CNI_CACHE_DIR") or DEFAULT_CACHE_DIR
    runtime = CNIRuntime([p for p in cni_path.split(os.pathsep) if p], cache_dir)
    if ns.command == "status":
        runtime.status(conf)
        return 0
    if ns.command == "gc":
        others = [] if ns.conf_file else confdir.network_names(conf_dir)
        runtime.gc(conf, _valid(ns.valid), others)
        return 0
    if not ns.netns:
        raise InvalidEnvironment(f"'{ns.command}' needs a network namespace path (NETNS)")
    netns = absolute(ns.netns)
    rt = RuntimeConf(
        container_id=ns.container_id if ns.container_id is not None else default_container_id(netns),
        netns=netns,
        ifname=ns.ifname if ns.ifname is not None else env.get("CNI_IFNAME", "eth0"),
        args=tuple(parse_cni_args(ns.cni_args if ns.cni_args is not None else env.get("CNI_ARGS", ""))),
        capability_args=_cap_args(ns.cap_args if ns.cap_args is not None else env.get("CAP_ARGS", "")),
    )
    if ns.command == "add":
        result = runtime.add(conf, rt)
        print(json.dumps(result.to_json(conf.cni_version), indent=2))
    elif ns.command == "del":
        runtime.delete(conf, rt)
    else:
        runtime.check(conf, rt)
    return 0


def run(ns: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, format="podnet: %(message)s", stream=sys.stderr)
    try:
        return _execute(ns)
    except CNIError as err:
        print(json.dumps(err.to_dict("1.1.0")))
        print(f"podnet cni {ns.command}: error {err.code}: {err}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug in podnet: say so in one line, never a traceback on stdout
        print(json.dumps(CNIError(f"internal error: {type(exc).__name__}: {exc}").to_dict("1.1.0")))
        print(f"podnet cni {ns.command}: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if os.environ.get("PODNET_DEBUG"):
            raise
        return 1
