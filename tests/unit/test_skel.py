"""The plugin skel, driven in-process with injected environment and streams and a fake plugin."""

from __future__ import annotations

import io
import ipaddress
import json
import sys
from dataclasses import dataclass, field
from typing import Any

import pytest

from podnet.cni import skel
from podnet.cni import version as ver
from podnet.cni.errors import DecodingFailure, InvalidNetworkConfig, TryAgainLater
from podnet.cni.result import Interface, IPConfig, Result, Route
from podnet.cni.skel import CmdArgs, Plugin

RESULT = Result(
    interfaces=[Interface("eth0", "0a:58:0a:16:00:05", "/var/run/netns/p1", mtu=1450)],
    ips=[IPConfig(ipaddress.ip_interface("10.22.0.5/16"), ipaddress.ip_address("10.22.0.1"), 0)],
    routes=[Route(ipaddress.ip_network("0.0.0.0/0"), mtu=1400)],
)


@dataclass
class FakePlugin:
    """Records every call; raises ``fail`` when set."""

    result: Result = field(default_factory=lambda: RESULT)
    fail: BaseException | None = None
    calls: list[tuple[str, CmdArgs]] = field(default_factory=list)

    def _record(self, name: str, args: CmdArgs) -> None:
        self.calls.append((name, args))
        if self.fail is not None:
            raise self.fail

    def add(self, args: CmdArgs) -> Result:
        self._record("add", args)
        return self.result

    def delete(self, args: CmdArgs) -> None:
        self._record("delete", args)

    def check(self, args: CmdArgs) -> None:
        self._record("check", args)

    def status(self, args: CmdArgs) -> None:
        self._record("status", args)

    def gc(self, args: CmdArgs) -> None:
        self._record("gc", args)

    def plugin(self, versions: tuple[str, ...] = ver.SUPPORTED) -> Plugin:
        return Plugin(add=self.add, delete=self.delete, check=self.check, status=self.status, gc=self.gc,
                      supported_versions=versions)


def _env(command: str, **over: str | None) -> dict[str, str]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "ctr-1", "CNI_NETNS": "/var/run/netns/p1",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin:/usr/lib/cni", "CNI_ARGS": "K8S_POD_NAME=web-0"}
    for key, value in over.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _conf(version: str = "1.1.0", **extra: Any) -> bytes:
    return json.dumps({"cniVersion": version, "name": "podnet-net", "type": "fake", **extra}).encode()


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict[str, Any]:
        assert self.stdout.endswith("\n") and self.stdout.count("\n") == 1, repr(self.stdout)
        out: dict[str, Any] = json.loads(self.stdout)
        return out


def _run(plugin: Plugin, env: dict[str, str], stdin: bytes | io.RawIOBase = b"") -> Run:
    out, err = io.StringIO(), io.StringIO()
    inp = io.BytesIO(stdin) if isinstance(stdin, bytes) else stdin
    code = skel.run(plugin, env=env, stdin=inp, stdout=out, stderr=err)  # type: ignore[arg-type]
    return Run(code, out.getvalue(), err.getvalue())


def _error(run: Run, code: int) -> dict[str, Any]:
    assert run.code == 1
    body = run.json
    assert body["code"] == code, body
    assert "Traceback" not in run.stdout
    return body


class Unreadable(io.RawIOBase):
    def read(self, size: int = -1) -> bytes:
        raise OSError(5, "Input/output error")

    def readable(self) -> bool:
        return True


# ---- VERSION ----------------------------------------------------------------------------------


def test_version() -> None:
    fake = FakePlugin()
    run = _run(fake.plugin(), {"CNI_COMMAND": "VERSION"}, Unreadable())  # stdin is not read
    assert run.code == 0
    assert run.json == {"cniVersion": ver.CURRENT, "supportedVersions": list(ver.SUPPORTED)}
    assert fake.calls == []


def test_version_reports_plugin_versions() -> None:
    run = _run(FakePlugin().plugin(("0.4.0", "1.0.0")), {"CNI_COMMAND": "VERSION"})
    assert run.json["supportedVersions"] == ["0.4.0", "1.0.0"]


# ---- ADD / DEL / CHECK / STATUS / GC ----------------------------------------------------------


@pytest.mark.parametrize("v", ver.SUPPORTED)
def test_add_prints_result_in_config_version(v: str) -> None:
    fake = FakePlugin()
    run = _run(fake.plugin(), _env("ADD"), _conf(v))
    assert run.code == 0, run.stdout
    assert run.json == RESULT.to_json(v)
    assert run.json["cniVersion"] == v
    assert run.stderr == ""
    [(name, args)] = fake.calls
    assert name == "add"
    assert args.cni_version == v


