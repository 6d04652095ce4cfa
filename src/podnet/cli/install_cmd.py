"""``podnet install``: put the plugin shims into a CNI bin dir and a network config into a conf dir.

Idempotent: a file whose content is already right is left alone (not even rewritten), anything
else is written to a temporary file and renamed into place, so a runtime executing a plugin at the
same moment sees the old file or the new one, never half of one (and never ETXTBSY).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import subprocess
import sys
from typing import Any

from podnet.cni.errors import CNIError
from podnet.cni.jsonio import load_json
from podnet.daemon.protocol import SOCKET_KEY, SUN_PATH_MAX
from podnet.runtime import netconf_write
from podnet.runtime.netconf_write import CONF_NAME, check_overlaps, write_if_changed

DEFAULT_BIN_DIR = "/opt/cni/bin"
DEFAULT_CONF_DIR = "/etc/cni/net.d"
# Clear of what other software on a node uses by default: podman and containerd's bridge 10.88/16
# (Debian's 87-podman-bridge.conflist) and netavark's 10.89/16 pool, CRI-O's 10.85/16, Kubernetes
# services 10.96/12, flannel and kind 10.244/16, k3s 10.42/16 and 10.43/16, weave 10.32/12, docker
# 172.17/16 and its 172.16/12 and 192.168/16 pools, Calico 192.168/16.
DEFAULT_SUBNET = "10.212.0.0/16"
SHEBANG_MAX = 255  # the kernel reads this much of a "#!" line (BINPRM_BUF_SIZE - 1)

HELP = """\
Install podnet's CNI plugins as shims into BIN_DIR and a network config into CONF_DIR.

Each plugin is a link to podnet-shim, a small native program built here from source with the
machine's C compiler (cc, or $CC), that forwards the call to 'podnet daemon'. When the daemon is
not there it runs the Python shim next to it (podnet-py-NAME), which runs the plugin in-process.
Without a C compiler (or with --python-shims) the plugins are the Python shims themselves: tiny
scripts run with -IS (no site, no user environment), slower to start. Running 'podnet install'
again with the same options changes nothing.

The network config is a bridge network with host-local IPAM (see --network, --subnet, --bridge),
or the file given with --conflist. Use --no-conflist to install only the plugins.
"""


def register(sub: Any) -> None:
    p = sub.add_parser("install", help="install plugin shims and a network config", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin-dir", default=DEFAULT_BIN_DIR,
                   help=f"CNI plugin directory (default {DEFAULT_BIN_DIR})")
    p.add_argument("--conf-dir", default=DEFAULT_CONF_DIR,
                   help=f"CNI config directory (default {DEFAULT_CONF_DIR})")
    p.add_argument("--python", default=sys.executable,
                   help="interpreter the shims run with (default: this one, so they find podnet)")
    p.add_argument("--plugins", help="comma-separated plugin names (default: every podnet plugin)")
    p.add_argument("--python-shims", action="store_true",
                   help="install the Python shims as the plugins; do not build the native shim")
    p.add_argument("--conflist", help="install this .conflist instead of generating one")
    p.add_argument("--no-conflist", action="store_true", help="install the plugins only")
    p.add_argument("--conf-name", default=CONF_NAME, help=f"config file name (default {CONF_NAME})")
    p.add_argument("--network", default="podnet", help="generated config: network name (default podnet)")
    p.add_argument("--subnet", default=DEFAULT_SUBNET,
                   help=f"generated config: pod subnet (default {DEFAULT_SUBNET}); install refuses one that "
                   "overlaps another network in CONF_DIR")
    p.add_argument("--bridge", default="podnet0", help="generated config: bridge name (default podnet0)")
    p.add_argument("--cni-version", default="1.0.0", help="generated config: cniVersion (default 1.0.0)")
    p.add_argument("--data-dir", help="generated config: host-local dataDir (default host-local's own)")
    p.add_argument("--socket", help="generated config: the podnet daemon's socket, written into the plugin's "
                   "config (podnetSocket), so every call reaches it even from a bare environment (default: "
                   "none written; the plugins use $PODNET_SOCKET or /run/podnet/podnet.sock)")
    p.set_defaults(func=run)


def package_root() -> str:
    """The directory that holds the ``podnet`` package (src/ for an editable install)."""
    import podnet

    return os.path.dirname(os.path.dirname(os.path.abspath(podnet.__file__)))


def shim_text(plugin: str, python: str, root: str) -> str:
    # The shim module is imported on its own (its directory first on sys.path, the package root
    # not yet): the podnet package's __init__ modules would cost ~0.3 ms of every call.
    daemon_dir = os.path.join(root, "podnet", "daemon")
    return (
        f"#!{python} -IS\n"
        f"# podnet plugin shim for {plugin}, written by 'podnet install'. It hands the call to the\n"
        "# podnet daemon (socket: $PODNET_SOCKET, default /run/podnet/podnet.sock) and runs the\n"
        "# plugin in-process when the daemon is not there.\n"
        "import sys\n"
        f"sys.path.insert(0, {daemon_dir!r})\n"
        "import shim\n"
        f"sys.path[0] = {root!r}  # for the in-process fallback\n"
        f"shim.main({plugin!r})\n"
    )


def py_shim_name(plugin: str) -> str:
    """Where the native shim finds a plugin's Python shim: podnet-bridge -> podnet-py-bridge."""
    return "podnet-py-" + plugin.removeprefix("podnet-")


