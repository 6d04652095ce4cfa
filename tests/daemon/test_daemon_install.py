"""``podnet install`` (no namespaces): what it writes, idempotence, atomic replacement, bad input;
and that the shims it writes really start with ``-IS`` and fall back in-process."""

from __future__ import annotations

import ipaddress
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
    # The Python shims as the plugins (the native shim's install: test_native_shim_install.py).
    return ["install", "--bin-dir", str(tmp_path / "bin"), "--conf-dir", str(tmp_path / "conf"),
            "--python-shims"]


def _install(capsys: pytest.CaptureFixture[str], tmp_path: Path, *extra: str) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as exit_info:
        podnet_main([*_dirs(tmp_path), *extra])
    out = capsys.readouterr().out.splitlines()
    return int(exit_info.value.code or 0), out


def _install_err(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                 *extra: str) -> tuple[int, list[str], str]:
    with pytest.raises(SystemExit) as exit_info:
        podnet_main([*_dirs(tmp_path), *extra])
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out.splitlines(), captured.err


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
            "plugins": None, "python_shims": True, "conflist": None, "no_conflist": False,
            "conf_name": "10-podnet.conflist",
            "network": "podnet", "subnet": install_cmd.DEFAULT_SUBNET, "bridge": "podnet0",
            "cni_version": "1.0.0", "data_dir": None}
    base.update(over)
    return argparse.Namespace(**base)


def test_installed_shim_runs_in_process_without_a_daemon(capsys: pytest.CaptureFixture[str],
                                                         tmp_path: Path) -> None:
    """The -IS shim answers VERSION itself; with no daemon, a call loads site-packages and runs the
    plugin in-process."""
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


# Subnets other software on a node commonly uses by default: podman/containerd's bridge (Debian's
# 87-podman-bridge.conflist) and netavark's pool, CRI-O's bridge, the Kubernetes service range,
# flannel/kind, k3s pods and services, weave, docker's bridge and address pools, Calico.
WELL_KNOWN = ["10.88.0.0/16", "10.89.0.0/16", "10.85.0.0/16", "10.96.0.0/12", "10.244.0.0/16", "10.42.0.0/16",
              "10.43.0.0/16", "10.32.0.0/12", "172.17.0.0/16", "172.16.0.0/12", "192.168.0.0/16"]


def test_default_subnet_collides_with_no_well_known_default() -> None:
    default = ipaddress.ip_network(install_cmd.DEFAULT_SUBNET)
    assert [n for n in WELL_KNOWN if default.overlaps(ipaddress.ip_network(n))] == []


PODMAN = {"cniVersion": "0.4.0", "name": "podman", "plugins": [
    {"type": "bridge", "bridge": "cni-podman0", "isGateway": True, "ipMasq": True, "hairpinMode": True,
     "ipam": {"type": "host-local", "routes": [{"dst": "0.0.0.0/0"}],
              "ranges": [[{"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"}]]}},
    {"type": "portmap", "capabilities": {"portMappings": True}}]}


@pytest.mark.parametrize(("neighbour", "subnet"), [
    (("87-podman-bridge.conflist", PODMAN), "10.88.0.0/16"),
    (("87-podman-bridge.conflist", PODMAN), "10.88.7.0/24"),
    (("87-podman-bridge.conflist", PODMAN), "10.0.0.0/8"),
    (("20-legacy.conf", {"cniVersion": "0.3.1", "name": "legacy", "type": "bridge",
                          "ipam": {"type": "host-local", "subnet": "10.212.3.0/24"}}), "10.212.0.0/16"),
    (("30-v6.conflist", {"cniVersion": "1.0.0", "name": "six", "plugins": [
        {"type": "ptp", "ipam": {"type": "host-local", "ranges": [[{"subnet": "fd00:1::/64"}]]}}]}),
     "fd00::/16"),
])
def test_a_subnet_overlapping_another_network_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                         neighbour: tuple[str, dict[str, object]],
                                                         subnet: str) -> None:
    name, body = neighbour
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / name).write_text(json.dumps(body))
    code, out, err = _install_err(capsys, tmp_path, "--subnet", subnet)
    assert code == 1 and out == []
    assert subnet in err and name in err and "overlaps" in err, err
    assert not (tmp_path / "bin").exists() and sorted(os.listdir(tmp_path / "conf")) == [name]


def test_a_given_conflist_overlapping_another_network_is_refused(capsys: pytest.CaptureFixture[str],
                                                                 tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "87-podman-bridge.conflist").write_text(json.dumps(PODMAN))
    src = tmp_path / "mine.conflist"
    src.write_text(json.dumps({**PODMAN, "name": "mine"}))
    code, _, err = _install_err(capsys, tmp_path, "--conflist", str(src))
    assert code == 1 and "87-podman-bridge.conflist" in err and "10.88.0.0/16" in err


def test_own_network_rewritten_and_unrelated_neighbours_are_fine(capsys: pytest.CaptureFixture[str],
                                                                 tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "87-podman-bridge.conflist").write_text(json.dumps(PODMAN))  # its 0.0.0.0/0 route is no subnet
    (conf / "99-broken.conflist").write_text("{not json")  # not podnet's to judge: skipped
    (conf / "notes.txt").write_text('{"name": "x", "subnet": "10.212.0.0/16"}')  # not a config file name
    code, _ = _install(capsys, tmp_path)
    assert code == 0
    mine = conf / "10-podnet.conflist"
    assert install_cmd.DEFAULT_SUBNET in mine.read_text()
    code, out = _install(capsys, tmp_path, "--subnet", "10.213.0.0/16")  # podnet's own file: rewritten
    assert code == 0 and f"updated   {mine}" in out and "10.213.0.0/16" in mine.read_text()
