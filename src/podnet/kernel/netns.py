"""Network namespaces: open by name or path (never create one), run code and open sockets inside.

How namespaces behave, measured on Linux 6.x and relied on here:

* ``setns(fd, CLONE_NEWNET)`` moves only the calling *thread*. A socket keeps the
  namespace it was created in for its whole life, whichever thread uses it later. So a
  netlink socket for namespace X is made by a thread inside X (see :func:`run_in_netns`):
  ~0.01-0.15 ms, against ~8 ms for pyroute2's ``IPRoute(netns=...)``, which forks a
  helper process per socket.
* ``/proc/sys/net/...`` is resolved against the namespace of the thread that opens the
  file, so sysctls are read and written from a thread inside the namespace.
* ``/proc/net`` and ``/proc/self/net`` follow the thread-group leader (the main thread),
  not the calling thread; only ``/proc/thread-self/net`` follows a thread that entered
  another namespace. Nothing in podnet reads ``/proc/net``; anyone who must, uses
  ``/proc/thread-self/net``.
* ``/sys/class/net`` shows the namespace sysfs was *mounted* from, not the thread's,
  so per-link sysfs files of another namespace (``addr_assign_type``) are not reachable
  this way; ``ip netns exec`` remounts /sys in a private mount namespace for that.
* Processes started by a thread inside a namespace start in that namespace.

pyroute2 opens namespaces with ``os.O_CREAT`` by default and so silently creates a new,
empty namespace for a mistyped name. Here a namespace is only ever opened read-only
without ``O_CREAT``, and only after an ``O_PATH`` look showed a regular file (a FIFO, a tty
or a device is never opened); the file is then checked with the ``NS_GET_NSTYPE`` ioctl: a
stale regular file left under /run/netns by a crashed runtime is refused too.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

from podnet.kernel.errors import KernelError, NetnsNotFound, PermissionDenied, from_errno

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3): which kind of namespace an nsfs fd refers to
_THREAD_NETNS = "/proc/thread-self/ns/net"

_libc = ctypes.CDLL(None, use_errno=True)

P = ParamSpec("P")
T = TypeVar("T")


def netns_path(ref: str) -> str:
    """/run/netns/NAME for a bare name; an absolute path (/proc/PID/ns/net, ...) as is."""
    if ref.startswith("/"):
        return ref
    if not ref or "/" in ref or ref in (".", ".."):
        raise NetnsNotFound(f"netns {ref!r}: not a namespace name or absolute path")
    return os.path.join(NETNS_RUN_DIR, ref)


class NetnsHandle:
    """An open file descriptor on a network namespace; it keeps the namespace alive."""

    def __init__(self, fd: int, path: str) -> None:
        self._fd = fd
        self.path = path

    @classmethod
    def open(cls, ref: str) -> NetnsHandle:
        """Open by name or path. Missing or not a network namespace: NetnsNotFound."""
        path = netns_path(ref)
        fd = _open_nsfs(path)
        try:
            _check_netns(fd, path)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, path)

    @classmethod
    def current(cls) -> NetnsHandle:
        """The calling thread's namespace (not necessarily the process's)."""
        return cls(os.open(_THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC), _THREAD_NETNS)

    @property
    def fd(self) -> int:
        if self._fd < 0:
            raise KernelError(f"netns {self.path}: handle is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def identity(self) -> tuple[int, int]:
        """(device, inode) of the namespace: equal for two handles on the same one."""
        st = os.fstat(self.fd)
        return st.st_dev, st.st_ino

    def dup(self) -> NetnsHandle:
        return NetnsHandle(os.dup(self.fd), self.path)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> NetnsHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"NetnsHandle({self.path!r}, fd={self._fd})"


NetnsRef = str | NetnsHandle


class NetnsUnusable(KernelError):
    """The path cannot be looked at (symlink loop, too long, I/O error): whether a namespace is
    there is unknown, so this is not NetnsNotFound's "unknown container" (code 3) but code 999,
    the code the Go plugins give for any namespace path they cannot open."""


_NOT_THERE = frozenset({errno.ENOENT, errno.ENOTDIR})
_UNUSABLE = {errno.ELOOP: "too many levels of symbolic links", errno.ENAMETOOLONG: "path too long"}
_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _shown(path: str) -> str:
    """The path for a message: a 10,000-character one must not become the message."""
    return path if len(path) <= 200 else f"{path[:100]}...({len(path)} characters)"


def _open_nsfs(path: str) -> int:
    """An fd on the nsfs inode at ``path``, without opening anything that is not a regular file.

    A namespace file is a regular (nsfs) file. Opening the path for reading would block forever on
    a FIFO, could make a tty the process's controlling terminal and has side effects on some devices,
    so the path is opened with O_PATH (no open of the file itself), the type checked, and only then
    the same inode reopened for reading through /proc/self/fd (no second path lookup)."""
    try:
        pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as exc:
        raise _open_error(exc, path) from None
    try:
        mode = os.fstat(pfd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
            raise NetnsNotFound(f"netns {_shown(path)}: not a network namespace ({kind})")
        return os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise _open_error(exc, path) from None
    finally:
        os.close(pfd)


def _open_error(exc: OSError, path: str) -> KernelError:
    err = exc.errno or 0
    shown = _shown(path)
    if err in _NOT_THERE:
        return NetnsNotFound(f"netns {shown}: not found", os.strerror(err))
    if err in (errno.EACCES, errno.EPERM):
        return PermissionDenied(f"netns {shown}: permission denied", os.strerror(err), errno=err)
    reason = _UNUSABLE.get(err, os.strerror(err))
    return NetnsUnusable(f"netns {shown}: cannot be opened: {reason}", errno=err)


def _check_netns(fd: int, path: str) -> None:
    try:
        nstype = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError as exc:
        # ENOTTY/EINVAL: a regular file (a bind mount that is gone), not an nsfs inode.
        raise NetnsNotFound(f"netns {_shown(path)}: not a namespace", exc.strerror or "") from None
    if nstype != CLONE_NEWNET:
        raise NetnsNotFound(f"netns {_shown(path)}: not a network namespace", f"nstype {nstype:#x}")


def _setns(handle: NetnsHandle) -> None:
    if _libc.setns(handle.fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise from_errno(err, "netns", f"setns {handle.path}")


@contextmanager
def opened(ref: NetnsRef) -> Iterator[NetnsHandle]:
    """A handle for ref; closed afterwards only if it was opened here."""
    if isinstance(ref, NetnsHandle):
        yield ref
        return
    with NetnsHandle.open(ref) as handle:
        yield handle


@contextmanager
def entered(ref: NetnsRef) -> Iterator[NetnsHandle]:
    """Run the ``with`` body with the *calling thread* inside the namespace.

    The thread is switched back on exit, also on error. Prefer :func:`run_in_netns`,
    which never moves the caller: code in the body that starts threads or keeps
    sockets must know which namespace it is in.
    """
    with opened(ref) as target, NetnsHandle.current() as home:
        _setns(target)
        try:
            yield target
        finally:
            try:
                _setns(home)
            except KernelError as exc:
                # Only possible if the kernel refuses a namespace we hold an fd on;
                # carrying on would run the rest of the program in the wrong one.
                raise KernelError("cannot return thread to its namespace", str(exc)) from exc


def run_in_netns(ref: NetnsRef, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Call ``fn`` inside the namespace and return its result (exceptions propagate).

    Three ways, cheapest first, all leaving the caller's thread where it was:

    * the calling thread is in the namespace already: ``fn`` is simply called;
    * any thread but the main one (the daemon's workers) enters the namespace, calls ``fn``
      and comes back (:func:`entered`, ~0.01 ms). Python runs signal handlers in the main
      thread only, so in another thread nothing can raise between entering and the
      ``finally`` that comes back;
    * the main thread hands ``fn`` to a short-lived thread that enters the namespace and ends
      there (~0.15 ms): a signal handler that raises (SIGTERM in a plugin) can never leave
      the main thread in the wrong namespace.
    """
    with opened(ref) as handle:
        if _is_current(handle):
            return fn(*args, **kwargs)
        if threading.current_thread() is not threading.main_thread():
            with entered(handle):
                return fn(*args, **kwargs)
        return _run_in_thread(handle, fn, *args, **kwargs)


