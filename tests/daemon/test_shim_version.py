"""VERSION is answered by the shim itself: the same answer as each plugin's skel, without importing
the plugin, the skel or the kernel layer (runtimes such as podman ask VERSION of every network on
every container start and stop). No root needed."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnienv import REPO
from podnet.cli.install_cmd import py_shim_name
from podnet.cni import skel
from podnet.daemon import registry

VENV_BIN = REPO / ".venv" / "bin"
PLUGINS = registry.available()
HEAVY = ("podnet.plugins", "podnet.kernel", "podnet.cni.skel", "podnet.ipam", "podnet.runtime")


def _skel_answer(plugin: str) -> object:
    out = io.StringIO()
    assert skel.run(registry.load(plugin), env={"CNI_COMMAND": "VERSION"}, stdin=io.BytesIO(b""), stdout=out,
                    stderr=io.StringIO()) == 0
    return json.loads(out.getvalue())


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "PODNET_"))}
    env.update(CNI_COMMAND="VERSION", PODNET_SOCKET=str(tmp_path / "no-daemon.sock"))
    return env


def _imported(stderr: str) -> list[str]:
    """Module names from ``python -X importtime`` output."""
    return [line.split("|")[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cni")
    subprocess.run([sys.executable, "-m", "podnet.cli.main", "install", "--bin-dir", str(root / "bin"),
                    "--no-conflist", "--python-shims"], check=True, capture_output=True, timeout=60)
    return root / "bin"


@pytest.mark.parametrize("plugin", PLUGINS)
def test_console_script_shim_answers_like_the_skel_and_imports_nothing_heavy(tmp_path: Path,
                                                                             plugin: str) -> None:
    # The plugin names in .venv/bin are links to the native shim; the Python shims sit next to them.
    shim = str(VENV_BIN / py_shim_name(plugin))
    proc = subprocess.run([sys.executable, "-X", "importtime", shim], env=_env(tmp_path),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == _skel_answer(plugin)
    heavy = [m for m in _imported(proc.stderr) if m.startswith(HEAVY)]
    assert heavy == [], heavy


@pytest.mark.parametrize("plugin", PLUGINS)
def test_installed_shim_answers_like_the_skel_and_imports_nothing_heavy(installed: Path, tmp_path: Path,
                                                                       plugin: str) -> None:
    shim = installed / plugin
    proc = subprocess.run([sys.executable, "-X", "importtime", "-IS", str(shim)], env=_env(tmp_path),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == _skel_answer(plugin)
    assert [m for m in _imported(proc.stderr) if m.startswith(HEAVY)] == []
    # The file itself runs the same way (its own "#!PYTHON -IS" line).
    direct = subprocess.run([str(shim)], env=_env(tmp_path), capture_output=True, text=True, timeout=60,
                            check=False)
    assert json.loads(direct.stdout) == _skel_answer(plugin)
