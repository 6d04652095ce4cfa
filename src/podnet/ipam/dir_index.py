"""What a network's IPAM directory holds (reservations and crash debris), kept in memory between
calls so that the lock is not spent re-reading every reservation file.

Reading the directory costs one ``open``/``read``/``close`` per reservation, ~1 ms for 250 pods,
all of it while the network's lock is held (and, in the daemon, each of those calls can wait for
the GIL). The daemon keeps a :class:`DirIndex` per directory instead and trusts it only while
nothing but this process changed the directory:

* an inotify watch on the directory reports every name created, deleted, renamed or written;
* under the lock, the holder records the names it touches itself; when it releases the lock, any
  other relevant name in the watch's queue means someone changed the directory without the lock
  (an operator, say), and the index is dropped;
* when the next holder takes the lock, any relevant name in the queue is a change another process
  made meanwhile (a shim running in-process, Go's host-local sharing the directory): the index is
  dropped and the directory is read again;
* a lost watch (directory removed or replaced, events dropped), no inotify at all, or a
  filesystem where changes can happen elsewhere (NFS, FUSE, overlayfs: another machine or a
  lower layer changes it without an event here) means the directory is read on every lock,
  as before.

The kernel queues an inotify event inside the system call that makes the change, so nothing a
writer did before releasing the lock can be missed by the next holder.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import ipaddress
import os
import threading
from dataclasses import dataclass, field

from podnet.cni.errors import IOFailure
from podnet.cni.result import IPAddress
from podnet.ipam.fields import canonical
from podnet.ipam.store import Reservation, parse_owner
from podnet.kernel.inotify import DirWatch, sees_every_change

TEMP_PREFIX = ".podnet-tmp-"
MAX_FILE = 4096
MAX_INDEXES = 16  # directories remembered per process (one inotify instance each)


def ip_from_name(name: str) -> IPAddress | None:
    if not name or name[0] == "." or "%" in name:
        return None
    try:
        return canonical(ipaddress.ip_address(name))
    except ValueError:
        return None


def relevant(name: str) -> bool:
    """Names the index describes: reservations and temporary files."""
    return name.startswith(TEMP_PREFIX) or ip_from_name(name) is not None


def io_error(what: str, exc: OSError) -> IOFailure:
    return IOFailure(what, exc.strerror or str(exc))


def read_file(path: str) -> bytes | None:
    """Up to MAX_FILE bytes; None when the file is gone (or a symlink, which is never followed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP):
            return None
        raise io_error(f"cannot read {path}", exc) from None
    try:
        return os.read(fd, MAX_FILE)
    finally:
        os.close(fd)


def file_name(ip: IPAddress) -> str:
    """The one name an address is reserved under: the canonical form, so an IPv4-mapped address
    is named as IPv4 (as the reference names it)."""
    return str(canonical(ip))


@dataclass
class DirView:
    reservations: dict[str, Reservation] = field(default_factory=dict)  # by file name
    debris: set[str] = field(default_factory=set)  # temporary files (names)
    # Reservation files named in another form than file_name(ip) (``::ffff:ad4:3202`` written by an
    # older version): rare, kept apart so releasing an address finds them without a full scan.
    aliases: dict[IPAddress, set[str]] = field(default_factory=dict)

    def add(self, name: str, reservation: Reservation) -> None:
        self.reservations[name] = reservation
        if name != file_name(reservation.ip):
            self.aliases.setdefault(reservation.ip, set()).add(name)

    def names_of(self, ip: IPAddress) -> set[str]:
        """Every file name that reserves ``ip``."""
        return {file_name(ip), *self.aliases.get(canonical(ip), ())}

    def drop(self, name: str) -> None:
        found = self.reservations.pop(name, None)
        if found is not None and found.ip in self.aliases:
            self.aliases[found.ip].discard(name)
            if not self.aliases[found.ip]:
                del self.aliases[found.ip]


def scan(path: str) -> DirView:
    """Read the directory: every reservation file's owner, every temporary file's name."""
    view = DirView()
    try:
        with os.scandir(path) as it:
            entries = list(it)
    except FileNotFoundError:
        return view
    except OSError as exc:
        raise io_error(f"cannot list IPAM directory {path}", exc) from None
    for entry in entries:
        if entry.name.startswith(TEMP_PREFIX):
            view.debris.add(entry.name)
            continue
        ip = ip_from_name(entry.name)
        if ip is None or not entry.is_file(follow_symlinks=False):
            continue
        data = read_file(entry.path)
        if data is not None:
            view.add(entry.name, Reservation(ip, *parse_owner(data)))
    return view


class DirIndex:
    """One directory's view and watch. Used only by the holder of the directory's lock."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._identity: tuple[int, int] | None = None
        self._watch: DirWatch | None = None
        self._view: DirView | None = None

    def begin(self) -> None:
        """The lock was just taken: forget the view if the directory changed since ``end``."""
        st = os.stat(self.path)
        if (st.st_dev, st.st_ino) != self._identity:
            self._reset()
            self._identity = (st.st_dev, st.st_ino)
        else:
            self._check(set())

    def view(self) -> DirView:
        if self._view is None:
            if self._watch is None and sees_every_change(self.path):
                with contextlib.suppress(OSError):  # no inotify (or no instances left): read every time
                    self._watch = DirWatch(self.path)  # before reading, so no change can slip between
            self._view = scan(self.path)
        return self._view

    def forget(self) -> None:
        """The view proved wrong (a file it did not know): read the directory again."""
        self._view = None

    def end(self, touched: set[str]) -> None:
        """The lock is about to be released: keep the view only if every change was ours."""
        self._check(touched)
        if self._watch is None:
            self._view = None

    def _check(self, ours: set[str]) -> None:
        if self._watch is None:
            self._view = None
            return
        names, lost = self._watch.changes()
        if lost:
            self._reset()
        elif any(relevant(n) for n in names if n not in ours):
            self._view = None

    def _reset(self) -> None:
        if self._watch is not None:
            self._watch.close()
        self._watch = None
        self._view = None


_indexes: collections.OrderedDict[str, DirIndex] = collections.OrderedDict()
_indexes_lock = threading.Lock()


def index_for(path: str) -> DirIndex:
    """The process's index of ``path`` (the least recently used one is forgotten beyond
    MAX_INDEXES; its watch closes when the last user lets go of it)."""
    with _indexes_lock:
        found = _indexes.get(path)
        if found is None:
            found = _indexes[path] = DirIndex(path)
            while len(_indexes) > MAX_INDEXES:
                _indexes.popitem(last=False)
        _indexes.move_to_end(path)
        return found