def _is_current(handle: NetnsHandle) -> bool:
    st = os.stat(_THREAD_NETNS)
    return handle.identity() == (st.st_dev, st.st_ino)


def _run_in_thread(handle: NetnsHandle, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    result: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            _setns(handle)
            result.append(fn(*args, **kwargs))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=body, name="podnet-netns", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def socket_in_netns(ref: NetnsRef | None, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket that belongs to the namespace (None: the calling thread's own)."""
    kind |= socket.SOCK_CLOEXEC
    if ref is None:
        return socket.socket(family, kind, proto)
    return run_in_netns(ref, socket.socket, family, kind, proto)


def list_netns(run_dir: str = NETNS_RUN_DIR) -> list[str]:
    """Names under /run/netns (what ``ip netns list`` shows)."""
    try:
        return sorted(os.listdir(run_dir))
    except FileNotFoundError:
        return []


def netns_exists(ref: str) -> bool:
    try:
        NetnsHandle.open(ref).close()
    except NetnsNotFound:
        return False
    return True


__all__ = [
    "NETNS_RUN_DIR",
    "NetnsHandle",
    "NetnsRef",
    "NetnsUnusable",
    "entered",
    "list_netns",
    "netns_exists",
    "netns_path",
    "opened",
    "run_in_netns",
    "socket_in_netns",
]
