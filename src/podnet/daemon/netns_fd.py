"""The pod's network namespace as the shim passed it: an open file descriptor (SCM_RIGHTS).

The daemon never resolves a caller's ``CNI_NETNS`` path: the caller may live in another mount
namespace (podman; a daemon in a container), where the path names another file or none at all.
The shim opens the path where it means something, checked to be a network namespace, and sends
the fd with the first byte of its request. The daemon checks the fd again (a peer may send
anything) and hands the plugin a :class:`CallerNetns`.

Without an fd, ADD and CHECK are refused (the shim then runs the plugin in-process, in the
caller's mount namespace, which says why the path cannot be used); DEL, which must go on when the
pod is gone, runs with no namespace, the case every plugin handles.
"""

from __future__ import annotations

import array
import os
import socket

from podnet.cni.args import pod_netns
from podnet.cni.errors import CNIError
from podnet.kernel.errors import KernelError
from podnet.kernel.netns import NetnsHandle

_FD_SIZE = array.array("i").itemsize
_ANC_SIZE = socket.CMSG_SPACE(_FD_SIZE)


class NetnsRefused(Exception):
    """The request cannot run here with the namespace it came with (the shim runs it in-process)."""


class CallerNetns(str, NetnsHandle):
    """``CNI_NETNS`` exactly as the caller gave it, and the namespace the caller opened.

    Plugins use ``args.netns`` both ways: as a string (the result's ``sandbox``, messages,
    comparisons with prevResult) and as a namespace reference for the kernel layer, which takes a
    :class:`NetnsHandle` as it is (``Netlink``, ``run_in_netns``), so no path is looked up here."""

    def __new__(cls, path: str, fd: int) -> CallerNetns:
        return super().__new__(cls, path)

    def __init__(self, path: str, fd: int) -> None:
        NetnsHandle.__init__(self, fd, path)

    def __repr__(self) -> str:
        return f"CallerNetns({str(self)!r}, fd={self._fd})"


def receive(conn: socket.socket, size: int) -> tuple[bytes, NetnsHandle | None]:
    """The first bytes of a request and the fd sent with them, if any, not yet checked (a handle
    only so that it is closed whatever happens to the request). More than one fd (or a truncated
    control message) is refused: every fd that arrived is closed first."""
    data, ancillary, flags, _ = conn.recvmsg(size, _ANC_SIZE)
    fds = array.array("i")
    for level, kind, raw in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(raw[:len(raw) - len(raw) % _FD_SIZE])
    if len(fds) > 1 or flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise NetnsRefused("more than one file descriptor sent with the request")
    return data, (NetnsHandle(fds[0], "(fd sent with the request)") if fds else None)


def for_request(command: str, path: str, passed: NetnsHandle | None) -> str:
    """The pod namespace to hand the plugin instead of CNI_NETNS (``passed`` is closed here): a
    CallerNetns, or "" for none. NetnsRefused when the request must not run here."""
    if passed is None:
        if path and command in ("ADD", "CHECK"):
            raise NetnsRefused(f"no namespace fd came with {command} (CNI_NETNS is only the caller's path)")
        return ""
    with passed:
        return _checked(command, path, passed) if path else ""


def release(netns: str) -> None:
    """Close the namespace a request was handed (nothing for a path or "")."""
    if isinstance(netns, NetnsHandle):
        netns.close()


def _checked(command: str, path: str, passed: NetnsHandle) -> str:
    # Through /proc/self/fd, the fd's own inode: kernel/netns.py looks at it with O_PATH first (a
    # FIFO or device sent by a hostile peer is never opened) and checks it is a network namespace.
    seen_as = f"/proc/self/fd/{passed.fd}"
    try:
        handle = NetnsHandle.open(seen_as)
    except KernelError as exc:
        raise NetnsRefused(f"the fd sent for CNI_NETNS is not a network namespace: {exc}") from None
    with handle:
        try:
            # The plugin's own namespace is refused for ADD/CHECK and dropped for DEL (cni.args).
            if not pod_netns(command, seen_as):
                return ""
        except CNIError as exc:
            raise NetnsRefused(f"CNI_NETNS: {exc}") from None
        return CallerNetns(path, os.dup(handle.fd))
