"""CNI error objects, one exception class per well-known code of the spec.

Every layer raises these (or subclasses of them); the plugin skel and the CLI are the
only places that turn them into error JSON and exit codes.
"""

from __future__ import annotations

from typing import Any

# Well-known codes (CNI spec 1.1.0, "Error" section). 0-99 are reserved by the spec.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_NETWORK_CONFIG = 7
TRY_AGAIN_LATER = 11
PLUGIN_NOT_AVAILABLE = 50
LIMITED_CONNECTIVITY = 51
INTERNAL = 999


class CNIError(Exception):
    """An error that is reported to a CNI caller as ``{"code", "msg", "details"}``."""

    code: int = INTERNAL

    def __init__(self, msg: str, details: str = "", *, code: int | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.msg}: {self.details}" if self.details else self.msg

    def to_dict(self, cni_version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CNIError:
        """Rebuild the most specific error class for a plugin's error JSON."""
        code = data.get("code")
        if not isinstance(code, int) or isinstance(code, bool):
            code = INTERNAL
        klass = _BY_CODE.get(code, CNIError)
        msg = data.get("msg")
        details = data.get("details")
        err = klass(str(msg) if msg is not None else "", str(details) if details else "")
        err.code = code
        return err


class IncompatibleVersion(CNIError):
    code = INCOMPATIBLE_VERSION


class UnsupportedField(CNIError):
    code = UNSUPPORTED_FIELD


class UnknownContainer(CNIError):
    code = UNKNOWN_CONTAINER


class InvalidEnvironment(CNIError):
    code = INVALID_ENVIRONMENT


class IOFailure(CNIError):
    code = IO_FAILURE


class DecodingFailure(CNIError):
    code = DECODING_FAILURE


class InvalidNetworkConfig(CNIError):
    code = INVALID_NETWORK_CONFIG


class TryAgainLater(CNIError):
    code = TRY_AGAIN_LATER


class PluginNotAvailable(CNIError):
    code = PLUGIN_NOT_AVAILABLE


class LimitedConnectivity(CNIError):
    code = LIMITED_CONNECTIVITY


class InternalError(CNIError):
    code = INTERNAL


_BY_CODE: dict[int, type[CNIError]] = {
    k.code: k
    for k in (
        IncompatibleVersion,
        UnsupportedField,
        UnknownContainer,
        InvalidEnvironment,
        IOFailure,
        DecodingFailure,
        InvalidNetworkConfig,
        TryAgainLater,
        PluginNotAvailable,
        LimitedConnectivity,
        InternalError,
    )
}
