"""host-local's on-disk store, in the reference layout so operators' tools and habits keep working.

``<dataDir>/<network>/``
  ``<ip>``                   one file per reservation, content ``<containerID>\\r\\n<ifname>``
  ``last_reserved_ip.<N>``   the address range set N handed out last (round-robin cursor)
  ``lock``                   ``flock``-ed for the whole allocation; the reference takes the same lock,
                             so both can share a data directory

Crash safety: a reservation file is written under a temporary name, fsync-ed, then ``link``-ed to the
IP's name. ``link`` fails when the name exists, so it claims the address exactly like ``O_EXCL`` does,
but the file appears with its full content or not at all (the reference creates the file, then
writes, so a crash in between leaves an empty file). A crash can leave a temporary file behind; every
writer holds the lock, so whatever temporary file exists while we hold it is debris and is removed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
from collections.abc import Iterator

from podnet.cni.errors import IOFailure
from podnet.cni.result import IPAddress
from podnet.ipam.config import canonical
from podnet.ipam.store import Reservation, format_owner, parse_owner, select_owned

LAST_RESERVED_PREFIX = "last_reserved_ip."
LOCK_NAME = "lock"
TEMP_PREFIX = ".podnet-tmp-"
FILE_MODE = 0o644
DIR_MODE = 0o755
MAX_FILE = 4096


def _ip_from_name(name: str) -> IPAddress | None:
    if not name or name[0] == "." or "%" in name:
        return None
    try:
        return canonical(ipaddress.ip_address(name))
    except ValueError:
        return None


def _io_error(what: str, exc: OSError) -> IOFailure:
    return IOFailure(what, exc.strerror or str(exc))


class DiskStore:
    """The reservations of one network under ``<data_dir>/<network>``."""

    def __init__(self, data_dir: str | os.PathLike[str], network: str, *, create: bool = True) -> None:
        self.dir = os.path.join(os.fspath(data_dir), network)
        if create:
            try:
                os.makedirs(self.dir, mode=DIR_MODE, exist_ok=True)
            except OSError as exc:
                raise _io_error(f"cannot create IPAM directory {self.dir}", exc) from None

    def exists(self) -> bool:
        return os.path.isdir(self.dir)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        try:
            fd = os.open(self._path(LOCK_NAME), os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            raise _io_error(f"cannot open IPAM lock file in {self.dir}", exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor drops the flock (and so does dying)

    # -- writing ---------------------------------------------------------------------------

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def _temp_path(self) -> str:
        return self._path(f"{TEMP_PREFIX}{os.getpid()}-{os.urandom(6).hex()}")

    @staticmethod
    def _unlink(path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def _write_temp(self, data: bytes) -> str:
        path = self._temp_path()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            self._unlink(path)
            raise
        os.close(fd)
        return path

    def _sync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _link_reservation(self, data: bytes, ip: IPAddress) -> bool:
        temp = self._write_temp(data)
        try:
            os.link(temp, self._path(str(ip)))
        except FileExistsError:
            return False
        finally:
            self._unlink(temp)
        return True

    def _write_last_reserved(self, ip: IPAddress, range_id: int) -> None:
        temp = self._write_temp(str(ip).encode())
        try:
            os.replace(temp, self._path(f"{LAST_RESERVED_PREFIX}{range_id}"))
        except BaseException:
            self._unlink(temp)
            raise

    def reserve(self, container_id: str, ifname: str, ip: IPAddress, range_id: int) -> bool:
        try:
            if not self._link_reservation(format_owner(container_id, ifname), ip):
                return False
            self._write_last_reserved(ip, range_id)
            self._sync_dir()
        except OSError as exc:
            raise _io_error(f"cannot write reservation for {ip} in {self.dir}", exc) from None
        return True

    def release(self, ip: IPAddress) -> None:
        try:
            self._unlink(self._path(str(ip)))
        except OSError as exc:
            raise _io_error(f"cannot remove reservation {self._path(str(ip))}", exc) from None

    def release_by_id(self, container_id: str, ifname: str) -> list[IPAddress]:
        released = [r.ip for r in select_owned(self.reservations(), container_id, ifname)]
        for ip in released:
            self.release(ip)
        if released:
            self._sync_dir()
        return released

    def clean_debris(self) -> int:
        removed = 0
        for entry in self._entries():
            if entry.name.startswith(TEMP_PREFIX):
                self._unlink(entry.path)
                removed += 1
        return removed

    # -- reading ---------------------------------------------------------------------------

    def _entries(self) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(self.dir) as it:
                return list(it)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise _io_error(f"cannot list IPAM directory {self.dir}", exc) from None

    def _read(self, path: str) -> bytes | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ELOOP):
                return None
            raise _io_error(f"cannot read {path}", exc) from None
        try:
            return os.read(fd, MAX_FILE)
        finally:
            os.close(fd)

    def reservations(self) -> list[Reservation]:
        out = []
        for entry in self._entries():
            ip = _ip_from_name(entry.name)
            if ip is None or not entry.is_file(follow_symlinks=False):
                continue
            data = self._read(entry.path)
            if data is not None:
                out.append(Reservation(ip, *parse_owner(data)))
        return out

    def get_by_id(self, container_id: str, ifname: str) -> list[IPAddress]:
        return [r.ip for r in select_owned(self.reservations(), container_id, ifname)]

    def last_reserved(self, range_id: int) -> IPAddress | None:
        data = self._read(self._path(f"{LAST_RESERVED_PREFIX}{range_id}"))
        if data is None:
            return None
        # A hint only: garbage (or a file from another configuration) just restarts the round robin.
        return _ip_from_name(data.decode(errors="replace").strip())
