"""inotify(7), as much of it as watching one directory for changes takes (no third-party module).

A :class:`DirWatch` tells which names in a directory were created, deleted, renamed or written
since it was last asked. The kernel queues an event inside the system call that made the
change, so once ``link`` or ``unlink`` has returned, its event is already readable.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys

from podnet.kernel.errors import from_errno

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
CHANGES = (IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF
           | IN_MOVE_SELF)
# The watch itself is gone or events were lost: nothing about the directory is known any more.
LOST = IN_DELETE_SELF | IN_MOVE_SELF | IN_Q_OVERFLOW | IN_IGNORED
_EVENT = struct.Struct("=iIII")  # wd, mask, cookie, len (then len bytes of NUL-padded name)
# Filesystems whose every change goes through this kernel, so inotify reports all of them
# (statfs f_type): ext2/3/4, xfs, btrfs, tmpfs. Not NFS, CIFS, FUSE or overlayfs, where another
# machine or a lower layer can change a directory without any event here.
LOCAL_FILESYSTEMS = frozenset({0xEF53, 0x58465342, 0x9123683E, 0x01021994})

_libc = ctypes.CDLL(None, use_errno=True)


def sees_every_change(path: str) -> bool:
    """Whether inotify on ``path`` reports every change to it (a local filesystem)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type (a long) comes first
    if _libc.statfs(os.fsencode(path), buf) != 0:
        return False
    f_type = int.from_bytes(buf.raw[:ctypes.sizeof(ctypes.c_long)], sys.byteorder, signed=True)
    return f_type in LOCAL_FILESYSTEMS


class DirWatch:
    """A non-blocking inotify instance watching one directory (not its subdirectories)."""

    def __init__(self, path: str) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        if _libc.inotify_add_watch(fd, os.fsencode(path), CHANGES | IN_ONLYDIR) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, os.strerror(err))
        self.fd = fd

    def changes(self) -> tuple[set[str], bool]:
        """(names changed since the last call, whether the directory itself was lost or events
        were dropped). Never blocks."""
        names: set[str] = set()
        lost = False
        while True:
            try:
                buf = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return names, lost
            except OSError as exc:
                raise from_errno(exc.errno or 0, "dump", "inotify read") from None
            off = 0
            while off + _EVENT.size <= len(buf):
                _wd, mask, _cookie, size = _EVENT.unpack_from(buf, off)
                raw = buf[off + _EVENT.size: off + _EVENT.size + size]
                off += _EVENT.size + size
                lost = lost or bool(mask & LOST)
                if raw:
                    names.add(os.fsdecode(raw.rstrip(b"\0")))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()
