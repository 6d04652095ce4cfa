"""The disk store on tmp_path: the reference layout (file per IP, owner content, last_reserved_ip.N,
lock), crash debris, damaged files, and the lock excluding other processes."""

from __future__ import annotations

import fcntl
import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from podnet.cni.attachments import ValidAttachments
from podnet.cni.errors import IOFailure
from podnet.ipam.allocator import allocate, gc, release
from podnet.ipam.config import parse_range_set
from podnet.ipam.disk_store import TEMP_PREFIX, DiskStore
from podnet.ipam.store import Reservation

ip = ipaddress.ip_address
V4 = parse_range_set([{"subnet": "10.0.0.0/24"}], "t")
V6 = parse_range_set([{"subnet": "fd00::/64"}], "t")


def test_layout_is_the_reference_layout(tmp_path: Path) -> None:
    store = DiskStore(tmp_path, "net1")
    allocate(store, [V4, V6], "abc123", "eth0")
    d = tmp_path / "net1"
    assert sorted(os.listdir(d)) == ["10.0.0.2", "fd00::2", "last_reserved_ip.0", "last_reserved_ip.1",
                                     "lock"]
    assert (d / "10.0.0.2").read_bytes() == b"abc123\r\neth0"
    assert (d / "fd00::2").read_bytes() == b"abc123\r\neth0"
    assert (d / "last_reserved_ip.0").read_bytes() == b"10.0.0.2"
    assert (d / "last_reserved_ip.1").read_bytes() == b"fd00::2"
    assert (d / "lock").stat().st_size == 0
    assert oct(d.stat().st_mode & 0o777) == "0o755"
    assert oct((d / "10.0.0.2").stat().st_mode & 0o777) == "0o644"


def test_reads_reference_files_including_legacy_and_damaged(tmp_path: Path) -> None:
    d = tmp_path / "net1"
    d.mkdir()
    (d / "10.0.0.5").write_bytes(b"ctr-a\r\neth1")
    (d / "10.0.0.6").write_bytes(b"ctr-legacy\n")  # written before ifname was recorded
    (d / "10.0.0.7").write_bytes(b"")  # the reference was killed between create and write
    (d / "fd00::9").write_bytes(b"ctr-a\r\neth1")
    (d / "last_reserved_ip.0").write_bytes(b"garbage")
    (d / "not-an-ip").write_bytes(b"x")
    (d / "10.0.0.8").mkdir()
    os.symlink("/etc/passwd", d / "10.0.0.9")
    store = DiskStore(tmp_path, "net1")
    with store.lock():
        got = sorted(store.reservations(), key=lambda r: str(r.ip))
        assert got == [Reservation(ip("10.0.0.5"), "ctr-a", "eth1"),
                       Reservation(ip("10.0.0.6"), "ctr-legacy", None),
                       Reservation(ip("10.0.0.7"), "", None),
                       Reservation(ip("fd00::9"), "ctr-a", "eth1")]
        assert sorted(map(str, store.get_by_id("ctr-a", "eth1"))) == ["10.0.0.5", "fd00::9"]
        assert store.get_by_id("ctr-legacy", "eth0") == [ip("10.0.0.6")]
        assert store.last_reserved(0) is None and store.last_reserved(7) is None


def test_reserve_refuses_a_taken_address_and_leaves_no_temp(tmp_path: Path) -> None:
    store = DiskStore(tmp_path, "n")
    with store.lock():
        assert store.reserve("a", "eth0", ip("10.0.0.9"), 0)
        assert not store.reserve("b", "eth0", ip("10.0.0.9"), 0)
        assert store.last_reserved(0) == ip("10.0.0.9")
    assert (tmp_path / "n" / "10.0.0.9").read_bytes() == b"a\r\neth0"
    assert not [n for n in os.listdir(tmp_path / "n") if n.startswith(TEMP_PREFIX)]


def test_round_robin_resumes_from_the_file(tmp_path: Path) -> None:
    (tmp_path / "n").mkdir()
    (tmp_path / "n" / "last_reserved_ip.0").write_text("10.0.0.41")
    assert str(allocate(DiskStore(tmp_path, "n"), [V4], "c", "eth0")[0].address) == "10.0.0.42/24"


def test_debris_is_cleaned_by_allocation_and_gc(tmp_path: Path) -> None:
    store = DiskStore(tmp_path, "n")
    d = tmp_path / "n"
    (d / f"{TEMP_PREFIX}123-abc").write_bytes(b"half")
    allocate(store, [V4], "c", "eth0")
    (d / f"{TEMP_PREFIX}456-def").write_bytes(b"c\r\neth0")
    assert gc(store, ValidAttachments.of([("c", "eth0")])) == []
    assert sorted(os.listdir(d)) == ["10.0.0.2", "last_reserved_ip.0", "lock"]