def test_add_args() -> None:
    fake = FakePlugin()
    stdin = _conf("1.0.0", bridge="cni0")
    env = _env("ADD", CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=web-0;K8S_POD_NAME=web-1")
    run = _run(fake.plugin(), env, stdin)
    assert run.code == 0
    args = fake.calls[0][1]
    assert (args.command, args.container_id, args.netns, args.ifname) == ("ADD", "ctr-1", "/var/run/netns/p1",
                                                                         "eth0")
    assert args.path == ["/opt/cni/bin", "/usr/lib/cni"]
    assert args.args == [("IgnoreUnknown", "1"), ("K8S_POD_NAME", "web-0"), ("K8S_POD_NAME", "web-1")]
    assert args.arg("K8S_POD_NAME") == "web-1"
    assert args.arg("MISSING", "dflt") == "dflt"
    assert args.conf["bridge"] == "cni0"
    assert args.stdin_data == stdin
    assert args.cni_version == "1.0.0"


def test_missing_cni_version_means_010() -> None:
    fake = FakePlugin()
    run = _run(fake.plugin(), _env("ADD"), b'{"name":"n","type":"fake"}')
    assert run.json == RESULT.to_json("0.1.0")


@pytest.mark.parametrize(("command", "handler"), [("DEL", "delete"), ("CHECK", "check")])
def test_del_and_check_print_nothing(command: str, handler: str) -> None:
    fake = FakePlugin()
    run = _run(fake.plugin(), _env(command), _conf("0.4.0", prevResult=RESULT.to_json("0.4.0")))
    assert (run.code, run.stdout) == (0, "")
    assert [c[0] for c in fake.calls] == [handler]


@pytest.mark.parametrize(("command", "handler"), [("STATUS", "status"), ("GC", "gc")])
def test_status_and_gc_print_nothing(command: str, handler: str) -> None:
    fake = FakePlugin()
    env = {"CNI_COMMAND": command, "CNI_PATH": "/opt/cni/bin"}
    run = _run(fake.plugin(), env, _conf("1.1.0"))
    assert (run.code, run.stdout) == (0, "")
    assert [c[0] for c in fake.calls] == [handler]


def test_del_without_netns() -> None:
    fake = FakePlugin()
    run = _run(fake.plugin(), _env("DEL", CNI_NETNS=None), _conf())
    assert (run.code, run.stdout) == (0, "")
    assert fake.calls[0][1].netns == ""


def test_status_without_path() -> None:
    run = _run(FakePlugin().plugin(), {"CNI_COMMAND": "STATUS"}, _conf())
    assert (run.code, run.stdout) == (0, "")


def test_unimplemented_optional_commands_succeed() -> None:
    plugin = Plugin(add=FakePlugin().add, delete=FakePlugin().delete)
    for command in ("CHECK", "STATUS", "GC"):
        run = _run(plugin, _env(command), _conf("1.1.0"))
        assert (run.code, run.stdout) == (0, ""), command


# ---- environment errors -----------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, ""])
def test_missing_command(value: str | None) -> None:
    body = _error(_run(FakePlugin().plugin(), _env("ADD", CNI_COMMAND=value), _conf()), 4)
    assert "CNI_COMMAND" in body["msg"]


def test_missing_command_prints_about_on_stderr() -> None:
    plugin = Plugin(add=FakePlugin().add, delete=FakePlugin().delete, about="podnet fake v0",
                    supported_versions=("1.0.0", "1.1.0"))
    run = _run(plugin, {}, b"")
    _error(run, 4)
    assert run.stderr == "podnet fake v0\nCNI protocol versions supported: 1.0.0, 1.1.0\n"
    assert _run(plugin, _env("ATTACH"), _conf()).stderr == ""


def test_unknown_command() -> None:
    body = _error(_run(FakePlugin().plugin(), _env("ATTACH"), _conf()), 4)
    assert "ATTACH" in body["msg"]


@pytest.mark.parametrize(
    ("command", "missing"),
    [
        ("ADD", ["CNI_NETNS", "CNI_IFNAME"]),
        ("ADD", ["CNI_CONTAINERID"]),
        ("ADD", ["CNI_PATH"]),
        ("CHECK", ["CNI_NETNS"]),
        ("DEL", ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"]),
        ("GC", ["CNI_PATH"]),
    ],
)
def test_missing_variables_are_named(command: str, missing: list[str]) -> None:
    fake = FakePlugin()
    env = _env(command, **dict.fromkeys(missing))
    body = _error(_run(fake.plugin(), env, _conf()), 4)
    for name in missing:
        assert name in body["msg"]
    assert fake.calls == []


@pytest.mark.parametrize(("var", "value"), [("CNI_CONTAINERID", "../x"), ("CNI_IFNAME", "eth0/1"),
                                            ("CNI_IFNAME", "a" * 16), ("CNI_ARGS", "NOEQUALS")])
def test_invalid_variables(var: str, value: str) -> None:
    fake = FakePlugin()
    body = _error(_run(fake.plugin(), _env("ADD", **{var: value}), _conf()), 4)
    assert value in body["msg"]
    assert fake.calls == []


# ---- version gates ----------------------------------------------------------------------------


@pytest.mark.parametrize("v", ["0.1.0", "0.2.0", "0.3.0", "0.3.1"])
def test_check_needs_040(v: str) -> None:
    fake = FakePlugin()
    body = _error(_run(fake.plugin(), _env("CHECK"), _conf(v)), 1)
    assert "CHECK" in body["msg"]
    assert body["cniVersion"] == v
    assert fake.calls == []


@pytest.mark.parametrize("command", ["STATUS", "GC"])
@pytest.mark.parametrize("v", ["0.4.0", "1.0.0"])
def test_status_and_gc_need_110(command: str, v: str) -> None:
    fake = FakePlugin()
    body = _error(_run(fake.plugin(), _env(command), _conf(v)), 1)
    assert command in body["msg"]
    assert fake.calls == []


@pytest.mark.parametrize("v", ["0.5.0", "2.0.0", "garbage"])
def test_unsupported_config_version(v: str) -> None:
    body = _error(_run(FakePlugin().plugin(), _env("ADD"), _conf(v)), 1)
    assert body["cniVersion"] == ver.CURRENT


def test_version_outside_plugin_support() -> None:
    fake = FakePlugin()
    _error(_run(fake.plugin(("1.0.0",)), _env("ADD"), _conf("0.4.0")), 1)
    assert fake.calls == []


def test_mistyped_config_version() -> None:
    _error(_run(FakePlugin().plugin(), _env("ADD"), b'{"cniVersion":1,"name":"n","type":"fake"}'), 7)


# ---- stdin errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"{", b"not json", b"\xff\xfe", b"[1]", b"null", b'"x"'])
def test_garbage_stdin_is_code_6(data: bytes) -> None:
    fake = FakePlugin()
    body = _error(_run(fake.plugin(), _env("ADD"), data), 6)
    assert body["cniVersion"] == ver.CURRENT
    assert fake.calls == []


def test_oversized_stdin_is_code_6() -> None:
    pad = "x" * (skel.MAX_STDIN + 10)
    _error(_run(FakePlugin().plugin(), _env("ADD"), _conf(pad=pad)), 6)


def test_unreadable_stdin_is_code_5() -> None:
    body = _error(_run(FakePlugin().plugin(), _env("ADD"), Unreadable()), 5)
    assert "stdin" in body["msg"]


@pytest.mark.parametrize("name", [None, "", "../x"])
def test_config_needs_valid_network_name(name: str | None) -> None:
    conf: dict[str, Any] = {"cniVersion": "1.0.0", "type": "fake"}
    if name is not None:
        conf["name"] = name
    _error(_run(FakePlugin().plugin(), _env("ADD"), json.dumps(conf).encode()), 7)


# ---- plugin failures --------------------------------------------------------------------------


@pytest.mark.parametrize("v", ["0.3.1", "1.0.0", "1.1.0"])
def test_plugin_cni_error_keeps_its_code(v: str) -> None:
    fake = FakePlugin(fail=TryAgainLater("IPAM store busy", "lock held by pid 42"))
    body = _error(_run(fake.plugin(), _env("ADD"), _conf(v)), 11)
    assert body == {"cniVersion": v, "code": 11, "msg": "IPAM store busy", "details": "lock held by pid 42"}


def test_plugin_specific_code() -> None:
    from podnet.cni.errors import CNIError

    fake = FakePlugin(fail=CNIError("vendor", code=120))
    assert _error(_run(fake.plugin(), _env("DEL"), _conf()), 120)["msg"] == "vendor"


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK", "STATUS", "GC"])
def test_unexpected_exception_is_999_one_line(command: str) -> None:
    fake = FakePlugin(fail=RuntimeError("boom\n  at line two\n\tthree"))
    run = _run(fake.plugin(), _env(command), _conf("1.1.0"))
    body = _error(run, 999)
    assert body["cniVersion"] == "1.1.0"
    assert "\n" not in body["msg"]
    assert "RuntimeError" in body["msg"] and "boom" in body["msg"] and "three" in body["msg"]
    assert run.stderr == ""


def test_unexpected_exception_traceback_only_on_stderr_with_debug() -> None:
    fake = FakePlugin(fail=KeyError("ipam"))
    run = _run(fake.plugin(), _env("ADD", PODNET_DEBUG="1"), _conf())
    _error(run, 999)
    assert "Traceback" in run.stderr
    assert "KeyError" in run.stderr


def test_add_returning_garbage_is_999() -> None:
    fake = FakePlugin(result=None)  # type: ignore[arg-type]
    _error(_run(fake.plugin(), _env("ADD"), _conf()), 999)


def test_add_result_that_cannot_be_converted() -> None:
    fake = FakePlugin(result=Result(interfaces=[Interface("lo")]))
    body = _error(_run(fake.plugin(), _env("ADD"), _conf("0.2.0")), 1)
    assert body["cniVersion"] == "0.2.0"


# ---- CmdArgs accessors ------------------------------------------------------------------------


def _args(conf: dict[str, Any], command: str = "ADD") -> CmdArgs:
    fake = FakePlugin()
    run = _run(fake.plugin(), _env(command), json.dumps({"name": "n", "type": "fake", **conf}).encode())
    assert run.code == 0, run.stdout
    return fake.calls[0][1]


def test_prev_result() -> None:
    prev = RESULT.to_json("0.4.0")
    args = _args({"cniVersion": "0.4.0", "prevResult": prev})
    parsed = args.prev_result
    assert parsed is not None
    assert parsed.to_json("0.4.0") == prev
    assert _args({"cniVersion": "0.4.0"}).prev_result is None


def test_prev_result_without_version_uses_config_version() -> None:
    prev = RESULT.to_json("1.0.0")
    del prev["cniVersion"]
    parsed = _args({"cniVersion": "1.0.0", "prevResult": prev}).prev_result
    assert parsed is not None
    assert parsed.cni_version == "1.0.0"


def test_bad_prev_result() -> None:
    args = _args({"cniVersion": "1.0.0", "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "x"}]}})
    with pytest.raises(DecodingFailure, match=r"ips\[0\].address"):
        _ = args.prev_result


def test_bad_prev_result_through_skel_is_code_6() -> None:
    def add(args: CmdArgs) -> Result:
        prev = args.prev_result
        assert prev is not None
        return prev

    conf = _conf("1.0.0", prevResult={"cniVersion": "1.0.0", "ips": "nope"})
    _error(_run(Plugin(add=add, delete=FakePlugin().delete), _env("ADD"), conf), 6)


def test_valid_attachments() -> None:
    items = [{"containerID": "c1", "ifname": "eth0"}, {"containerID": "c2", "ifname": "net1"}]
    args = _args({"cniVersion": "1.1.0", "cni.dev/valid-attachments": items}, "GC")
    assert args.valid_attachments == [("c1", "eth0"), ("c2", "net1")]
    assert _args({"cniVersion": "1.1.0"}, "GC").valid_attachments == []
    assert _args({"cniVersion": "1.1.0", "cni.dev/valid-attachments": []}, "GC").valid_attachments == []
    legacy = _args({"cniVersion": "1.1.0", "cni.dev/attachments": items[:1]}, "GC")
    assert legacy.valid_attachments == [("c1", "eth0")]


@pytest.mark.parametrize("bad", ["c1", [["c1", "eth0"]], [{"ifname": "eth0"}], [{"containerID": 1}],
                                 [{"containerID": "c1", "ifname": 0}]])
def test_bad_valid_attachments(bad: object) -> None:
    args = _args({"cniVersion": "1.1.0", "cni.dev/valid-attachments": bad}, "GC")
    with pytest.raises(InvalidNetworkConfig, match="valid-attachments"):
        _ = args.valid_attachments


# ---- main -------------------------------------------------------------------------------------


def test_main_exits_with_run_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PODNET_DEBUG", raising=False)
    for key, value in _env("ADD").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"{")))
    with pytest.raises(SystemExit) as info:
        skel.main(FakePlugin().plugin())
    assert info.value.code == 1
    assert json.loads(capsys.readouterr().out)["code"] == 6

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(_conf("1.0.0"))))
    with pytest.raises(SystemExit) as info:
        skel.main(FakePlugin().plugin())
    assert info.value.code == 0
    assert json.loads(capsys.readouterr().out) == RESULT.to_json("1.0.0")
