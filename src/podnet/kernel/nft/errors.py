"""Errors of the nftables backends, one type per condition callers act on."""

from __future__ import annotations

from podnet.kernel.errors import Exists, InvalidArgument, KernelError, NotFound, PermissionDenied


class NftError(KernelError):
    """``nft`` (or libnftables) failed; ``stderr`` holds what it said."""

    def __init__(self, msg: str, details: str = "", *, stderr: str = "") -> None:
        super().__init__(msg, details)
        self.stderr = stderr


class NftNotFound(NftError, NotFound):
    """A table, chain, set or element named in the transaction does not exist (ENOENT)."""


class NftExists(NftError, Exists):
    """``create``/``insert`` of something that exists (EEXIST)."""


class NftPermissionDenied(NftError, PermissionDenied):
    """Not root / no CAP_NET_ADMIN in the namespace."""


class NftSyntaxError(NftError, InvalidArgument):
    """nft could not parse the script: a bug in the renderer, never a runtime condition."""


class NftUnavailable(NftError):
    """Neither the ``nft`` binary nor libnftables could be used, or it did not answer."""


def error_from_stderr(what: str, stderr: str) -> NftError:
    """The most specific :class:`NftError` for nft's error output (the binary's stderr and
    libnftables' error buffer say the same things)."""
    text = " ".join(stderr.split())
    for marker, klass in (("No such file or directory", NftNotFound), ("File exists", NftExists),
                          ("Operation not permitted", NftPermissionDenied),
                          ("syntax error", NftSyntaxError)):
        if marker in text:
            return klass(f"{what}: {marker.lower()}", text[:500], stderr=stderr)
    return NftError(f"{what}: failed", text[:500], stderr=stderr)
