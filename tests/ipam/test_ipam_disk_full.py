"""A failed ADD leaves nothing reserved, also when the disk fails *after* the reservation was linked.

The reservation file is written and synced before the lock and then linked to its name; after the
link come the ``last_reserved_ip.N`` write and, once the lock is released, the directory sync. A
failure in either used to leave the reservation behind while ADD reported code 5, so the address
leaked (the runtime never DELs a failed ADD's attachment).
"""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ipam_procs import host_local_conf, ip_files

from podnet.cni import skel
from podnet.ipam.disk_store import DiskStore
from podnet.plugins import host_local

NET = "fullnet"
RANGES = [[{"subnet": "10.66.0.0/24"}]]


def call(command: str, conf: dict[str, Any], cid: str) -> tuple[int, dict[str, Any]]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": "/x", "CNI_IFNAME": "eth0",
           "CNI_PATH": "/x"}
    out = io.StringIO()
    rc = skel.run(host_local.PLUGIN, env=env, stdin=io.BytesIO(json.dumps(conf).encode()), stdout=out,
                  stderr=io.StringIO())
    return rc, (json.loads(out.getvalue()) if out.getvalue().strip() else {})


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs with few inodes on a directory of the test's own, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,nr_inodes=64,mode=0755", "podnet-test", str(mnt)],
                   check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def leave_free_inodes(fs: Path, free: int) -> None:
    """Create empty files until the filesystem has no inode left, then give back ``free`` of them."""
    filler = fs / "filler"
    filler.mkdir()
    made: list[Path] = []
    while True:
        path = filler / str(len(made))
        try:
            path.touch()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            break
        made.append(path)
    for path in made[:free]:
        path.unlink()


def test_no_inode_for_last_reserved_ip_rolls_the_reservation_back(tiny_tmpfs: Path) -> None:
    """A real full filesystem: the prepared reservation file takes the last free inode, so the link
    succeeds and the temporary file for ``last_reserved_ip.0`` cannot be created (ENOSPC)."""
    conf = host_local_conf(tiny_tmpfs, NET, RANGES)
    assert call("ADD", conf, "first")[0] == 0  # lock, directory and last_reserved_ip.0 exist now
    leave_free_inodes(tiny_tmpfs, 1)

    rc, err = call("ADD", conf, "second")
    assert sorted(ip_files(tiny_tmpfs, NET)) == ["10.66.0.2"]
    assert rc == 1 and err["code"] == 5, err
    assert "last_reserved_ip.0" in err["msg"] and "10.66.0.3" in err["msg"], err
    assert "released" in err["msg"] and err["details"] == os.strerror(errno.ENOSPC), err
    print(f"\nfull disk: {err['msg']}: {err['details']}")
    assert not [n for n in os.listdir(tiny_tmpfs / NET) if n.startswith(".")]

    # With room again the same container gets an address, and DEL/GC still work.
    for path in (tiny_tmpfs / "filler").iterdir():
        path.unlink()
    rc, result = call("ADD", conf, "second")
    assert rc == 0 and result["ips"][0]["address"] == "10.66.0.3/24", result
    assert call("DEL", conf, "second") == (0, {})
    assert sorted(ip_files(tiny_tmpfs, NET)) == ["10.66.0.2"]


def test_failed_directory_sync_rolls_the_reservation_back(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: a directory fsync fails only on a device error (EIO), which a full
    filesystem cannot produce, so ``_sync_dir`` is made to fail here."""
    conf = host_local_conf(tmp_path, NET, [[{"subnet": "10.66.0.0/24"}], [{"subnet": "fd66::/64"}]])
    assert call("ADD", conf, "first")[0] == 0

    def broken_sync(self: DiskStore) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(DiskStore, "_sync_dir", broken_sync)
    rc, err = call("ADD", conf, "second")
    assert sorted(ip_files(tmp_path, NET)) == ["10.66.0.2", "fd66::2"]
    assert rc == 1 and err["code"] == 5, err
    assert "cannot sync IPAM directory" in err["msg"] and "released" in err["msg"], err
    assert err["details"] == os.strerror(errno.EIO)
    print(f"\nfailed sync: {err['msg']}: {err['details']}")

    # A re-ADD of an attachment that already holds its addresses writes nothing, so there is
    # nothing to sync and nothing to give back.
    rc, result = call("ADD", conf, "first")
    assert rc == 0 and [ip["address"] for ip in result["ips"]] == ["10.66.0.2/24", "fd66::2/64"]
    assert sorted(ip_files(tmp_path, NET)) == ["10.66.0.2", "fd66::2"]