def link_if_changed(path: str, target: str) -> str:
    """A symlink ``path`` -> ``target`` (relative), replaced atomically; states as write_if_changed."""
    try:
        current: str | None = os.readlink(path)
    except FileNotFoundError:
        current = None
    except OSError:
        current = ""  # a regular file (a Python shim from an earlier install)
    if current == target:
        return "unchanged"
    directory, name = os.path.split(path)
    tmp = os.path.join(directory or ".", f".podnet-install-{os.getpid()}-{name}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return "installed" if current is None else "updated"


def install_native(bin_dir: str) -> str:
    """Build podnet-shim into ``bin_dir``; its install state. NoCompiler when there is none; a
    failed build raises ValueError with the compiler's output."""
    from podnet.daemon.native import build

    tmp = ""
    try:
        tmp = build.compile_shim(bin_dir)
        with open(tmp, "rb") as f:
            data = f.read()
    except subprocess.CalledProcessError as exc:
        raise ValueError(f"building the native shim failed:\n{exc.stderr}") from None
    finally:
        if tmp:
            os.unlink(tmp)
    return write_if_changed(os.path.join(bin_dir, build.BINARY), data, 0o755)


def install_plugins(ns: argparse.Namespace, python: str, plugins: list[str]) -> None:
    """The native shim and a link to it per plugin, each with its Python shim next to it; or
    (--python-shims, no compiler) the Python shims under the plugins' own names."""
    from podnet.daemon.native import build

    os.makedirs(ns.bin_dir, mode=0o755, exist_ok=True)
    root = package_root()
    native = not ns.python_shims
    if native:
        try:
            print(f"{install_native(ns.bin_dir):9} {os.path.join(ns.bin_dir, build.BINARY)}")
        except build.NoCompiler as exc:
            print(f"podnet install: {exc}: the plugins are the Python shims (slower to start)",
                  file=sys.stderr)
            native = False
    for plugin in plugins:
        text = shim_text(plugin, python, root).encode()
        path = os.path.join(ns.bin_dir, py_shim_name(plugin) if native else plugin)
        print(f"{write_if_changed(path, text, 0o755):9} {path}")
        if native:
            path = os.path.join(ns.bin_dir, plugin)
            print(f"{link_if_changed(path, build.BINARY):9} {path}")


def check_socket(path: str) -> str:
    """The shims' rule for a socket path (an absolute path that fits a sockaddr_un)."""
    if not path.startswith("/") or len(path.encode()) > SUN_PATH_MAX:
        raise ValueError(f"--socket {path!r}: must be an absolute path of at most {SUN_PATH_MAX} bytes")
    return path


def generated_conflist(ns: argparse.Namespace) -> dict[str, Any]:
    subnet = ipaddress.ip_network(ns.subnet, strict=True)
    extra = {SOCKET_KEY: check_socket(ns.socket)} if getattr(ns, "socket", None) else {}
    return netconf_write.conflist(netconf_write.PodNetwork(
        subnets=[subnet], name=ns.network, bridge=ns.bridge,
        cni_version=ns.cni_version, data_dir=ns.data_dir, extra=extra))


def _plugins(ns: argparse.Namespace) -> list[str]:
    from podnet.daemon import registry

    known = registry.available()
    if not ns.plugins:
        return known
    wanted = [n.strip() for n in ns.plugins.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ValueError(f"unknown plugin(s) {', '.join(unknown)}; podnet has {', '.join(known)}")
    return wanted


def _conflist_bytes(ns: argparse.Namespace) -> bytes:
    if ns.conflist:
        with open(ns.conflist, "rb") as f:
            raw = f.read()
        body = load_json(raw, ns.conflist)
        if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not isinstance(
                body.get("plugins"), list):
            raise ValueError(f"{ns.conflist}: not a conflist (needs 'name' and 'plugins')")
        return raw
    return netconf_write.encode(generated_conflist(ns))


def run(ns: argparse.Namespace) -> int:
    try:
        python = os.path.abspath(ns.python)
        if len(f"#!{python} -IS") > SHEBANG_MAX:
            raise ValueError(f"interpreter path {python!r} is too long for a '#!' line")
        plugins = _plugins(ns)
        conflist = None if ns.no_conflist else _conflist_bytes(ns)
        if conflist is not None:
            check_overlaps(conflist, ns.conf_dir, os.path.join(ns.conf_dir, ns.conf_name))
        install_plugins(ns, python, plugins)
        if conflist is not None:
            os.makedirs(ns.conf_dir, mode=0o755, exist_ok=True)
            path = os.path.join(ns.conf_dir, ns.conf_name)
            print(f"{write_if_changed(path, conflist, 0o644):9} {path}")
    except (OSError, ValueError, CNIError) as exc:
        print(f"podnet install: {exc}", file=sys.stderr)
        return 1
    return 0
