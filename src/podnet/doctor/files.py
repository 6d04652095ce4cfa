"""Removing a file doctor judged, only if it is still the file that was judged."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from podnet.doctor.findings import Changed

Stamp = tuple[int, int, int]  # inode, mtime (ns), size


def stamp(path: str | Path) -> Stamp | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def remove_if_unchanged(path: str | Path, judged: Stamp | None) -> None:
    """Unlink ``path`` if it is the same file, unchanged, that was judged; make the removal
    durable. Raises :class:`Changed` if somebody rewrote or replaced it since."""
    now = stamp(path)
    if now is None:
        return  # removed meanwhile (a DEL or GC got there first): the job is done
    if now != judged:
        raise Changed(f"{path} changed since it was examined; left alone")
    os.unlink(path)
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        with contextlib.suppress(OSError):  # some filesystems cannot sync a directory
            os.fsync(fd)
    finally:
        os.close(fd)
