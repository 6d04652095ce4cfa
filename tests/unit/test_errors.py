"""CNI error objects: the spec's codes, the JSON shape, and rebuilding errors from plugin output."""

from __future__ import annotations

import json

import pytest

from podnet.cni import errors as e

SPEC_CODES = {
    e.IncompatibleVersion: 1,
    e.UnsupportedField: 2,
    e.UnknownContainer: 3,
    e.InvalidEnvironment: 4,
    e.IOFailure: 5,
    e.DecodingFailure: 6,
    e.InvalidNetworkConfig: 7,
    e.TryAgainLater: 11,
    e.PluginNotAvailable: 50,
    e.LimitedConnectivity: 51,
    e.InternalError: 999,
}


@pytest.mark.parametrize(("klass", "code"), SPEC_CODES.items(), ids=lambda x: getattr(x, "__name__", x))
def test_class_carries_spec_code(klass: type[e.CNIError], code: int) -> None:
    err = klass("boom")
    assert err.code == code
    assert isinstance(err, e.CNIError)


def test_base_error_is_internal_unless_told() -> None:
    assert e.CNIError("x").code == 999
    assert e.CNIError("x", code=120).code == 120


@pytest.mark.parametrize(("klass", "code"), SPEC_CODES.items(), ids=lambda x: getattr(x, "__name__", x))
def test_round_trip_rebuilds_most_specific_class(klass: type[e.CNIError], code: int) -> None:
    err = klass("short message", "the long story")
    data = err.to_dict("1.0.0")
    assert data == {"cniVersion": "1.0.0", "code": code, "msg": "short message", "details": "the long story"}
    back = e.CNIError.from_dict(json.loads(json.dumps(data)))
    assert type(back) is klass
    assert (back.code, back.msg, back.details) == (code, "short message", "the long story")


def test_details_omitted_when_empty() -> None:
    assert e.DecodingFailure("bad").to_dict("0.4.0") == {"cniVersion": "0.4.0", "code": 6, "msg": "bad"}


def test_str_joins_message_and_details() -> None:
    assert str(e.IOFailure("read failed")) == "read failed"
    assert str(e.IOFailure("read failed", "EIO")) == "read failed: EIO"


def test_plugin_specific_code_survives() -> None:
    back = e.CNIError.from_dict({"code": 142, "msg": "vendor trouble"})
    assert type(back) is e.CNIError
    assert back.code == 142
    assert back.to_dict("1.1.0")["code"] == 142


@pytest.mark.parametrize("code", [None, "7", 7.0, True])
def test_missing_or_mistyped_code_becomes_internal(code: object) -> None:
    data = {"msg": "odd"} if code is None else {"code": code, "msg": "odd"}
    back = e.CNIError.from_dict(data)
    assert back.code == 999
    assert back.msg == "odd"


def test_from_dict_tolerates_missing_message() -> None:
    back = e.CNIError.from_dict({"code": 11})
    assert isinstance(back, e.TryAgainLater)
    assert back.msg == ""
    assert back.details == ""


def test_rebuilt_error_is_independent_of_class_default() -> None:
    e.CNIError.from_dict({"code": 4, "msg": "x"})
    assert e.InvalidEnvironment.code == 4
    assert e.CNIError.code == 999
