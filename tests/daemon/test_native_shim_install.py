"""``podnet install`` builds the native shim from source, links every plugin to it and keeps the
Python shims next to it; without a C compiler the Python shims are the plugins and install says so.
No root needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from podnet.cli.install_cmd import py_shim_name
from podnet.daemon import registry
from podnet.daemon.native import build
from podnet.daemon.protocol import SOCKET_KEY


def _install(bin_dir: Path, *extra: str,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "podnet.cli.main", "install", "--bin-dir", str(bin_dir), "--no-conflist",
            *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, env=env)


def _states(proc: subprocess.CompletedProcess[str]) -> dict[str, str]:
    return {Path(path).name: state for state, path in (line.split() for line in proc.stdout.splitlines())}


def test_native_install_links_every_plugin_to_one_binary_then_changes_nothing(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    first = _install(bin_dir)
    plugins = registry.available()
    assert first.returncode == 0, first.stderr
    assert set(_states(first).values()) == {"installed"}
    assert set(_states(first)) == {build.BINARY, *plugins, *map(py_shim_name, plugins)}
    for plugin in plugins:
        assert os.readlink(bin_dir / plugin) == build.BINARY
        assert f"main({plugin!r})" in (bin_dir / py_shim_name(plugin)).read_text()
    assert (bin_dir / build.BINARY).read_bytes()[:4] == b"\x7fELF"
    before = {p.name: p.lstat().st_mtime_ns for p in bin_dir.iterdir()}
    again = _install(bin_dir)
    assert set(_states(again).values()) == {"unchanged"}, again.stdout
    assert before == {p.name: p.lstat().st_mtime_ns for p in bin_dir.iterdir()}


def test_switching_between_native_and_python_shims_never_writes_through_a_link(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    assert _install(bin_dir, "--plugins", "podnet-loopback").returncode == 0
    binary = (bin_dir / build.BINARY).read_bytes()
    to_python = _install(bin_dir, "--plugins", "podnet-loopback", "--python-shims")
    assert _states(to_python) == {"podnet-loopback": "updated"}, to_python.stdout
    assert not (bin_dir / "podnet-loopback").is_symlink()
    assert (bin_dir / build.BINARY).read_bytes() == binary  # the link was replaced, not written through
    back = _install(bin_dir, "--plugins", "podnet-loopback")
    assert _states(back)["podnet-loopback"] == "updated"
    assert os.readlink(bin_dir / "podnet-loopback") == build.BINARY
    assert not [p for p in bin_dir.iterdir() if p.name.startswith(".")]  # no temp files left


def test_without_a_c_compiler_the_python_shims_stay_and_install_says_so(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path / "empty"), "CC": ""}
    proc = _install(tmp_path / "bin", "--plugins", "podnet-loopback", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "no C compiler" in proc.stderr and "Python shims" in proc.stderr
    assert _states(proc) == {"podnet-loopback": "installed"}
    assert (tmp_path / "bin" / "podnet-loopback").read_text().startswith("#!")


def test_a_failing_build_fails_install_with_the_compilers_words(tmp_path: Path) -> None:
    fake = tmp_path / "cc"
    fake.write_text("#!/bin/sh\necho 'podnet-shim.c:1: error: pretend' >&2\nexit 1\n")
    fake.chmod(0o755)
    proc = _install(tmp_path / "bin", env={**os.environ, "CC": str(fake)})
    assert proc.returncode == 1 and "building the native shim failed" in proc.stderr
    assert "pretend" in proc.stderr and not (tmp_path / "bin" / "podnet-bridge").exists()
    assert not [p for p in (tmp_path / "bin").iterdir()]  # no temp file left


def test_install_socket_goes_into_the_generated_config(tmp_path: Path) -> None:
    conf_dir = tmp_path / "conf"
    argv = [sys.executable, "-m", "podnet.cli.main", "install", "--bin-dir", str(tmp_path / "bin"),
            "--python-shims", "--conf-dir", str(conf_dir), "--socket", "/run/podnet/custom.sock"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    conf = json.loads((conf_dir / "10-podnet.conflist").read_text())
    assert conf["plugins"][0][SOCKET_KEY] == "/run/podnet/custom.sock"
    bad = subprocess.run([*argv[:-1], "relative.sock"], capture_output=True, text=True, timeout=120,
                         check=False)
    assert bad.returncode == 1 and "--socket 'relative.sock'" in bad.stderr
