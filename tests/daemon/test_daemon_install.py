"""``podnet install`` (no namespaces): what it writes, idempotence, atomic replacement, bad input;
and that the shims it writes really start with ``-IS`` and fall back in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from podnet.cli import install_cmd
from podnet.cli.main import main as podnet_main
from podnet.daemon import registry


def _dirs(tmp_path: Path) -> list[str]:
    return ["install", "--bin-dir", str(tmp_path / "bin"), "--conf-dir", str(tmp_path / "conf")]


def _install(capsys: pytest.CaptureFixture[str], tmp_path: Path, *extra: str) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as exit_info:
        podnet_main([*_dirs(tmp_path), *extra])
    out = capsys.readouterr().out.splitlines()
    return int(exit_info.value.code or 0), out


def test_installs_every_plugin_and_a_conflist_then_changes_nothing(capsys: pytest.CaptureFixture[str],
                                                                  tmp_path: Path) -> None:
    code, out = _install(capsys, tmp_path, "--subnet", "10.55.0.0/16", "--data-dir", "/var/lib/x")
    assert code == 0
    plugins = registry.available()
    assert {"podnet-bridge", "podnet-host-local", "podnet-loopback", "podnet-static"} <= set(plugins)
    assert [line.split() for line in out] == [["installed", str(tmp_path / "bin" / p)] for p in plugins] + [
        ["installed", str(tmp_path / "conf" / "10-podnet.conflist")]]
    shim = tmp_path / "bin" / "podnet-bridge"
    text = shim.read_text()
    assert text.startswith(f"#!{os.path.abspath(sys.executable)} -IS\n") and "main('podnet-bridge')" in text
    assert shim.stat().st_mode & 0o777 == 0o755
    conf = json.loads((tmp_path / "conf" / "10-podnet.conflist").read_text())
    assert conf["plugins"][0]["type"] == "podnet-bridge"
    assert conf["plugins"][0]["ipam"] == {
        "type": "podnet-host-local", "ranges": [[{"subnet": "10.55.0.0/16"}]],
        "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "/var/lib/x"}
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "bin").iterdir()}
    code, out = _install(capsys, tmp_path, "--subnet", "10.55.0.0/16", "--data-dir", "/var/lib/x")
    assert code == 0 and {line.split()[0] for line in out} == {"unchanged"}
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "bin").iterdir()}  # not even rewritten


def test_changed_files_are_replaced_atomically(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _install(capsys, tmp_path, "--plugins", "podnet-loopback", "--no-conflist")
    shim = tmp_path / "bin" / "podnet-loopback"
    inode = shim.stat().st_ino
    shim.write_text("#!/bin/sh\necho tampered\n")
    shim.chmod(0o700)
    code, out = _install(capsys, tmp_path, "--plugins", "podnet-loopback", "--no-conflist")
    assert code == 0 and out == [f"updated   {shim}"]
    assert shim.stat().st_ino != inode and "main('podnet-loopback')" in shim.read_text()  # renamed into place
    assert [p.name for p in (tmp_path / "bin").iterdir()] == ["podnet-loopback"]  # no temp file left
    assert not (tmp_path / "conf").exists()


def test_conflist_from_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    src = tmp_path / "mine.conflist"
    src.write_text('{"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "podnet-loopback"}]}')
    code, _ = _install(capsys, tmp_path, "--conflist", str(src), "--plugins", "podnet-loopback")
    assert code == 0 and (tmp_path / "conf" / "10-podnet.conflist").read_bytes() == src.read_bytes()


@pytest.mark.parametrize(("args", "message"), [
    (["--plugins", "podnet-nope"], "unknown plugin(s) podnet-nope"),
    (["--subnet", "10.0.0.1/16"], "has host bits set"),
    (["--python", "/" + "x" * 300], "too long for a '#!' line"),
])
def test_bad_options_fail_before_writing(capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str],
                                         message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        podnet_main([*_dirs(tmp_path), *args])
    assert exit_info.value.code == 1 and message in capsys.readouterr().err
    assert not (tmp_path / "bin").exists()


def test_bad_conflist_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    src = tmp_path / "bad.conflist"
    src.write_text('{"cniVersion": "1.0.0"}')
    code = install_cmd.run(install_cmd_ns(tmp_path, conflist=str(src)))
    assert code == 1 and "not a conflist" in capsys.readouterr().err


def install_cmd_ns(tmp_path: Path, **over: object) -> object:
    import argparse

    base = {"bin_dir": str(tmp_path / "bin"), "conf_dir": str(tmp_path / "conf"), "python": sys.executable,
            "plugins": None, "conflist": None, "no_conflist": False, "conf_name": "10-podnet.conflist",
            "network": "podnet", "subnet": "10.88.0.0/16", "bridge": "podnet0", "cni_version": "1.0.0",
            "data_dir": None}
    base.update(over)
    return argparse.Namespace(**base)


def test_installed_shim_runs_in_process_without_a_daemon(capsys: pytest.CaptureFixture[str],
                                                         tmp_path: Path) -> None:
    """VERSION needs no namespace: the -IS shim with no daemon loads site-packages and answers."""
    _install(capsys, tmp_path, "--plugins", "podnet-host-local", "--no-conflist")
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": "VERSION", "PODNET_SOCKET": str(tmp_path / "none.sock")}
    shim = str(tmp_path / "bin" / "podnet-host-local")
    proc = subprocess.run([shim], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "1.0.0" in json.loads(proc.stdout)["supportedVersions"]
    # A bad call is answered by the plugin's own error handling, not a traceback.
    env["CNI_COMMAND"] = "ADD"
    proc = subprocess.run([shim], env=env, input="{}", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == 4 and "Traceback" not in proc.stderr
