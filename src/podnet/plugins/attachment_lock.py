"""One lock per attachment (network, container ID, ifname), shared by every process on the node.

ADD, DEL and CHECK of the veth plugins hold it around their work. Without it a DEL racing an ADD
of the same attachment (a runtime timing out and cleaning up while the ADD still runs) can
interleave: DEL finds no veth yet, ADD builds the veth and reserves the address, DEL then
releases the address, leaving a running pod whose address the next ADD hands out again.

It is an ``flock`` on a file in :data:`DEFAULT_DIR` (``PODNET_LOCK_DIR`` in the caller's
environment overrides it), so it orders plugin processes running in-process against each other
and against the daemon's worker threads alike: each call opens the file itself, and flock locks
belong to the open file, not to the process. The daemon's in-memory attachment lock stays in
front of it and only saves its threads the wait on the file.

Before it, the same calls hold the network's lock shared (:func:`network_lock`), which GC holds
exclusively: with the daemon down, a GC in one process could otherwise release the address an ADD
in another had just reserved and miss the veth that ADD made after GC listed the links.

The file is removed by the DEL that ends the attachment, while still locked. A waiter that then
gets the lock holds it on a file no longer in the directory; it notices (the path names another
inode, or none) and locks the path again, so two holders never exist at once. For the same reason
GC may remove every lock file nobody holds (:func:`sweep`): files of attachments that were never
deleted (collected by GC, or a CHECK after DEL) do not pile up.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from podnet.cni.errors import CNIError, TryAgainLater

DEFAULT_DIR = "/run/podnet/locks"
DIR_ENV = "PODNET_LOCK_DIR"
# A holder runs one ADD/DEL/CHECK; one that takes longer than this is stuck, and the runtime
# is better told to retry (code 11) than left waiting past its own timeout.
WAIT_SECONDS = 120.0


def lock_path(env: Mapping[str, str], network: str, container_id: str, ifname: str) -> str:
    digest = hashlib.sha256(f"{network}\0{container_id}\0{ifname}".encode()).hexdigest()[:40]
    return os.path.join(env.get(DIR_ENV) or DEFAULT_DIR, f"{digest}.lock")


@dataclass
class Held:
    path: str
    fd: int

    def forget(self) -> None:
        """The attachment is gone: remove its lock file (still held, see the module doc)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _open(path: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _still_linked(path: str, fd: int) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _lock(fd: int, deadline: float, path: str, mode: int = fcntl.LOCK_EX) -> None:
    """Blocking flock with a deadline: polls, backing off from 1 ms to 50 ms (contention on
    one attachment is rare and short)."""
    pause = 0.001
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if time.monotonic() >= deadline:
            raise TryAgainLater(f"another operation on this attachment still runs after {WAIT_SECONDS:.0f} s",
                                f"lock {path}")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


@contextlib.contextmanager
def attachment_lock(env: Mapping[str, str], network: str, container_id: str, ifname: str) -> Iterator[Held]:
    path = lock_path(env, network, container_id, ifname)
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            fd = _open(path)
        except OSError as exc:
            raise CNIError(f"cannot open the attachment lock {path}",
                           os.strerror(exc.errno or errno.EIO)) from None
        try:
            _lock(fd, deadline, path)
        except BaseException:
            os.close(fd)
            raise
        if _still_linked(path, fd):
            break
        os.close(fd)  # a DEL removed the file we waited on: lock the current one
    try:
        yield Held(path, fd)
    finally:
        os.close(fd)  # closing the last descriptor of the open file releases the lock


@contextlib.contextmanager
def network_lock(env: Mapping[str, str], network: str, *, exclusive: bool) -> Iterator[None]:
    """The network's lock: shared by every ADD, DEL and CHECK (taken before the attachment's),
    exclusive for GC, which decides what is stale from one listing of the node and must not see an
    ADD half done (its address reserved, its veth not made yet).

    Two files in ``<dir>/networks/``, never removed (one pair per network). ``.gate`` gives GC
    precedence: flock has no writer preference, and a steady stream of overlapping ADDs would
    keep a shared lock held forever; a GC holding the gate lets in-flight calls finish while new
    ones wait at the gate."""
    base = os.path.join(env.get(DIR_ENV) or DEFAULT_DIR, "networks",
                        hashlib.sha256(network.encode()).hexdigest()[:40])
    deadline = time.monotonic() + WAIT_SECONDS
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    with contextlib.ExitStack() as stack:
        fds = []
        for path in (f"{base}.gate", f"{base}.lock"):
            try:
                fd = _open(path)
            except OSError as exc:
                raise CNIError(f"cannot open the network lock {path}",
                               os.strerror(exc.errno or errno.EIO)) from None
            stack.callback(os.close, fd)
            _lock(fd, deadline, path, mode)
            fds.append(fd)
        if not exclusive:
            fcntl.flock(fds[0], fcntl.LOCK_UN)  # past the gate: a GC that comes now waits for us
        yield


def sweep(env: Mapping[str, str]) -> int:
    """Remove the lock files nobody holds (each while holding it, see the module doc); returns how
    many. A file in use is skipped, never waited for. Housekeeping only: it never fails GC."""
    directory = env.get(DIR_ENV) or DEFAULT_DIR
    try:
        names = [n for n in os.listdir(directory) if n.endswith(".lock")]
    except OSError:
        return 0
    removed = 0
    for name in names:
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _still_linked(path, fd):
                os.unlink(path)
                removed += 1
        except BlockingIOError:
            pass  # held: an operation on that attachment is running
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed
