"""The shim's environment knobs: a bad value is CNI error 4 naming the variable and the value, on
stdout, exit 1, at once; never a traceback, never a silent default. No root needed: a listening unix
socket in tmp stands in for the daemon (it accepts nothing and answers nothing)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cnienv import REPO

SHIM = str(REPO / ".venv" / "bin" / "podnet-loopback")
CONF = '{"cniVersion": "1.1.0", "name": "lo", "type": "podnet-loopback"}'

BAD = [
    ("PODNET_SHIM_TIMEOUT", "nan"),
    ("PODNET_SHIM_TIMEOUT", "-1"),
    ("PODNET_SHIM_TIMEOUT", "0"),
    ("PODNET_SHIM_TIMEOUT", "inf"),
    ("PODNET_SHIM_TIMEOUT", "1e400"),
    ("PODNET_SHIM_TIMEOUT", "1e12"),
    ("PODNET_SHIM_TIMEOUT", "abc"),
    ("PODNET_SHIM_REDO", "maybe"),
    ("PODNET_SOCKET", "relative/podnet.sock"),
    ("PODNET_SOCKET", "/" + "s" * 200),
]


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "d.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(path)
        s.listen(8)
        yield path


def _shim(env_over: dict[str, str], command: str = "CHECK") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "PODNET_"))}
    env.update(CNI_COMMAND=command, CNI_CONTAINERID="c1", CNI_IFNAME="lo", CNI_PATH="/nowhere",
               CNI_NETNS="/run/netns/podnet-no-such-ns", **env_over)
    return subprocess.run([SHIM], input=CONF, env=env, capture_output=True, text=True, timeout=10,
                          check=False)


@pytest.mark.parametrize(("name", "value"), BAD)
@pytest.mark.parametrize("daemon", [True, False], ids=["daemon-listening", "no-daemon"])
@pytest.mark.parametrize("command", ["CHECK", "VERSION"])
def test_bad_knob_is_code_4_naming_it(listening: str, tmp_path: Path, name: str, value: str, daemon: bool,
                                      command: str) -> None:
    env = {"PODNET_SOCKET": listening if daemon else str(tmp_path / "none.sock"), "PODNET_SHIM_TIMEOUT": "2",
           name: value}
    proc = _shim(env, command)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    err = json.loads(proc.stdout)
    assert err["code"] == 4 and name in err["msg"] and value[:40] in err["msg"], err


@pytest.mark.parametrize(("name", "value"), [("PODNET_SHIM_TIMEOUT", "0.5"), ("PODNET_SHIM_TIMEOUT", ""),
                                             ("PODNET_SHIM_REDO", "0"), ("PODNET_SHIM_REDO", "yes"),
                                             ("PODNET_SOCKET", "")])
def test_good_knobs_are_taken(tmp_path: Path, name: str, value: str) -> None:
    env = {"PODNET_SOCKET": str(tmp_path / "none.sock"), name: value}
    proc = _shim(env, "VERSION")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "supportedVersions" in json.loads(proc.stdout)
