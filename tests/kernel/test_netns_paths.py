"""CNI_NETNS paths that are not network namespaces: each gets a typed CNI error with a clear message,
at once (a FIFO must not block the plugin, /dev/tty must not become its terminal), through
``NetnsHandle.open``, through ``skel.run`` and through a plugin executable.

Codes: 3 (unknown container) when there certainly is no namespace at the path (missing, a path
component that is a file, a file that is not a namespace); 999 when the path cannot be looked at
(symlink loop, too long, permission), the code the Go plugins give for a namespace they cannot open.
Every plugin call runs inside a "node" namespace the test made, each with a timeout so a hang fails.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cnienv import REPO
from nsutil import Netns
from podnet.kernel import NetnsHandle
from podnet.kernel.errors import KernelError

pytestmark = pytest.mark.root

LOOPBACK = str(REPO / ".venv" / "bin" / "podnet-loopback")
TIMEOUT = 20


@dataclass(frozen=True)
class Case:
    name: str
    code: int
    says: str


CASES = [
    Case("fifo", 3, "FIFO"),
    Case("tty", 3, "character device"),
    Case("directory", 3, "directory"),
    Case("regular-file", 3, "not a namespace"),
    Case("missing", 3, "not found"),
    Case("under-a-file", 3, "not found"),
    Case("symlink-loop", 999, "symbolic links"),
    Case("too-long", 999, "too long"),
]


@pytest.fixture
def paths(tmp_path: Path) -> Iterator[dict[str, str]]:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    regular = tmp_path / "regular"
    regular.write_text("")
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "loop")
    yield {
        "fifo": str(fifo), "tty": "/dev/tty", "directory": str(tmp_path), "regular-file": str(regular),
        "missing": str(tmp_path / "missing"), "under-a-file": str(regular / "x"), "symlink-loop": str(loop),
        "too-long": "/" + "x" * 10_000,
    }


_OPEN = r"""
import os, sys
from podnet.kernel import NetnsHandle
from podnet.kernel.errors import KernelError
if len(sys.argv) > 2:
    os.setuid(int(sys.argv[2]))
try:
    NetnsHandle.open(sys.argv[1])
except KernelError as e:
    print(type(e).__name__, e.code, e)
"""


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_open_refuses_at_once_with_a_typed_error(node: Netns, paths: dict[str, str], case: Case) -> None:
    proc = node.run([sys.executable, "-c", _OPEN, paths[case.name]], timeout=TIMEOUT)
    kind, code, msg = proc.stdout.split(" ", 2)
    assert kind == ("NetnsNotFound" if case.code == 3 else "NetnsUnusable"), proc.stdout
    assert int(code) == case.code and case.says in msg, proc.stdout
    assert paths[case.name][:50] in msg  # the path is named (a long one shortened)
    assert len(msg) < 1000


_SKEL = r"""
import io, json, sys
from podnet.cni import skel
from podnet.daemon import registry
env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "lo", "CNI_PATH": "/nowhere",
       "CNI_NETNS": sys.argv[1]}
out = io.StringIO()
conf = b'{"cniVersion": "1.1.0", "name": "lo", "type": "podnet-loopback"}'
code = skel.run(registry.load("podnet-loopback"), env=env, stdin=io.BytesIO(conf), stdout=out,
                stderr=io.StringIO())
print(code, out.getvalue().strip())
"""


def _check(stdout: str, case: Case, path: str) -> None:
    err = json.loads(stdout)
    assert err["code"] == case.code, err
    assert case.says in err["msg"] and path[:50] in err["msg"], err
    assert "internal error" not in err["msg"] and "OSError" not in err["msg"], err


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_skel_run_reports_it(node: Netns, paths: dict[str, str], case: Case) -> None:
    proc = node.run([sys.executable, "-c", _SKEL, paths[case.name]], timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stderr
    code, out = proc.stdout.split(" ", 1)
    assert code == "1"
    _check(out, case, paths[case.name])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_plugin_executable_reports_it(node: Netns, paths: dict[str, str], case: Case) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update(CNI_COMMAND="ADD", CNI_CONTAINERID="c1", CNI_IFNAME="lo", CNI_PATH="/nowhere",
               CNI_NETNS=paths[case.name], PODNET_SOCKET="/nonexistent/podnet.sock")
    proc = node.run([LOOPBACK], input='{"cniVersion": "1.1.0", "name": "lo", "type": "podnet-loopback"}',
                    env=env, timeout=TIMEOUT, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    _check(proc.stdout, case, paths[case.name])


def test_permission_denied_is_typed(node: Netns, tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    proc = node.run([sys.executable, "-c", _OPEN, str(private / "ns"), "65534"], timeout=TIMEOUT)
    kind, code, msg = proc.stdout.split(" ", 2)
    assert (kind, code) == ("PermissionDenied", "999") and "permission denied" in msg, proc.stdout


def test_a_real_namespace_still_opens(node: Netns) -> None:
    with NetnsHandle.open(node.path) as h:
        assert h.identity()[1] > 0
    with pytest.raises(KernelError):
        NetnsHandle.open("/proc/self/ns/uts")  # a namespace, not a network one
