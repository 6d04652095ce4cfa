"""Per-link sysfs files of another network namespace (``addr_assign_type``, which podnet doctor reports).

rtnetlink does not carry a link's ``addr_assign_type``; only sysfs shows it. ``/sys`` shows the
namespace it was mounted from (see :mod:`podnet.kernel.netns`), so the node namespace's links are
read through a sysfs instance of its own: a thread inside the namespace creates one with the mount
API (``fsopen``/``fsmount``), which tags a new sysfs with the creating thread's namespace. The
mount is detached (attached to no path, invisible to everyone) and goes away when its descriptor
is closed: nothing on the machine changes.
"""

from __future__ import annotations

import ctypes
import errno
import os

from podnet.kernel.netns import run_in_netns

# The mount API's system call numbers are the same on every architecture (asm-generic, 5.2+).
_SYS_FSOPEN, _SYS_FSCONFIG, _SYS_FSMOUNT = 430, 431, 432
_FSOPEN_CLOEXEC = 1
_FSMOUNT_CLOEXEC = 1
_FSCONFIG_CMD_CREATE = 6
_libc = ctypes.CDLL(None, use_errno=True)

NET_ADDR_PERM, NET_ADDR_RANDOM, NET_ADDR_STOLEN, NET_ADDR_SET = 0, 1, 2, 3
ASSIGN_TYPES = {NET_ADDR_PERM: "permanent", NET_ADDR_RANDOM: "random", NET_ADDR_STOLEN: "stolen",
                NET_ADDR_SET: "set"}


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _new_sysfs() -> int:
    fs = _check(_libc.syscall(_SYS_FSOPEN, b"sysfs", _FSOPEN_CLOEXEC), "fsopen sysfs")
    try:
        _check(_libc.syscall(_SYS_FSCONFIG, fs, _FSCONFIG_CMD_CREATE, None, None, 0), "fsconfig")
        return _check(_libc.syscall(_SYS_FSMOUNT, fs, _FSMOUNT_CLOEXEC, 0), "fsmount")
    finally:
        os.close(fs)


class NetSysfs:
    """A private view of ``/sys/class/net`` of one namespace (None: the caller's thread's)."""

    def __init__(self, netns: str | None) -> None:
        self._fd = run_in_netns(netns, _new_sysfs) if netns is not None else _new_sysfs()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> NetSysfs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def addr_assign_type(self, ifname: str) -> int | None:
        """The link's NET_ADDR_* value; None when the link is gone."""
        if "/" in ifname or ifname in ("", ".", ".."):
            return None
        try:
            fd = os.open(f"class/net/{ifname}/addr_assign_type", os.O_RDONLY | os.O_CLOEXEC, dir_fd=self._fd)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise
        try:
            return int(os.read(fd, 16).strip() or b"-1")
        except ValueError:
            return None
        finally:
            os.close(fd)


def _read_attr(ifname: str, attr: str) -> str | None:
    try:
        with open(f"/sys/class/net/{ifname}/{attr}", encoding="ascii") as f:
            return f.read().strip()
    except (OSError, ValueError):
        return None


def mounted_addr_assign_type(ifname: str, index: int, mac: str) -> int | None:
    """The link's NET_ADDR_* value as the process's own ``/sys`` shows it, without a new mount;
    None unless that ``/sys`` shows this very link (same name, index and MAC), as it does when it
    was mounted from the link's namespace."""
    if "/" in ifname or ifname in ("", ".", ".."):
        return None
    if _read_attr(ifname, "ifindex") != str(index) or _read_attr(ifname, "address") != mac.lower():
        return None
    value = _read_attr(ifname, "addr_assign_type")
    return int(value) if value is not None and value.isdigit() else None
