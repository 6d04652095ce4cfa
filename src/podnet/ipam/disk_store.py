"""host-local's on-disk store, in the reference layout so operators' tools and habits keep working.

``<dataDir>/<network>/``
  ``<ip>``                   one file per reservation, content ``<containerID>\\r\\n<ifname>``
  ``last_reserved_ip.<N>``   the address range set N handed out last (round-robin cursor)
  ``lock``                   ``flock``-ed for the whole allocation; the reference takes the same lock,
                             so both can share a data directory

Crash safety: a reservation file is written as an unnamed file (``O_TMPFILE``) in the directory,
fsync-ed, then ``link``-ed to the IP's name. ``link`` fails when the name exists, so it claims the
address exactly like ``O_EXCL`` does, but the file appears with its full content or not at all (the
reference creates the file, then writes, so a crash in between leaves an empty file). An unnamed file
vanishes with the process that made it, so it can be written and synced *before* the lock is taken
(:meth:`DiskStore.prepared`), and the lock is held only for the ``link``. The directory is fsync-ed
once, after the lock is released and before the caller goes on: a reservation that was reported is
on disk. Where ``O_TMPFILE`` is not supported the file is written under a temporary name while the
lock is held. A failure after the ``link`` (writing ``last_reserved_ip.N`` here, the directory sync
in the allocator) takes the reservation back: a failed ADD leaves nothing reserved.

``last_reserved_ip.N`` is only a hint (garbage restarts the round robin): it is replaced atomically
(temporary name, ``rename``), so no reader ever sees half of it, but it is not fsync-ed.

Temporary names are only ever created while the lock is held, so whatever temporary file exists while
we hold it is debris of a writer that died, and is removed.

What the directory holds is read through :mod:`podnet.ipam.dir_index`: in a long-running process
(the daemon) it is read once and then kept up to date, as long as nobody else changes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from podnet.cni.result import IPAddress
from podnet.ipam.dir_index import TEMP_PREFIX, DirIndex, DirView, file_name, index_for, read_file
from podnet.ipam.dir_index import io_error as _io_error
from podnet.ipam.dir_index import ip_from_name as _ip_from_name
from podnet.ipam.fields import canonical
from podnet.ipam.store import Reservation, format_owner, parse_owner, select_owned

LAST_RESERVED_PREFIX = "last_reserved_ip."
LOCK_NAME = "lock"
FILE_MODE = 0o644
DIR_MODE = 0o755
__all__ = ["LAST_RESERVED_PREFIX", "LOCK_NAME", "TEMP_PREFIX", "DiskStore"]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class DiskStore:
    """The reservations of one network under ``<data_dir>/<network>``."""

    def __init__(self, data_dir: str | os.PathLike[str], network: str, *, create: bool = True) -> None:
        self.dir = os.path.join(os.fspath(data_dir), network)
        self._changed = False  # something was written under the current lock: sync the directory
        self._ready: list[tuple[bytes, int]] = []  # prepared unnamed files: (content, fd)
        self._index: DirIndex | None = None  # while the lock is held
        self._touched: set[str] = set()  # names this holder created, removed or renamed
        if create:
            try:
                os.makedirs(self.dir, mode=DIR_MODE, exist_ok=True)
            except OSError as exc:
                raise _io_error(f"cannot create IPAM directory {self.dir}", exc) from None

    def exists(self) -> bool:
        return os.path.isdir(self.dir)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """The network's flock. What was changed under it is made durable (one directory fsync)
        after the lock is dropped, so other writers do not wait for the disk."""
        try:
            fd = os.open(self._path(LOCK_NAME), os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            raise _io_error(f"cannot open IPAM lock file in {self.dir}", exc) from None
        self._changed = False
        self._touched = set()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._index = index_for(self.dir)
            self._index.begin()
            yield
            self._index.end(self._touched)
        finally:
            self._index = None
            os.close(fd)  # closing the descriptor drops the flock (and so does dying)
        if self._changed:
            try:
                self._sync_dir()
            except OSError as exc:
                raise _io_error(f"cannot sync IPAM directory {self.dir}", exc) from None

    @contextlib.contextmanager
    def prepared(self, container_id: str, ifname: str, count: int) -> Iterator[None]:
        """Write and sync up to ``count`` reservation files for the attachment before the lock is
        taken (unnamed, so unused ones vanish on exit, and a crash leaves nothing)."""
        data = format_owner(container_id, ifname)
        try:
            for _ in range(count):
                self._ready.append((data, self._unnamed_file(data)))
        except OSError:
            pass  # no O_TMPFILE here: reserve() writes named temporary files for the rest
        try:
            yield
        finally:
            for _, fd in self._ready:
                os.close(fd)
            self._ready = []

    # -- writing ---------------------------------------------------------------------------

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def _temp_path(self) -> str:
        name = f"{TEMP_PREFIX}{os.getpid()}-{os.urandom(6).hex()}"
        self._touched.add(name)
        return self._path(name)

    def _view(self) -> DirView:
        if self._index is None:
            raise RuntimeError("IPAM store used without holding its lock")
        return self._index.view()

    @staticmethod
    def _unlink(path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def _write_temp(self, data: bytes, *, sync: bool = True) -> str:
        path = self._temp_path()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            _write_all(fd, data)
            if sync:
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

    def _unnamed_file(self, data: bytes) -> int:
        """An O_TMPFILE in the directory holding ``data``, synced: linking it publishes it whole."""
        fd = os.open(self.dir, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, FILE_MODE)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _take_ready(self, data: bytes) -> int | None:
        for i, (ready, fd) in enumerate(self._ready):
            if ready == data:
                del self._ready[i]
                return fd
        return None

    def _link_reservation(self, data: bytes, ip: IPAddress) -> bool:
        self._touched.add(file_name(ip))
        fd = self._take_ready(data)
        if fd is None:
            return self._link_named(data, ip)
        try:
            # linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/N names the unnamed file (no
            # CAP_DAC_READ_SEARCH needed, unlike AT_EMPTY_PATH). Python calls plain link(),
            # which would link the /proc symlink itself, unless a directory fd is given.
            dir_fd = os.open(self.dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.link(f"/proc/self/fd/{fd}", file_name(ip), dst_dir_fd=dir_fd, follow_symlinks=True)
            finally:
                os.close(dir_fd)
        except FileExistsError:
            self._ready.append((data, fd))  # still unnamed: good for the next candidate
            return False
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return True

    def _link_named(self, data: bytes, ip: IPAddress) -> bool:
        temp = self._write_temp(data)
        try:
            os.link(temp, self._path(file_name(ip)))
        except FileExistsError:
            return False
        finally:
            self._unlink(temp)
        return True

    def _write_last_reserved(self, ip: IPAddress, range_id: int) -> None:
        # A hint: atomic (readers see the old or the new address) but not synced.
        temp = self._write_temp(str(ip).encode(), sync=False)
        try:
            os.replace(temp, self._path(f"{LAST_RESERVED_PREFIX}{range_id}"))
        except BaseException:
            self._unlink(temp)
            raise

    def reserve(self, container_id: str, ifname: str, ip: IPAddress, range_id: int) -> bool:
        view = self._view()
        data = format_owner(container_id, ifname)
        try:
            linked = self._link_reservation(data, ip)
        except OSError as exc:
            raise _io_error(f"cannot write reservation for {ip} in {self.dir}", exc) from None
        if not linked:
            # The view said free: somebody wrote without the lock. Read the directory again.
            if self._index is not None:
                self._index.forget()
            return False
        self._changed = True
        try:
            self._write_last_reserved(ip, range_id)
        except BaseException as exc:
            # The address is linked but ADD is about to fail: a reservation nobody reported would
            # leak (a runtime never DELs a failed ADD), so it is taken back before reporting.
            self._unlink_reservation(ip)
            if not isinstance(exc, OSError):
                raise
            raise _io_error(f"cannot write {LAST_RESERVED_PREFIX}{range_id} in {self.dir} after reserving "
                            f"{ip}; the reservation was released", exc) from None
        view.add(file_name(ip), Reservation(canonical(ip), *parse_owner(data)))
        return True

    def _unlink_reservation(self, ip: IPAddress) -> None:
        path = self._path(file_name(ip))
        try:
            self._unlink(path)
        except OSError as exc:
            if self._index is not None:
                self._index.forget()  # the file may still be there: read the directory next time
            raise _io_error(f"cannot release {path} after a failed reservation", exc) from None

    def release(self, ip: IPAddress) -> None:
        """Every file that reserves ``ip``, whatever form of the address names it."""
        view = self._view()
        for name in sorted(view.names_of(ip)):
            self._remove(view, name)

    def _remove(self, view: DirView, name: str) -> None:
        self._touched.add(name)
        try:
            self._unlink(self._path(name))
        except OSError as exc:
            raise _io_error(f"cannot remove reservation {self._path(name)}", exc) from None
        view.drop(name)
        self._changed = True

    def release_by_id(self, container_id: str, ifname: str) -> list[IPAddress]:
        # By file name: another attachment's file naming the same address in another form stays.
        view = self._view()
        owned = select_owned(view.reservations.values(), container_id, ifname)
        wanted = set(owned)
        for name in [name for name, r in view.reservations.items() if r in wanted]:
            self._remove(view, name)
        return list(dict.fromkeys(r.ip for r in owned))

    def clean_debris(self) -> int:
        debris = self._view().debris
        removed = len(debris)
        for name in debris:
            self._touched.add(name)
            try:
                self._unlink(self._path(name))
            except OSError as exc:
                raise _io_error(f"cannot remove {self._path(name)}", exc) from None
        debris.clear()
        return removed

    # -- reading ---------------------------------------------------------------------------

    def reservations(self) -> list[Reservation]:
        return list(self._view().reservations.values())

    def get_by_id(self, container_id: str, ifname: str) -> list[IPAddress]:
        return [r.ip for r in select_owned(self.reservations(), container_id, ifname)]

    def last_reserved(self, range_id: int) -> IPAddress | None:
        data = read_file(self._path(f"{LAST_RESERVED_PREFIX}{range_id}"))
        if data is None:
            return None
        # A hint only: garbage (or a file from another configuration) just restarts the round robin.
        return _ip_from_name(data.decode(errors="replace").strip())
