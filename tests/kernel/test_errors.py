"""The one errno -> typed error mapping (no root)."""

from __future__ import annotations

import errno

import pytest

from podnet.cni.errors import CNIError, TryAgainLater, UnknownContainer
from podnet.kernel import errors as E


@pytest.mark.parametrize(("err", "subject", "klass"), [
    (errno.ENODEV, "link", E.LinkNotFound),
    (errno.ENODEV, "route", E.LinkNotFound),  # "dev X" of a route that names a missing link
    (errno.ENOENT, "link", E.LinkNotFound),
    (errno.ENOENT, "neighbour", E.NotFound),
    (errno.ESRCH, "route", E.NotFound),
    (errno.EADDRNOTAVAIL, "address", E.NotFound),
    (errno.EADDRNOTAVAIL, "link", E.InvalidArgument),  # an unusable MAC on a link write
    (errno.ENOENT, "netns", E.NetnsNotFound),
    (errno.EEXIST, "address", E.Exists),
    (errno.EPERM, "link", E.PermissionDenied),
    (errno.EINVAL, "route", E.InvalidArgument),
    (errno.EOPNOTSUPP, "link", E.NotSupported),
    (errno.ENETUNREACH, "route", E.KernelError),
])
def test_errno_mapping(err: int, subject: E.Subject, klass: type[E.KernelError]) -> None:
    exc = E.from_errno(err, subject, "thing x")
    assert type(exc) is klass and exc.errno == err
    assert str(exc).startswith("thing x:")


def test_cni_codes() -> None:
    assert E.NetnsNotFound("x").code == 3 and isinstance(E.NetnsNotFound("x"), UnknownContainer)
    assert isinstance(E.NetnsNotFound("x"), E.NotFound)  # DEL treats a missing netns as gone
    interrupted = E.DumpInterrupted("x", attempts=4)
    assert interrupted.code == 11 and isinstance(interrupted, TryAgainLater) and interrupted.attempts == 4
    for klass in (E.KernelError, E.LinkNotFound, E.Exists, E.NotFound, E.InvalidArgument):
        err = klass("x")
        assert err.code == 999 and isinstance(err, CNIError)
    assert E.NetnsNotFound("netns x: not found").to_dict("1.1.0")["code"] == 3


def test_oserror_and_other_exceptions() -> None:
    denied = E.from_exception(PermissionError(errno.EACCES, "no"), "sysctl", "s")
    assert isinstance(denied, E.PermissionDenied)
    other = E.from_exception(ValueError("bad mac"), "link", "link x")
    assert type(other) is E.KernelError and "bad mac" in other.details
    same = E.LinkNotFound("x")
    assert E.from_exception(same, "link", "y") is same
