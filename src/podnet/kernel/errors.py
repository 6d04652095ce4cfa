"""Typed kernel errors, and the one place where errno values become them.

Every failure that comes out of ``podnet.kernel`` is a :class:`KernelError`, itself a
:class:`~podnet.cni.errors.CNIError`, so the plugin skel reports it with a CNI code
without knowing about netlink. Where a kernel condition has a natural CNI meaning the
class also derives from the matching CNI class (a missing namespace *is* an unknown
container, an interrupted dump *is* "try again later"), so callers may catch either.

podnet's own netlink socket reports a kernel errno and plain system calls raise ``OSError``;
both go through :func:`from_exception` / :func:`from_errno` here and nowhere else.
"""

from __future__ import annotations

import errno as _errno
import os
from typing import Literal

from podnet.cni.errors import (
    INTERNAL,
    TRY_AGAIN_LATER,
    UNKNOWN_CONTAINER,
    CNIError,
    TryAgainLater,
    UnknownContainer,
)

# What an operation was about; it decides how an ambiguous errno (ENOENT) is read.
Subject = Literal["link", "address", "route", "neighbour", "rule", "netns", "sysctl", "dump"]


class KernelError(CNIError):
    """A kernel operation failed; ``errno`` is the kernel's error number when there is one."""

    code = INTERNAL

    def __init__(self, msg: str, details: str = "", *, errno: int | None = None,
                 code: int | None = None) -> None:
        super().__init__(msg, details, code=code)
        self.errno = errno


class NotFound(KernelError):
    """The object (address, route, neighbour, sysctl, ...) does not exist."""


class LinkNotFound(NotFound):
    """No link with that name or index in the namespace."""


class NetnsNotFound(NotFound, UnknownContainer):
    """The network namespace path does not exist or is not a network namespace."""

    code = UNKNOWN_CONTAINER


class Exists(KernelError):
    """The object already exists (EEXIST)."""


class PermissionDenied(KernelError):
    """EPERM / EACCES: not root, or the namespace is not ours."""


class InvalidArgument(KernelError):
    """The kernel refused the request's values (EINVAL, ERANGE, bad MAC, ...)."""


class NotSupported(KernelError):
    """The kernel lacks the feature (EOPNOTSUPP: e.g. a link kind whose module is missing)."""


class DumpInterrupted(KernelError, TryAgainLater):
    """Every attempt of a netlink dump was flagged NLM_F_DUMP_INTR: no consistent snapshot."""

    code = TRY_AGAIN_LATER

    def __init__(self, msg: str, details: str = "", *, attempts: int) -> None:
        super().__init__(msg, details, errno=_errno.EINTR)
        self.attempts = attempts


_NOT_FOUND = frozenset({_errno.ENOENT, _errno.ESRCH, _errno.EADDRNOTAVAIL, _errno.ENXIO})


def from_errno(err: int, subject: Subject, what: str, reason: str = "") -> KernelError:
    """Map a kernel errno to the most specific :class:`KernelError`.

    ``what`` names the object ("link veth1", "route 10.0.0.0/24") for the message;
    ``reason`` is the kernel's extended-ack text when it sent one.
    """
    details = reason or os.strerror(err)
    msg = f"{what}: {_VERB.get(err, 'failed')}"
    if err == _errno.EADDRNOTAVAIL and subject == "link":
        # On a link write it means the hardware address given is unusable, not a missing link.
        return InvalidArgument(f"{what}: hardware address not usable", details, errno=err)
    if err == _errno.ENODEV or (err in _NOT_FOUND and subject == "link"):
        return LinkNotFound(msg, details, errno=err)
    if err in _NOT_FOUND:
        klass: type[KernelError] = NetnsNotFound if subject == "netns" else NotFound
        return klass(msg, details, errno=err)
    klass = _BY_ERRNO.get(err, KernelError)
    return klass(msg, details, errno=err)


def from_exception(exc: BaseException, subject: Subject, what: str) -> KernelError:
    """Translate an OSError; anything else is a 999 KernelError."""
    if isinstance(exc, KernelError):
        return exc
    if isinstance(exc, OSError) and exc.errno is not None:
        return from_errno(exc.errno, subject, what)
    return KernelError(f"{what}: failed", f"{type(exc).__name__}: {exc}")


_BY_ERRNO: dict[int, type[KernelError]] = {
    _errno.EEXIST: Exists,
    _errno.EPERM: PermissionDenied,
    _errno.EACCES: PermissionDenied,
    _errno.EINVAL: InvalidArgument,
    _errno.ERANGE: InvalidArgument,
    _errno.EADDRINUSE: Exists,
    _errno.EOPNOTSUPP: NotSupported,
}

_VERB: dict[int, str] = {
    _errno.ENODEV: "no such link",
    _errno.ENOENT: "not found",
    _errno.ESRCH: "not found",
    _errno.EADDRNOTAVAIL: "not found",
    _errno.EEXIST: "already exists",
    _errno.EPERM: "permission denied",
    _errno.EACCES: "permission denied",
    _errno.EINVAL: "invalid argument",
    _errno.ERANGE: "value out of range",
    _errno.EBUSY: "busy",
    _errno.ENETUNREACH: "network unreachable",
    _errno.EOPNOTSUPP: "not supported",
}

__all__ = [
    "CNIError",
    "DumpInterrupted",
    "Exists",
    "InvalidArgument",
    "KernelError",
    "LinkNotFound",
    "NetnsNotFound",
    "NotFound",
    "NotSupported",
    "PermissionDenied",
    "Subject",
    "from_errno",
    "from_exception",
]