def test_gc_and_release_keep_bookkeeping_files(tmp_path: Path) -> None:
    store = DiskStore(tmp_path, "n")
    allocate(store, [V4], "c", "eth0")
    (tmp_path / "n" / "10.0.0.77").write_bytes(b"")
    assert sorted(map(str, gc(store, ValidAttachments()))) == ["10.0.0.2", "10.0.0.77"]
    assert sorted(os.listdir(tmp_path / "n")) == ["last_reserved_ip.0", "lock"]
    assert release(store, "c", "eth0") == []


def test_store_without_create_does_not_make_directories(tmp_path: Path) -> None:
    store = DiskStore(tmp_path / "nope", "n", create=False)
    assert not store.exists() and not (tmp_path / "nope").exists()


def test_lock_excludes_another_process(tmp_path: Path) -> None:
    """The lock is a plain flock on <dir>/lock, the reference's lock: another process waits for it."""
    store = DiskStore(tmp_path, "n")
    probe = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); t = time.monotonic(); "
             "fcntl.flock(fd, fcntl.LOCK_EX); print(time.monotonic() - t)")
    with store.lock():
        child = subprocess.Popen([sys.executable, "-c", probe, str(tmp_path / "n" / "lock")],
                                 stdout=subprocess.PIPE, text=True)
        time.sleep(0.3)
        assert child.poll() is None
    out, _ = child.communicate(timeout=10)
    assert float(out) >= 0.2
    # And the lock is free again.
    fd = os.open(tmp_path / "n" / "lock", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_data_dir_that_is_a_file_is_an_io_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(IOFailure) as exc:
        DiskStore(tmp_path / "file", "n")
    assert exc.value.code == 5 and str(tmp_path / "file" / "n") in str(exc.value)


# -- the in-memory index (podnet.ipam.dir_index) ----------------------------------------------------


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    from podnet.ipam import dir_index

    seen: list[str] = []
    real = dir_index.read_file

    def counting(path: str) -> bytes | None:
        seen.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(dir_index, "read_file", counting)
    return seen


def test_index_reads_the_directory_once_while_nobody_else_writes(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    reads = _count_reads(monkeypatch)
    store = DiskStore(tmp_path, "n")
    for i in range(5):
        allocate(store, [V4], f"c{i}", "eth0")
    assert release(store, "c1", "eth0") == [ip("10.0.0.3")]
    assert reads == []  # the first lock read an empty directory; every change since was ours
    other = DiskStore(tmp_path, "n")  # another store object, same process: same index
    with other.lock():
        assert len(other.reservations()) == 4
    assert reads == []


def test_index_sees_what_others_write_and_remove(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = _count_reads(monkeypatch)
    store = DiskStore(tmp_path, "n")
    allocate(store, [V4], "mine", "eth0")  # 10.0.0.2
    d = tmp_path / "n"
    (d / "10.0.0.3").write_bytes(b"theirs\r\neth0")  # another process (Go's host-local, say)
    assert str(allocate(store, [V4], "next", "eth0")[0].address) == "10.0.0.4/24"
    assert "10.0.0.3" in reads  # the directory was read again
    os.unlink(d / "10.0.0.2")  # removed behind our back
    with store.lock():
        assert sorted(str(r.ip) for r in store.reservations()) == ["10.0.0.3", "10.0.0.4"]
    assert release(store, "theirs", "eth0") == [ip("10.0.0.3")]
    (d / f"{TEMP_PREFIX}99-dead").write_bytes(b"half")  # a writer that died
    assert gc(store, ValidAttachments.of([("next", "eth0")])) == []
    assert sorted(os.listdir(d)) == ["10.0.0.4", "last_reserved_ip.0", "lock"]


def test_index_follows_a_replaced_directory(tmp_path: Path) -> None:
    allocate(DiskStore(tmp_path, "n"), [V4], "a", "eth0")
    for name in os.listdir(tmp_path / "n"):
        os.unlink(tmp_path / "n" / name)
    os.rmdir(tmp_path / "n")
    store = DiskStore(tmp_path, "n")
    assert str(allocate(store, [V4], "b", "eth0")[0].address) == "10.0.0.2/24"
    with store.lock():
        assert store.reservations() == [Reservation(ip("10.0.0.2"), "b", "eth0")]


def test_prepared_files_vanish_unused_and_never_show(tmp_path: Path) -> None:
    store = DiskStore(tmp_path, "n")
    with store.prepared("a", "eth0", 2), store.lock():
        assert store.reserve("a", "eth0", ip("10.0.0.9"), 0)
    assert sorted(os.listdir(tmp_path / "n")) == ["10.0.0.9", "last_reserved_ip.0", "lock"]
    assert (tmp_path / "n" / "10.0.0.9").read_bytes() == b"a\r\neth0"


def test_index_is_not_kept_where_inotify_cannot_see_every_change(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from podnet.ipam import dir_index

    monkeypatch.setattr(dir_index, "sees_every_change", lambda path: False)  # NFS, FUSE, overlayfs
    reads = _count_reads(monkeypatch)
    store = DiskStore(tmp_path, "nfs")
    allocate(store, [V4], "a", "eth0")
    allocate(store, [V4], "b", "eth0")
    with store.lock():
        assert len(store.reservations()) == 2
    assert reads.count("10.0.0.2") == 2  # read again by every later lock
