"""Finding and running plugin executables: environment, stdin, and decoding every way a plugin fails."""

from __future__ import annotations

import codecs
import errno
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from podnet.cni.config import parse_conflist
from podnet.cni.errors import CNIError, TryAgainLater
from podnet.runtime import invoke
from podnet.runtime.invoke import Invocation, PluginNotFound, RealExec, decode_output, find_plugin
from podnet.runtime.operations import CNIRuntime, RuntimeConf

RESULT = '{"cniVersion":"1.0.0","ips":[{"address":"10.1.0.5/24"}]}'
INV = Invocation("ADD", "c0ffee", "/var/run/netns/pod1", "eth0",
                 (("K8S_POD_NAME", "web-0"), ("IgnoreUnknown", "1")), ("/opt/a", "/opt/b"))


def plugin(directory: Path, name: str, body: str, mode: int = 0o755) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(mode)
    return path


def run(path: Path, inv: Invocation = INV, stdin: bytes = b"{}", **env: str) -> bytes:
    environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    return RealExec(environ).run(str(path), inv, stdin)


def fails(path: Path, inv: Invocation = INV, **env: str) -> CNIError:
    with pytest.raises(CNIError) as info:
        run(path, inv, **env)
    return info.value


# ---- environment and stdin ------------------------------------------------------------------


def test_env_and_stdin_delivered(tmp_path: Path) -> None:
    out = tmp_path / "seen"
    exe = plugin(tmp_path / "bin", "recorder",
                 'env > "$OUT.env"\ncat > "$OUT.stdin"\necho \'' + RESULT + "'\n")
    stdin = json.dumps({"cniVersion": "1.0.0", "name": "net", "type": "recorder", "x": "é"}).encode()
    got = run(exe, stdin=stdin, OUT=str(out), CNI_NETNS="/stale", CNI_IFNAME="stale0",
              CNI_EXTRA="leak", KEEP_ME="yes")
    assert json.loads(got) == json.loads(RESULT)
    assert (tmp_path / "seen.stdin").read_bytes() == stdin
    env = dict(line.split("=", 1) for line in (tmp_path / "seen.env").read_text().splitlines() if "=" in line)
    assert env["CNI_COMMAND"] == "ADD"
    assert env["CNI_CONTAINERID"] == "c0ffee"
    assert env["CNI_NETNS"] == "/var/run/netns/pod1"
    assert env["CNI_IFNAME"] == "eth0"
    assert env["CNI_ARGS"] == "K8S_POD_NAME=web-0;IgnoreUnknown=1"
    assert env["CNI_PATH"] == "/opt/a:/opt/b"
    assert "CNI_EXTRA" not in env  # inherited CNI_* never leak into a call
    assert env["KEEP_ME"] == "yes"


def test_env_unit() -> None:
    base = {"CNI_NETNS": "/stale", "CNI_ARGS": "OLD=1", "HOME": "/root"}
    env = INV.env(base)
    assert env["CNI_NETNS"] == "/var/run/netns/pod1" and env["HOME"] == "/root"
    assert base["CNI_NETNS"] == "/stale"  # the base is not changed
    empty = Invocation("DEL", "c1", "", "eth0", (), ("/p",)).env(base)
    assert empty["CNI_ARGS"] == "" and empty["CNI_NETNS"] == ""


def test_version_and_gc_env() -> None:
    base = {"CNI_CONTAINERID": "stale", "CNI_NETNS": "/stale"}
    env = Invocation("VERSION", path=("/p",)).env(base)
    assert env == {"CNI_COMMAND": "VERSION", "CNI_PATH": "/p"}
    gc = Invocation("GC", path=("/p",)).env(base)
    assert gc["CNI_COMMAND"] == "GC" and gc["CNI_CONTAINERID"] == "" and gc["CNI_NETNS"] == ""


def test_plugin_that_ignores_stdin(tmp_path: Path) -> None:
    exe = plugin(tmp_path, "deaf", "echo '" + RESULT + "'\n")
    assert json.loads(run(exe, stdin=b"x" * (1 << 20))) == json.loads(RESULT)


# ---- failures -------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "klass"), [(11, TryAgainLater), (7, CNIError), (120, CNIError)])
def test_cni_error_json_becomes_that_error(tmp_path: Path, code: int, klass: type[CNIError]) -> None:
    body = json.dumps({"cniVersion": "1.0.0", "code": code, "msg": "it broke", "details": "because"})
    exe = plugin(tmp_path, "erring", f"echo '{body}'\necho 'some noise' >&2\nexit 1\n")
    err = fails(exe)
    assert isinstance(err, klass)
    assert (err.code, err.msg, err.details) == (code, "it broke", "because")


