"""Who is calling the daemon, read without trusting a process ID that can be reused.

The daemon must do nothing for a caller that the caller could not do itself. Being uid 0 is not
enough: a root process with every capability dropped can still open the 0600 socket. So the
caller's *effective* capabilities must include CAP_NET_ADMIN and CAP_SYS_ADMIN (what the plugins
need: links, addresses and routes; entering the pod's namespaces), it must be in the daemon's user
namespace (capabilities in a child user namespace mean nothing here) and, when asked, in its
network namespace.

Those facts live in ``/proc/<pid>``, and a bare pid names whichever process has it *now*. The
socket's ``SO_PEERPIDFD`` (Linux 6.5) is a pidfd for the process that connected: the daemon reads
``/proc/<pid>/...`` and then confirms through the pidfd (``pidfd_send_signal`` with signal 0) that
the very process still exists. While it does (even as a zombie) its pid cannot be given to another
process, so what was read belongs to the caller. A kernel without ``SO_PEERPIDFD`` gets every call
refused (the shims then run the plugin in-process, with the caller's own rights): never a guess.

Capabilities are per thread and the pid is the process's (its main thread's status is read). A
thread cannot hide behind that: it shares its memory with the main thread, so whatever the main
thread may do, the whole process may.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
from dataclasses import dataclass

SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
REQUIRED_CAPS = {CAP_NET_ADMIN: "CAP_NET_ADMIN", CAP_SYS_ADMIN: "CAP_SYS_ADMIN"}


class PeerRefused(Exception):
    """The caller may not use the daemon; ``reason`` is the short label for logs and metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int
    cap_eff: int = 0
    netns: tuple[int, int] | None = None
    userns: tuple[int, int] | None = None


def ns_identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def cap_eff(status: bytes) -> int:
    """The ``CapEff`` mask of a ``/proc/<pid>/status`` text."""
    start = status.find(b"\nCapEff:")
    if start < 0:
        raise ValueError("no CapEff line")
    return int(status[start + 8:status.index(b"\n", start + 1)].strip(), 16)


def _read_small(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 16384)
    finally:
        os.close(fd)


def alive(pidfd: int) -> bool:
    """Whether the process the pidfd names still exists (signal 0 checks, sends nothing)."""
    try:
        signal.pidfd_send_signal(pidfd, 0)
    except ProcessLookupError:
        return False
    return True


def read_peer(conn: socket.socket) -> Peer:
    """The connected process's credentials, effective capabilities and namespaces."""
    pid, uid, gid = _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    try:
        pidfd = conn.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError as exc:
        raise PeerRefused("peer-unknown", f"cannot pin the calling process (SO_PEERPIDFD: {exc})") from None
    try:
        try:
            caps = cap_eff(_read_small(f"/proc/{pid}/status"))
            netns = ns_identity(f"/proc/{pid}/ns/net")
            userns = ns_identity(f"/proc/{pid}/ns/user")
        except (OSError, ValueError) as exc:
            raise PeerRefused("peer-gone", f"cannot read the calling process {pid}: {exc}") from None
        if not alive(pidfd):
            # What was read may belong to another process that got the pid in the meantime.
            raise PeerRefused("peer-gone", f"the calling process {pid} exited before it could be checked")
    finally:
        os.close(pidfd)
    return Peer(pid, uid, gid, caps, netns, userns)


def missing_caps(peer: Peer) -> list[str]:
    return [name for bit, name in REQUIRED_CAPS.items() if not peer.cap_eff >> bit & 1]
