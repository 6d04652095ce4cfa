"""podnet-host-local and podnet-static through skel.run (injected env and stdin), across spec versions,
and the IPAM delegate used by podnet's bridge and routed plugins."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from podnet.cni import skel
from podnet.cni.errors import CNIError
from podnet.plugins import host_local, static
from podnet.plugins.ipam_delegate import ipam_add, ipam_check, ipam_del, ipam_gc, ipam_status
from podnet.runtime.invoke import Invocation

VERSIONS = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]
VENV_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


def env_for(command: str, cid: str = "ctr1", ifname: str = "eth0", cni_args: str = "") -> dict[str, str]:
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": "/var/run/netns/pod",
            "CNI_IFNAME": ifname, "CNI_PATH": "/nonexistent", "CNI_ARGS": cni_args}


def call(plugin: skel.Plugin, command: str, conf: dict[str, Any], **kw: str) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    rc = skel.run(plugin, env=env_for(command, **kw), stdin=io.BytesIO(json.dumps(conf).encode()),
                  stdout=out, stderr=io.StringIO())
    text = out.getvalue()
    return rc, (json.loads(text) if text.strip() else {})


def hl_conf(data_dir: Path, version: str, ipam: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    body = {"type": "podnet-host-local", "dataDir": str(data_dir),
            "ranges": [[{"subnet": "10.5.0.0/24"}], [{"subnet": "fd05::/64"}]],
            "routes": [{"dst": "0.0.0.0/0"}], **(ipam or {})}
    return {"cniVersion": version, "name": "hlnet", "type": "bridge", "ipam": body, **top}


def ip_files(data_dir: Path, network: str = "hlnet") -> list[str]:
    d = data_dir / network
    return sorted(n for n in os.listdir(d) if n[0].isdigit() or ":" in n) if d.exists() else []


# ---- host-local ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_host_local_add_check_del(tmp_path: Path, version: str) -> None:
    conf = hl_conf(tmp_path, version)
    rc, result = call(host_local.PLUGIN, "ADD", conf)
    assert rc == 0, result
    assert result["cniVersion"] == version
    assert [ip["address"] for ip in result["ips"]] == ["10.5.0.2/24", "fd05::2/64"]
    assert [ip["gateway"] for ip in result["ips"]] == ["10.5.0.1", "fd05::1"]
    assert all("interface" not in ip for ip in result["ips"])
    assert ("version" in result["ips"][0]) == (version < "1.0.0")
    assert result["routes"] == [{"dst": "0.0.0.0/0"}] and "interfaces" not in result
    assert ip_files(tmp_path) == ["10.5.0.2", "fd05::2"]

    # Re-ADD is idempotent.
    assert call(host_local.PLUGIN, "ADD", conf)[1]["ips"] == result["ips"]
    if version >= "0.4.0":
        assert call(host_local.PLUGIN, "CHECK", {**conf, "prevResult": result}) == (0, {})
    assert call(host_local.PLUGIN, "DEL", conf) == (0, {})
    assert ip_files(tmp_path) == []
    assert call(host_local.PLUGIN, "DEL", conf) == (0, {})  # nothing reserved is success
    if version >= "0.4.0":
        rc, err = call(host_local.PLUGIN, "CHECK", {**conf, "prevResult": result})
        assert rc == 1 and err["code"] == 3 and "ctr1" in err["msg"]


def test_host_local_legacy_version_result(tmp_path: Path) -> None:
    conf = hl_conf(tmp_path, "0.2.0", {"ranges": [[{"subnet": "10.5.0.0/24"}]]})
    rc, result = call(host_local.PLUGIN, "ADD", conf)
    assert rc == 0 and result["ip4"] == {"ip": "10.5.0.2/24", "gateway": "10.5.0.1",
                                         "routes": [{"dst": "0.0.0.0/0"}]}


def test_host_local_requested_ip_from_cni_args(tmp_path: Path) -> None:
    conf = hl_conf(tmp_path, "1.0.0")
    rc, result = call(host_local.PLUGIN, "ADD", conf, cni_args="IgnoreUnknown=1;IP=10.5.0.77,fd05::77")
    assert rc == 0 and [ip["address"] for ip in result["ips"]] == ["10.5.0.77/24", "fd05::77/64"]
    rc, err = call(host_local.PLUGIN, "ADD", conf, cid="ctr2", cni_args="IP=10.5.0.77")
    assert rc == 1 and err["code"] == 999
    assert err["msg"] == "requested IP 10.5.0.77 is already reserved by container ctr1 interface eth0"
    assert ip_files(tmp_path) == ["10.5.0.77", "fd05::77"]


def test_host_local_failed_add_reserves_nothing(tmp_path: Path) -> None:
    bad_resolv = hl_conf(tmp_path, "1.0.0", {"resolvConf": str(tmp_path / "missing")})
    rc, err = call(host_local.PLUGIN, "ADD", bad_resolv)
    assert rc == 1 and err["code"] == 7 and "missing" in err["msg"]
    small = hl_conf(tmp_path, "1.0.0", {"ranges": [[{"subnet": "fd05::/64"}], [{"subnet": "10.5.0.0/30"}]]})
    assert call(host_local.PLUGIN, "ADD", small)[0] == 0
    rc, err = call(host_local.PLUGIN, "ADD", small, cid="ctr2")
    assert rc == 1 and err["code"] == 999 and "10.5.0.0/30" in err["msg"]
    assert ip_files(tmp_path) == ["10.5.0.2", "fd05::2"]  # ctr2's IPv6 address was given back


def test_host_local_resolv_conf(tmp_path: Path) -> None:
    (tmp_path / "resolv.conf").write_text("nameserver 10.5.0.10\nsearch svc.local\n")
    conf = hl_conf(tmp_path, "1.0.0", {"resolvConf": str(tmp_path / "resolv.conf")})
    rc, result = call(host_local.PLUGIN, "ADD", conf)
    assert rc == 0 and result["dns"] == {"nameservers": ["10.5.0.10"], "search": ["svc.local"]}


def test_host_local_del_works_when_ranges_no_longer_parse(tmp_path: Path) -> None:
    assert call(host_local.PLUGIN, "ADD", hl_conf(tmp_path, "1.0.0"))[0] == 0
    broken = hl_conf(tmp_path, "1.0.0", {"ranges": [[{"subnet": "nonsense"}]]})
    assert call(host_local.PLUGIN, "DEL", broken) == (0, {})
    assert ip_files(tmp_path) == []


def test_host_local_del_without_data_dir_creates_nothing(tmp_path: Path) -> None:
    conf = hl_conf(tmp_path / "never", "1.0.0")
    assert call(host_local.PLUGIN, "DEL", conf) == (0, {})
    assert not (tmp_path / "never").exists()


def test_host_local_gc(tmp_path: Path) -> None:
    conf = hl_conf(tmp_path, "1.1.0")
    for cid in ("keep", "drop"):
        assert call(host_local.PLUGIN, "ADD", conf, cid=cid)[0] == 0
    (tmp_path / "hlnet" / ".podnet-tmp-1-x").write_bytes(b"debris")
    gc_conf = {**conf, "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    assert call(host_local.PLUGIN, "GC", gc_conf) == (0, {})
    assert ip_files(tmp_path) == ["10.5.0.2", "fd05::2"]
    assert not (tmp_path / "hlnet" / ".podnet-tmp-1-x").exists()
    assert call(host_local.PLUGIN, "GC", {**conf, "cni.dev/valid-attachments": []}) == (0, {})
    assert ip_files(tmp_path) == []


def test_host_local_status(tmp_path: Path) -> None:
    conf = hl_conf(tmp_path, "1.1.0", {"ranges": [[{"subnet": "10.5.0.0/30"}]]})
    assert call(host_local.PLUGIN, "STATUS", conf) == (0, {})
    assert call(host_local.PLUGIN, "ADD", conf)[0] == 0
    rc, err = call(host_local.PLUGIN, "STATUS", conf)
    assert rc == 1 and err["code"] == 50
    assert "range set 0 (10.5.0.1-10.5.0.2 in 10.5.0.0/30): 1 of 1 in use" in err["msg"]
    rc, err = call(host_local.PLUGIN, "STATUS", hl_conf(tmp_path, "1.1.0", {"ranges": [[{"subnet": "x"}]]}))
    assert rc == 1 and err["code"] == 7


def test_host_local_invalid_config_error_json(tmp_path: Path) -> None:
    conf = hl_conf(tmp_path, "1.0.0", {"ranges": [[{"subnet": "10.5.0.0/24", "rangeStart": "10.6.0.1"}]]})
    rc, err = call(host_local.PLUGIN, "ADD", conf)
    assert rc == 1 and err == {"cniVersion": "1.0.0", "code": 7,
                               "msg": "ipam.ranges[0][0].rangeStart 10.6.0.1 is outside subnet 10.5.0.0/24"}
    assert not (tmp_path / "hlnet").exists()


# ---- static --------------------------------------------------------------------------------------


def static_conf(version: str, **ipam: Any) -> dict[str, Any]:
    body = {"type": "podnet-static",
            "addresses": [{"address": "10.7.0.5/24", "gateway": "10.7.0.1"}, {"address": "fd07::5/64"}],
            "routes": [{"dst": "0.0.0.0/0"}], "dns": {"nameservers": ["10.7.0.53"]}, **ipam}
    return {"cniVersion": version, "name": "stnet", "type": "bridge", "ipam": body}


@pytest.mark.parametrize("version", VERSIONS)
def test_static_add_check_del(version: str) -> None:
    conf = static_conf(version)
    rc, result = call(static.PLUGIN, "ADD", conf)
    assert rc == 0, result
    assert [(ip["address"], ip.get("gateway")) for ip in result["ips"]] == [("10.7.0.5/24", "10.7.0.1"),
                                                                           ("fd07::5/64", None)]
    assert result["dns"] == {"nameservers": ["10.7.0.53"]} and result["routes"] == [{"dst": "0.0.0.0/0"}]
    if version >= "0.4.0":
        assert call(static.PLUGIN, "CHECK", {**conf, "prevResult": result}) == (0, {})
        moved = {**result, "ips": [{"address": "10.7.0.6/24", "gateway": "10.7.0.1"}]}
        rc, err = call(static.PLUGIN, "CHECK", {**conf, "prevResult": moved})
        assert rc == 1 and "10.7.0.5/24 is not in the previous result" in err["msg"]
        # A main plugin may report the address with its own prefix and gateway (routed: /32).
        routed = {**result, "ips": [{"address": "10.7.0.5/32", "gateway": "169.254.1.1"},
                                    {"address": "fd07::5/128", "gateway": "fe80::1"}]}
        assert call(static.PLUGIN, "CHECK", {**conf, "prevResult": routed}) == (0, {})
    assert call(static.PLUGIN, "DEL", conf) == (0, {})
    if version == "1.1.0":
        assert call(static.PLUGIN, "STATUS", conf) == (0, {})
        assert call(static.PLUGIN, "GC", conf) == (0, {})


def test_static_cni_args() -> None:
    rc, result = call(static.PLUGIN, "ADD", static_conf("1.0.0", addresses=[]),
                      cni_args="IP=10.8.0.5/24,fd08::5/64;GATEWAY=10.8.0.1")
    assert rc == 0
    assert [(ip["address"], ip.get("gateway")) for ip in result["ips"]] == [("10.8.0.5/24", "10.8.0.1"),
                                                                           ("fd08::5/64", None)]


def test_static_errors_and_del_with_broken_config() -> None:
    broken = static_conf("1.1.0", addresses=[{"address": "10.7.0.5"}])
    rc, err = call(static.PLUGIN, "ADD", broken)
    assert rc == 1 and err["code"] == 7 and "'10.7.0.5'" in err["msg"]
    assert call(static.PLUGIN, "DEL", broken) == (0, {})
    assert call(static.PLUGIN, "STATUS", broken)[1]["code"] == 7


# ---- the delegate ----------------------------------------------------------------------------


class NoExec:
    def find(self, plugin_type: str, path: Sequence[str]) -> str:
        raise AssertionError(f"podnet IPAM must run in-process, not exec {plugin_type}")

    def run(self, plugin: str, inv: Invocation, stdin: bytes) -> bytes:
        raise AssertionError("no exec expected")


class RecordingExec:
    def __init__(self, out: bytes) -> None:
        self.out = out
        self.calls: list[tuple[str, Invocation, bytes]] = []

    def find(self, plugin_type: str, path: Sequence[str]) -> str:
        return f"/fake/{plugin_type}"

    def run(self, plugin: str, inv: Invocation, stdin: bytes) -> bytes:
        self.calls.append((plugin, inv, stdin))
        return self.out


def cmd_args(conf: dict[str, Any], command: str = "ADD", path: list[str] | None = None) -> skel.CmdArgs:
    return skel.build_args({**env_for(command), "CNI_PATH": os.pathsep.join(path or ["/nonexistent"])},
                           json.dumps(conf).encode(), host_local.PLUGIN)


def test_delegate_runs_podnet_ipam_in_process(tmp_path: Path) -> None:
    conf = hl_conf(tmp_path, "1.1.0")
    args = cmd_args(conf, "ADD")
    result = ipam_add(args, runner=NoExec())
    assert [str(ip.address) for ip in result.ips] == ["10.5.0.2/24", "fd05::2/64"]
    ipam_check(cmd_args({**conf, "prevResult": result.to_json()}, "CHECK"), runner=NoExec())
    ipam_status(args, runner=NoExec())
    ipam_gc(args, {**conf, "cni.dev/valid-attachments": [{"containerID": "ctr1", "ifname": "eth0"}]},
            runner=NoExec())
    assert ip_files(tmp_path) == ["10.5.0.2", "fd05::2"]
    ipam_del(args, runner=NoExec())
    assert ip_files(tmp_path) == []
    static_result = ipam_add(cmd_args(static_conf("1.0.0")), runner=NoExec())
    assert str(static_result.ips[0].address) == "10.7.0.5/24"


def test_delegate_execs_other_ipam_types() -> None:
    conf = {"cniVersion": "1.0.0", "name": "x", "type": "bridge", "ipam": {"type": "dhcp"}}
    runner = RecordingExec(json.dumps({"cniVersion": "1.0.0", "ips": [{"address": "10.9.0.9/24"}]}).encode())
    args = cmd_args(conf, "DEL")
    result = ipam_add(args, runner=runner)
    ipam_del(args, runner=runner)
    assert str(result.ips[0].address) == "10.9.0.9/24"
    assert [(p, inv.command, inv.container_id, inv.ifname) for p, inv, _ in runner.calls] == [
        ("/fake/dhcp", "ADD", "ctr1", "eth0"), ("/fake/dhcp", "DEL", "ctr1", "eth0")]
    assert json.loads(runner.calls[0][2]) == conf


def test_delegate_conf_override_is_what_the_plugin_reads() -> None:
    runner = RecordingExec(b"{}")
    conf = {"cniVersion": "1.0.0", "name": "x", "ipam": {"type": "other"}}
    ipam_del(cmd_args(conf, "DEL"), {**conf, "runtimeConfig": {"ips": ["10.0.0.1"]}}, runner=runner)
    assert json.loads(runner.calls[0][2])["runtimeConfig"] == {"ips": ["10.0.0.1"]}


def test_delegate_real_exec_of_an_ipam_binary() -> None:
    """podnet-static as an executable on CNI_PATH, under a name that is not run in-process."""
    conf = static_conf("1.0.0")
    conf["ipam"]["type"] = "podnet-static"
    args = cmd_args(conf, "ADD", [str(VENV_BIN)])
    from podnet.runtime.invoke import RealExec

    class Renamed(RealExec):
        def find(self, plugin_type: str, path: Sequence[str]) -> str:
            return super().find("podnet-static", path)

    alias = {**conf, "ipam": {**conf["ipam"], "type": "static-alias"}}
    result = ipam_add(args, alias, runner=Renamed())
    assert [str(ip.address) for ip in result.ips] == ["10.7.0.5/24", "fd07::5/64"]
    with pytest.raises(CNIError) as exc:
        ipam_add(args, {**alias, "ipam": {**alias["ipam"], "addresses": [{"address": "bad"}]}},
                 runner=Renamed())
    assert exc.value.code == 7 and "'bad'" in exc.value.msg


def test_delegate_missing_ipam() -> None:
    with pytest.raises(CNIError) as exc:
        ipam_add(cmd_args({"cniVersion": "1.0.0", "name": "x"}), runner=NoExec())
    assert exc.value.code == 7
