"""Building the native shim: the one place that turns ``podnet-shim.c`` into an executable.

Every constant the C program shares with the Python side is passed here as a ``-D`` definition
taken from :mod:`podnet.daemon.protocol`, :mod:`podnet.daemon.shim` and
:mod:`podnet.cni.spec_versions`: the wire format and the VERSION answer have one definition, and
the C source refuses to compile without them. Used by ``podnet install`` (and so by ``make``
through scripts/build-shim.sh) and by the tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from podnet.cni.spec_versions import version_json
from podnet.daemon import protocol as p
from podnet.daemon import shim

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "podnet-shim.c")
BINARY = "podnet-shim"
# Warnings are errors: the shim is the one piece of podnet a runtime executes natively.
CFLAGS = ("-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-Wshadow", "-Wconversion", "-Wformat=2",
          "-Wstrict-prototypes", "-Wmissing-prototypes", "-Wvla", "-fstack-protector-strong",
          "-D_FORTIFY_SOURCE=2")


class NoCompiler(Exception):
    """No C compiler on this machine: the Python shims stay."""


def c_string(text: str) -> str:
    """A C string literal for ``text`` (ASCII)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def definitions() -> list[str]:
    values = {
        "PN_REQUEST_MAGIC": c_string(p.REQUEST_MAGIC.decode()),
        "PN_RESPONSE_MAGIC": c_string(p.RESPONSE_MAGIC.decode()),
        "PN_KIND_RAN": c_string(p.KIND_RAN.decode()),
        "PN_KIND_REFUSED": c_string(p.KIND_REFUSED.decode()),
        "PN_MAX_STDIN": f"{p.MAX_STDIN}u",
        "PN_MAX_ENV_BYTES": f"{p.MAX_ENV_BYTES}u",
        "PN_MAX_FIELDS": f"{p.MAX_FIELDS}u",
        "PN_MAX_RESPONSE_BODY": f"{p.MAX_RESPONSE_BODY}u",
        "PN_DEFAULT_SOCKET": c_string(p.DEFAULT_SOCKET),
        "PN_SOCKET_KEY": c_string(p.SOCKET_KEY),
        "PN_SUN_PATH_MAX": str(p.SUN_PATH_MAX),
        "PN_VERSION_JSON": c_string(version_json()),
        "PN_CONNECT_TIMEOUT": repr(float(shim.CONNECT_TIMEOUT)),
        "PN_DEFAULT_TIMEOUT": repr(float(shim.DEFAULT_TIMEOUT)),
        "PN_MAX_TIMEOUT": repr(float(shim.MAX_TIMEOUT)),
    }
    return [f"-D{name}={value}" for name, value in values.items()]


def find_compiler() -> str:
    """$CC, else cc or gcc on PATH (the path found); NoCompiler if there is none."""
    wanted = os.environ.get("CC") or ""
    cc = shutil.which(wanted) if wanted else shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise NoCompiler(f"no C compiler ({wanted or 'cc or gcc'}) found")
    return cc


def compile_shim(directory: str, cc: str | None = None) -> str:
    """Compile into a temporary file in ``directory``; its path (the caller renames it into place).
    OSError or subprocess.CalledProcessError (with the compiler's output) on failure."""
    compiler = cc or find_compiler()
    fd, out = tempfile.mkstemp(prefix=".podnet-shim-", dir=directory)
    os.close(fd)
    argv = [compiler, *CFLAGS, *definitions(), "-o", out, SOURCE]
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120)
    except BaseException:
        os.unlink(out)
        raise
    os.chmod(out, 0o755)
    return out