def test_cni_error_without_message_names_plugin(tmp_path: Path) -> None:
    exe = plugin(tmp_path, "terse", 'echo \'{"code": 5, "msg": ""}\'\nexit 3\n')
    err = fails(exe)
    assert err.code == 5 and "terse" in err.msg


@pytest.mark.parametrize("stdout", ["garbage", "", '{"no": "code"}', '{"code": "5", "msg": "x"}', "[1]"])
def test_non_zero_exit_without_cni_error_is_999(tmp_path: Path, stdout: str) -> None:
    exe = plugin(tmp_path, "crashy", f"printf '%s' '{stdout}'\necho 'panic: nil pointer' >&2\nexit 2\n")
    err = fails(exe)
    assert err.code == 999
    assert "crashy" in err.msg and "status 2" in err.msg
    assert "panic: nil pointer" in err.details


def test_non_zero_exit_silent_stderr_shows_stdout(tmp_path: Path) -> None:
    exe = plugin(tmp_path, "mumbler", "echo 'half a line'\nexit 1\n")
    err = fails(exe)
    assert err.code == 999 and "half a line" in err.details


def test_long_stderr_keeps_the_tail(tmp_path: Path) -> None:
    exe = plugin(tmp_path, "chatty", "i=0\nwhile [ $i -lt 500 ]; do echo \"line $i\" >&2; i=$((i+1)); done\n"
                 "echo 'the real reason' >&2\nexit 1\n")
    err = fails(exe)
    assert err.details.endswith("the real reason")
    assert len(err.details) <= invoke.STDERR_TAIL


def test_killed_by_signal(tmp_path: Path) -> None:
    exe = plugin(tmp_path, "victim", "echo 'about to die' >&2\nkill -9 $$\n")
    err = fails(exe)
    assert err.code == 999
    assert "victim" in err.msg and "killed by signal 9" in err.msg
    assert "about to die" in err.details


def test_timeout_is_try_again_later(tmp_path: Path) -> None:
    exe = plugin(tmp_path, "sleeper", "exec sleep 10\n")
    with pytest.raises(TryAgainLater) as info:
        RealExec({}, timeout=0.3).run(str(exe), INV, b"{}")
    assert info.value.code == 11 and "sleeper" in info.value.msg


def test_not_executable_format_is_cni_error(tmp_path: Path) -> None:
    exe = tmp_path / "binary"
    exe.write_bytes(b"\x7fELF\x00garbage")
    exe.chmod(0o755)
    err = fails(exe)
    assert err.code == 999 and "binary" in err.msg


def test_garbage_on_success_decodes_to_code_6(tmp_path: Path) -> None:
    exe = plugin(tmp_path, "liar", "echo 'all good!'\n")
    out = run(exe)
    with pytest.raises(CNIError) as info:
        decode_output(str(exe), out)
    assert info.value.code == 6 and "liar" in info.value.msg and "all good!" in info.value.details


@pytest.mark.parametrize("body", [
    '{"cniVersion": "1.0.0"}'.encode("utf-16"), codecs.BOM_UTF8 + b'{"cniVersion": "1.0.0"}',
    b'{"cniVersion": "1.0.0", "x": NaN}',
], ids=["utf-16", "utf-8-bom", "nan"])
def test_plugin_output_must_be_strict_utf8_json(body: bytes) -> None:
    # Go's libcni refuses these; a result podnet took from a plugin would break the next Go plugin.
    with pytest.raises(CNIError) as info:
        decode_output("/opt/cni/bin/liar", body)
    assert info.value.code == 6 and "liar" in info.value.msg


