"""IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``): one name per address in the data directory.

An address is named in its canonical form (IPv4 for a mapped address, as the reference does) when
it is reserved, and released by address whatever form an existing file uses, so files written in
the IPv6 form by an earlier version are released by DEL and GC. A mapped subnet is refused (code 7)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest
from test_ipam_plugins import call, hl_conf, ip_files

from podnet.cni.attachments import ValidAttachments
from podnet.cni.errors import InvalidNetworkConfig
from podnet.ipam.allocator import allocate, gc, release
from podnet.ipam.config import parse_range_set
from podnet.ipam.disk_store import DiskStore
from podnet.plugins import host_local

MAPPED = "::ffff:10.212.50.0/120"
V4 = parse_range_set([{"subnet": "10.212.50.0/24"}], "t")


def write_owner(data_dir: Path, name: str, cid: str, net: str = "hlnet") -> None:
    d = data_dir / net
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(f"{cid}\r\neth0".encode())


def test_mapped_subnet_is_refused_on_add_check_status(tmp_path: Path) -> None:
    conf = hl_conf(tmp_path, "1.1.0", {"ranges": [[{"subnet": MAPPED}]]})
    for command in ("ADD", "CHECK", "STATUS"):
        rc, err = call(host_local.PLUGIN, command, conf)
        assert rc == 1 and err["code"] == 7, (command, err)
        assert MAPPED in err["msg"] and "IPv4-mapped" in err["msg"], err
    assert ip_files(tmp_path) == []
    with pytest.raises(InvalidNetworkConfig, match="IPv4-mapped"):
        parse_range_set([{"subnet": "10.0.0.0/24"}, {"subnet": "::ffff:10.1.0.0/120"}], "t")


@pytest.mark.parametrize("name", ["::ffff:ad4:3202", "::ffff:10.212.50.2", "0:0:0:0:0:ffff:ad4:3202"])
def test_del_and_gc_release_files_named_in_ipv6_form(tmp_path: Path, name: str) -> None:
    """The reported fault: ADD named the file ``::ffff:ad4:3202``, DEL released ``10.212.50.2``."""
    conf = hl_conf(tmp_path, "1.1.0", {"ranges": [[{"subnet": MAPPED}]]})
    write_owner(tmp_path, name, "ctr1")
    write_owner(tmp_path, "::ffff:ad4:3203", "ctr2")
    assert call(host_local.PLUGIN, "DEL", conf, cid="ctr1") == (0, {})
    assert ip_files(tmp_path) == ["::ffff:ad4:3203"]
    assert call(host_local.PLUGIN, "GC", {**conf, "cni.dev/valid-attachments": []}) == (0, {})
    assert ip_files(tmp_path) == []


def test_reservations_use_the_ipv4_name_and_see_ipv6_named_files(tmp_path: Path) -> None:
    store = DiskStore(tmp_path, "hlnet")
    write_owner(tmp_path, "::ffff:10.212.50.2", "old")
    # A mapped requested address is the IPv4 address: taken by the IPv6-named file.
    with pytest.raises(Exception, match="already reserved by container old"):
        allocate(store, [V4], "new", "eth0", [ipaddress.ip_address("10.212.50.2")])
    got = allocate(store, [V4], "new", "eth0")
    assert str(got[0].address) == "10.212.50.3/24"
    assert "10.212.50.3" in os.listdir(tmp_path / "hlnet")
    assert release(store, "old", "eth0") == [ipaddress.ip_address("10.212.50.2")]
    assert ip_files(tmp_path) == ["10.212.50.3"]


def test_gc_keeps_an_address_a_valid_attachment_holds_under_the_other_name(tmp_path: Path) -> None:
    """Two files for one address (a double allocation made by the old naming): GC releasing the
    stale one must not free the address under the attachment that is kept."""
    store = DiskStore(tmp_path, "hlnet")
    write_owner(tmp_path, "10.212.50.2", "keep")
    write_owner(tmp_path, "::ffff:ad4:3202", "stale")
    gc(store, ValidAttachments.of([("keep", "eth0")]))
    assert "10.212.50.2" in ip_files(tmp_path)
    assert release(store, "stale", "eth0") == [ipaddress.ip_address("10.212.50.2")]
    assert ip_files(tmp_path) == ["10.212.50.2"]
