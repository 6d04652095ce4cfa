"""Paths in IPAM configuration: ``dataDir`` and ``resolvConf`` must mean the same file whoever runs the
plugin (the daemon and an in-process shim have different working directories), and a path the
kernel cannot take (a NUL byte) is a configuration error, never an internal one.

ADD, CHECK and STATUS refuse such a configuration (code 7, naming the value); DEL and GC succeed
without touching anything, since ADD could never have reserved anything under it."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
from test_ipam_plugins import call, hl_conf, ip_files

from podnet.plugins import host_local

RELATIVE = "rel-data"


def gc_conf(conf: dict[str, Any]) -> dict[str, Any]:
    return {**conf, "cni.dev/valid-attachments": []}


def test_relative_data_dir_never_allocates_from_a_cwd(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The reported fault: two pods, two working directories, two directories, one address."""
    conf = hl_conf(Path(RELATIVE), "1.1.0")
    for name in ("a", "b"):
        cwd = tmp_path / name
        cwd.mkdir()
        monkeypatch.chdir(cwd)
        rc, err = call(host_local.PLUGIN, "ADD", conf, cid=f"ctr-{name}")
        assert rc == 1 and err["code"] == 7, err
        assert f"ipam.dataDir {RELATIVE!r} is not an absolute path" in err["msg"]
        assert os.listdir(cwd) == []
    for command in ("CHECK", "STATUS"):
        rc, err = call(host_local.PLUGIN, command, conf)
        assert rc == 1 and err["code"] == 7 and RELATIVE in err["msg"], (command, err)


def test_del_and_gc_with_relative_data_dir_release_nothing(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A reservation that happens to sit under the cwd is not ours to release: DEL and GC never
    resolve the relative path, they succeed and leave it."""
    monkeypatch.chdir(tmp_path)
    assert call(host_local.PLUGIN, "ADD", hl_conf(tmp_path / RELATIVE, "1.1.0"))[0] == 0
    conf = hl_conf(Path(RELATIVE), "1.1.0")
    assert call(host_local.PLUGIN, "DEL", conf) == (0, {})
    assert call(host_local.PLUGIN, "GC", gc_conf(conf)) == (0, {})
    assert ip_files(tmp_path / RELATIVE) == ["10.5.0.2", "fd05::2"]


@pytest.mark.parametrize("data_dir", ["/var/lib/cni\0/networks", "", "."])
def test_unusable_data_dir_is_invalid_config_and_del_gc_succeed(tmp_path: Path, data_dir: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    conf = hl_conf(Path("/unused"), "1.1.0", {"dataDir": data_dir})
    if data_dir == "":
        # Absent, null and "" all mean the default directory: not refused.
        assert host_local.load_host_local(conf, [], "1.1.0").data_dir == "/var/lib/cni/networks"
        return
    for command in ("ADD", "CHECK", "STATUS"):
        rc, err = call(host_local.PLUGIN, command, conf)
        assert rc == 1 and err["code"] == 7 and "ipam.dataDir" in err["msg"], (command, err)
    assert call(host_local.PLUGIN, "DEL", conf) == (0, {})
    assert call(host_local.PLUGIN, "GC", gc_conf(conf)) == (0, {})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("resolv", "text"), [
    ("/etc/resolv\0.conf", "contains a NUL byte"),
    ("resolv.conf", "is not an absolute path"),
    ("/", "is not a regular file"),
])
def test_bad_resolv_conf_is_invalid_config_before_anything_is_reserved(tmp_path: Path, resolv: str,
                                                                       text: str) -> None:
    conf = hl_conf(tmp_path, "1.1.0", {"resolvConf": resolv})
    rc, err = call(host_local.PLUGIN, "ADD", conf)
    assert rc == 1 and err["code"] == 7 and "ipam.resolvConf" in err["msg"] and text in err["msg"], err
    assert ip_files(tmp_path) == []
    assert call(host_local.PLUGIN, "DEL", conf) == (0, {})


@pytest.mark.timeout(20)
def test_resolv_conf_that_is_a_fifo_does_not_hang_add(tmp_path: Path) -> None:
    """Opening a FIFO for reading blocks until a writer comes; ADD must not wait for one."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    conf = hl_conf(tmp_path, "1.1.0", {"resolvConf": str(fifo)})
    # Unblock a hanging open after the assertion window, so a regression fails instead of hanging.
    rescue = threading.Timer(10, lambda: open(fifo, "wb").close())
    rescue.start()
    try:
        rc, err = call(host_local.PLUGIN, "ADD", conf)
    finally:
        rescue.cancel()
    assert rc == 1 and err["code"] == 7 and "is not a regular file" in err["msg"], err
    assert ip_files(tmp_path) == []


def test_network_name_that_is_a_path_is_refused_by_the_store_location() -> None:
    """The skel validates the name, but the IPAM delegate may hand over an edited configuration:
    the location itself refuses a name that would leave dataDir."""
    from podnet.cni.errors import InvalidNetworkConfig
    from podnet.ipam.config import store_location

    for name in ("../etc", "a/b", "x\0", ""):
        with pytest.raises(InvalidNetworkConfig):
            store_location({"name": name, "ipam": {"dataDir": "/var/lib/cni/networks"}})


# ---- DNS strings: they end up in the pod's resolv.conf, one setting per line ---------------------

BAD_DNS = [
    ({"nameservers": ["10.7.0.53\0"]}, "ipam.dns.nameservers[0]"),
    ({"nameservers": ["not-an-ip"]}, "ipam.dns.nameservers[0]"),
    ({"nameservers": ["10.7.0.53\nnameserver 6.6.6.6"]}, "ipam.dns.nameservers[0]"),
    ({"domain": "svc.local\nnameserver 6.6.6.6"}, "ipam.dns.domain"),
    ({"search": ["ok.local", "bad\0.local"]}, "ipam.dns.search[1]"),
    ({"options": ["ndots:5 timeout:1"]}, "ipam.dns.options[0]"),
]


@pytest.mark.parametrize(("dns", "where"), BAD_DNS)
def test_static_dns_strings_that_would_break_resolv_conf_are_invalid_config(dns: dict[str, Any],
                                                                             where: str) -> None:
    from test_ipam_plugins import static_conf

    from podnet.plugins import static

    rc, err = call(static.PLUGIN, "ADD", static_conf("1.1.0", dns=dns))
    assert rc == 1 and err["code"] == 7 and where in err["msg"], err
    assert call(static.PLUGIN, "DEL", static_conf("1.1.0", dns=dns)) == (0, {})


def test_static_dns_keeps_scoped_ipv6_nameservers() -> None:
    from test_ipam_plugins import static_conf

    from podnet.plugins import static

    dns = {"nameservers": ["fe80::53%eth0", "10.7.0.53"], "domain": "svc.local", "search": ["a.b"],
           "options": ["ndots:5"]}
    rc, result = call(static.PLUGIN, "ADD", static_conf("1.1.0", dns=dns))
    assert rc == 0 and result["dns"] == dns, result


def test_resolv_conf_with_a_nul_byte_in_a_value_is_invalid_config(tmp_path: Path) -> None:
    (tmp_path / "resolv.conf").write_bytes(b"nameserver 10.5.0.10\nsearch svc\0.local\n")
    conf = hl_conf(tmp_path, "1.1.0", {"resolvConf": str(tmp_path / "resolv.conf")})
    rc, err = call(host_local.PLUGIN, "ADD", conf)
    assert rc == 1 and err["code"] == 7 and "search" in err["msg"] and "resolv.conf" in err["msg"], err
    assert ip_files(tmp_path) == []