def test_garbage_on_add_through_runtime_is_code_6_and_rolled_back(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    log = tmp_path / "calls"
    plugin(bindir, "good",
           f'echo "good $CNI_COMMAND" >> "{log}"\n[ "$CNI_COMMAND" = ADD ] && echo \'{RESULT}\'\nexit 0\n')
    plugin(bindir, "liar", f'echo "liar $CNI_COMMAND" >> "{log}"\necho "not json"\n')
    conf = parse_conflist(json.dumps({"cniVersion": "1.0.0", "name": "net",
                                      "plugins": [{"type": "good"}, {"type": "liar"}]}))
    rt = CNIRuntime([str(bindir)], tmp_path / "cache", RealExec())
    with pytest.raises(CNIError) as info:
        rt.add(conf, RuntimeConf("c0ffee", "/var/run/netns/x"))
    assert info.value.code == 6
    assert log.read_text().split("\n")[:-1] == ["good ADD", "liar ADD", "liar DEL", "good DEL"]
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


# ---- finding plugins ------------------------------------------------------------------------


def test_find_first_on_path(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    plugin(b, "bridge", "exit 0\n")
    plugin(a, "bridge", "exit 0\n", mode=0o644)  # not executable: skipped
    (a / "ptp").mkdir()  # a directory is no plugin
    plugin(b, "ptp", "exit 0\n")
    assert find_plugin("bridge", [str(a), str(b)]) == str(b / "bridge")
    assert find_plugin("ptp", [str(a), str(b)]) == str(b / "ptp")
    plugin(a, "bridge", "exit 0\n")
    assert find_plugin("bridge", [str(a), str(b)]) == str(a / "bridge")


def test_not_found_names_type_and_path(tmp_path: Path) -> None:
    with pytest.raises(PluginNotFound) as info:
        find_plugin("nosuch", [str(tmp_path / "x"), str(tmp_path / "y")])
    assert info.value.code == 7
    assert "nosuch" in str(info.value) and str(tmp_path / "x") in str(info.value)
    assert str(tmp_path / "y") in str(info.value)


def test_empty_path_is_not_found() -> None:
    with pytest.raises(PluginNotFound, match="CNI_PATH is empty") as info:
        find_plugin("bridge", [])
    assert info.value.code == 7


@pytest.mark.parametrize("bad", ["../bin/sh", "/bin/sh", "a/b", "..", ".", ""])
def test_type_that_is_a_path_is_refused(tmp_path: Path, bad: str) -> None:
    plugin(tmp_path / "bin", "sh", "exit 0\n")
    with pytest.raises(CNIError) as info:
        find_plugin(bad, [str(tmp_path / "bin" / "sub"), str(tmp_path / "bin")])
    assert info.value.code == 7


# ---- ETXTBSY --------------------------------------------------------------------------------


def _busy_then(monkeypatch: pytest.MonkeyPatch, busy: int) -> list[Any]:
    calls: list[Any] = []
    real = subprocess.Popen

    def fake_popen(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        if len(calls) <= busy:
            raise OSError(errno.ETXTBSY, os.strerror(errno.ETXTBSY))
        return real(*args, **kwargs)

    monkeypatch.setattr(invoke.subprocess, "Popen", fake_popen)
    monkeypatch.setattr(invoke.time, "sleep", lambda s: None)
    return calls


def test_text_file_busy_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _busy_then(monkeypatch, 2)
    exe = plugin(tmp_path, "busy", "echo '" + RESULT + "'\n")
    assert json.loads(run(exe)) == json.loads(RESULT)
    assert len(calls) == 3


def test_text_file_busy_gives_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _busy_then(monkeypatch, 100)
    exe = plugin(tmp_path, "busy", "exit 0\n")
    err = fails(exe)
    assert err.code == 999 and "busy" in err.msg and "busy" in err.details.lower()
    assert len(calls) == invoke.ETXTBSY_RETRIES + 1


def test_other_os_errors_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []

    def fake_popen(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(invoke.subprocess, "Popen", fake_popen)
    err = fails(tmp_path / "x")
    assert len(calls) == 1 and "Permission denied" in err.details


def test_deeply_nested_output_is_decoding_failure(tmp_path: Path) -> None:
    with pytest.raises(CNIError) as info:
        decode_output("/bin/deep", b"[" * 50000)
    assert info.value.code == 6 and "deep" in info.value.msg
    err = invoke.decode_failure("/bin/deep", 1, b"[" * 50000, b"oops")
    assert err.code == 999 and err.details == "oops"


def test_a_successful_plugins_stderr_reaches_the_callers(tmp_path: Path) -> None:
    """As libcni does: what a plugin says on stderr (a warning that does not fail the call) is
    passed on, not dropped."""
    import io

    exe = plugin(tmp_path, "warns", f"echo 'held back until classified' >&2\necho '{RESULT}'\n")
    sink = io.StringIO()
    out = RealExec({"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, stderr=sink).run(str(exe), INV, b"{}")
    assert json.loads(out)["cniVersion"] == "1.0.0"
    assert sink.getvalue() == "held back until classified\n"
