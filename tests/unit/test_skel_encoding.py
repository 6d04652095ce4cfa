"""JSON from the runtime's or a plugin's side must be UTF-8 (CNI spec; RFC 8259 for JSON exchanged
between systems). Python's json.loads on bytes guesses UTF-16 and UTF-32 and strips a UTF-8 BOM:
podnet refuses all of them (code 6, naming the problem), in cni/jsonio.py, the one decoder."""

from __future__ import annotations

import io
import json

import pytest

from podnet.cni import skel
from podnet.cni.errors import DecodingFailure
from podnet.cni.jsonio import load_json
from podnet.cni.result import Result
from podnet.daemon.server import request_identity

CONF = json.dumps({"cniVersion": "1.1.0", "name": "podnet-net", "type": "fake"})
NOT_UTF8 = {
    "utf-16-le": ("utf-16-le", "UTF-16LE"),
    "utf-16-be": ("utf-16-be", "UTF-16BE"),
    "utf-16-bom": ("utf-16", "UTF-16"),
    "utf-32-le": ("utf-32-le", "UTF-32LE"),
    "utf-32-be": ("utf-32-be", "UTF-32BE"),
    "utf-32-bom": ("utf-32", "UTF-32"),
    "utf-8-bom": ("utf-8-sig", "byte order mark"),
}


def _plugin(calls: list[str]) -> skel.Plugin:
    def add(args: skel.CmdArgs) -> Result:
        calls.append("add")
        return Result(cni_version=args.cni_version)

    def delete(args: skel.CmdArgs) -> None:
        calls.append("del")

    return skel.Plugin(add=add, delete=delete)


@pytest.mark.parametrize("name", NOT_UTF8)
def test_load_json_refuses_anything_but_utf8(name: str) -> None:
    codec, says = NOT_UTF8[name]
    with pytest.raises(DecodingFailure) as info:
        load_json(CONF.encode(codec), "network configuration on stdin")
    assert info.value.code == 6
    text = f"{info.value.msg} {info.value.details}"
    assert says in text and "UTF-8" in text and "network configuration on stdin" in text


@pytest.mark.parametrize("name", NOT_UTF8)
@pytest.mark.parametrize("command", ["ADD", "DEL"])
def test_skel_refuses_it_before_the_plugin_runs(name: str, command: str) -> None:
    codec, says = NOT_UTF8[name]
    calls: list[str] = []
    out = io.StringIO()
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
           "CNI_PATH": "/nowhere"}
    code = skel.run(_plugin(calls), env=env, stdin=io.BytesIO(CONF.encode(codec)), stdout=out,
                    stderr=io.StringIO())
    err = json.loads(out.getvalue())
    assert (code, err["code"], calls) == (1, 6, [])
    assert says in err["msg"] + err.get("details", "")


def test_utf8_with_non_ascii_is_fine_and_invalid_utf8_is_named() -> None:
    assert load_json('{"name": "r\u00e9seau-\u7f51"}'.encode(), "x") == {"name": "r\u00e9seau-\u7f51"}
    with pytest.raises(DecodingFailure) as info:
        load_json(b'{"name": "\xff\xfe"}', "x")
    assert "not valid UTF-8" in info.value.details


def test_the_daemon_reads_the_request_the_same_way() -> None:
    """What the daemon locks by must be what the skel will read: nothing for a UTF-16 config."""
    assert request_identity({}, CONF.encode("utf-16"))[0] is None
    assert request_identity({}, CONF.encode())[0] == "podnet-net"
