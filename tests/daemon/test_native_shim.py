"""The native shim (podnet-shim.c) and the Python shim (daemon/shim.py), each held to the one wire
format of podnet.daemon.protocol by a stand-in daemon (a unix socket in tmp served by a thread that
decodes with protocol.py): what they send, what they do with every kind of answer, their knobs,
VERSION, and hostile input. No root needed."""


from __future__ import annotations

import array
import contextlib
import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from podnet.cli.install_cmd import py_shim_name
from podnet.cni import skel
from podnet.cni.spec_versions import version_json
from podnet.daemon import protocol as p
from podnet.daemon import registry
from podnet.daemon.native import build

SHIMS = ("native", "python")
CONF = b'{"cniVersion": "1.1.0", "name": "lo", "type": "podnet-loopback"}'


def install(bin_dir: Path) -> None:
    """``podnet install`` of the plugins only: the native shim, its links, the Python shims."""
    subprocess.run([sys.executable, "-m", "podnet.cli.main", "install", "--bin-dir", str(bin_dir),
                    "--no-conflist"], check=True, capture_output=True, timeout=120)


def shim_path(bin_dir: Path, kind: str, plugin: str) -> str:
    return str(bin_dir / (plugin if kind == "native" else py_shim_name(plugin)))


@dataclass
class Seen:
    """One request as the stand-in daemon received it."""

    plugin: bytes
    stdin: bytes
    env: list[bytes]
    fds: list[int]
    exe: str = ""  # the sending process's executable

    def env_dict(self) -> dict[bytes, bytes]:
        return dict(e.partition(b"=")[::2] for e in self.env)


Answer = Callable[[Seen], bytes | None]  # the raw bytes to send back (None: close without answer)


@dataclass
class FakeDaemon:
    """A unix socket in tmp served by one thread: reads a request (and any SCM_RIGHTS fds),
    checks it against protocol.decode_request, and sends what ``answer`` returns."""

    path: Path
    answer: Answer
    seen: list[Seen] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def serve(self) -> Iterator[FakeDaemon]:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(8)
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn:
                    self._one(conn)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            listener.shutdown(socket.SHUT_RDWR)
            listener.close()
            thread.join(5)
            for seen in self.seen:
                for fd in seen.fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)

    def _one(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        fds = array.array("i")
        data, anc, _flags, _ = conn.recvmsg(1 << 16, socket.CMSG_SPACE(4 * fds.itemsize))
        for level, kind, raw in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(raw[:len(raw) - len(raw) % fds.itemsize])
        buf = bytearray(data)
        try:
            while len(buf) < p.HEADER_SIZE:
                buf += conn.recv(1 << 16)
            size = p.parse_header(bytes(buf[:p.HEADER_SIZE]), p.REQUEST_MAGIC, p.MAX_REQUEST_BODY)
            while len(buf) < p.HEADER_SIZE + size:
                chunk = conn.recv(1 << 20)
                if not chunk:
                    raise p.ProtocolError("truncated")
                buf += chunk
            seen = Seen(*p.decode_request(bytes(buf[p.HEADER_SIZE:])), fds=list(fds))
        except (OSError, p.ProtocolError) as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return
        pid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
        with contextlib.suppress(OSError):
            seen.exe = os.readlink(f"/proc/{pid}/exe")
        self.seen.append(seen)
        reply = self.answer(seen)
        if reply is not None:
            with contextlib.suppress(OSError):
                conn.sendall(reply)


def ran(code: int = 0, out: bytes = b"", err: bytes = b"") -> Answer:
    return lambda seen: p.encode_response(p.KIND_RAN, code, out, err)


@contextlib.contextmanager
def fake_daemon(path: Path, answer: Answer) -> Iterator[FakeDaemon]:
    yield from FakeDaemon(path, answer).serve()


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("cni") / "bin"
    install(where)
    return where


def base_env(socket_path: Path | str, command: str = "CHECK", **extra: str) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PODNET_SOCKET": str(socket_path),
           "CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_IFNAME": "lo", "CNI_PATH": "/nowhere"}
    env.update(extra)
    return env


def call(bin_dir: Path, kind: str, env: dict[str, str], stdin: bytes = CONF,
         plugin: str = "podnet-loopback", timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run([shim_path(bin_dir, kind, plugin)], env=env, input=stdin, capture_output=True,
                          timeout=timeout, check=False)
    assert b"Traceback" not in proc.stdout + proc.stderr, proc.stderr.decode(errors="replace")
    return proc


# -- what a shim sends ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", SHIMS)
def test_request_is_plugin_stdin_and_env_byte_for_byte(bin_dir: Path, tmp_path: Path, kind: str) -> None:
    stdin = CONF + b" \x00\xff odd bytes"
    env = base_env(tmp_path / "d.sock", PODNET_ODD="a=b=c", PODNET_EMPTY="")
    with fake_daemon(tmp_path / "d.sock", ran(0, b'{"ok": 1}\n', b"note\n")) as daemon:
        proc = call(bin_dir, kind, env, stdin, plugin="podnet-bridge")
    assert daemon.errors == [] and len(daemon.seen) == 1
    seen = daemon.seen[0]
    assert seen.plugin == b"podnet-bridge" and seen.stdin == stdin
    got = seen.env_dict()
    assert {k: got[k.encode()].decode() for k in env} == env
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b'{"ok": 1}\n', b"note\n")


@pytest.mark.parametrize("kind", SHIMS)
@pytest.mark.parametrize(("code", "exit_code"), [(0, 0), (1, 1), (3, 3), (300, 44), (-1, 1)])
def test_the_daemons_exit_code_is_the_shims(bin_dir: Path, tmp_path: Path, kind: str, code: int,
                                           exit_code: int) -> None:
    with fake_daemon(tmp_path / "d.sock", ran(code, b"out", b"")):
        proc = call(bin_dir, kind, base_env(tmp_path / "d.sock"))
    assert (proc.returncode, proc.stdout) == (exit_code, b"out")


@pytest.mark.parametrize(("knob", "sender"), [("", build.BINARY), ("native", build.BINARY),
                                              ("python", "python")])
def test_podnet_shim_python_hands_every_call_to_the_python_shim(bin_dir: Path, tmp_path: Path, knob: str,
                                                                sender: str) -> None:
    with fake_daemon(tmp_path / "d.sock", ran(0, b"{}")) as daemon:
        proc = call(bin_dir, "native", base_env(tmp_path / "d.sock", PODNET_SHIM=knob))
    assert proc.returncode == 0 and len(daemon.seen) == 1
    assert os.path.basename(daemon.seen[0].exe).startswith(sender), daemon.seen[0].exe


# -- answers that are not a plain "ran" --------------------------------------------------------------

def _frame(fields: list[bytes], magic: bytes = p.RESPONSE_MAGIC) -> bytes:
    return p.pack(magic, fields)


BROKEN = {
    "closed": None,
    "bad-magic": _frame([b"ran", b"0", b"", b""], b"XXXX"),
    "three-fields": _frame([b"ran", b"0", b""]),
    "five-fields": _frame([b"ran", b"0", b"", b"", b""]),
    "unknown-kind": _frame([b"maybe", b"0", b"", b""]),
    "code-not-a-number": _frame([b"ran", b"--1", b"", b""]),
    "code-too-long": _frame([b"ran", b"12345", b"", b""]),
    "code-empty": _frame([b"ran", b"", b"", b""]),
    "truncated": _frame([b"ran", b"0", b"x" * 100, b""])[:-50],
    "over-the-limit": p.RESPONSE_MAGIC + (p.MAX_RESPONSE_BODY + 1).to_bytes(4, "big"),
}


@pytest.mark.parametrize("kind", SHIMS)
@pytest.mark.parametrize("name", list(BROKEN))
def test_a_broken_answer_to_an_idempotent_call_runs_it_again_in_process(bin_dir: Path, tmp_path: Path,
                                                                       kind: str, name: str) -> None:
    reply = BROKEN[name]
    with fake_daemon(tmp_path / "d.sock", lambda seen: reply):
        # No CNI_NETNS: the in-process CHECK is refused by the skel (code 4), which shows it ran.
        proc = call(bin_dir, kind, base_env(tmp_path / "d.sock"))
    assert proc.returncode == 1 and b"running CHECK again in-process" in proc.stderr, proc.stderr
    assert b"CNI_NETNS" in proc.stdout and p.decode_response is not None


@pytest.mark.parametrize("kind", SHIMS)
def test_a_broken_add_is_not_repeated_with_redo_off(bin_dir: Path, tmp_path: Path, kind: str) -> None:
    with fake_daemon(tmp_path / "d.sock", lambda seen: None):
        proc = call(bin_dir, kind, base_env(tmp_path / "d.sock", "ADD", PODNET_SHIM_REDO="no"))
    err = json.loads(proc.stdout)
    assert proc.returncode == 1 and err["code"] == 11 and "may have partly happened" in err["msg"], err


@pytest.mark.parametrize("kind", SHIMS)
def test_a_broken_add_is_undone_then_redone_in_process(bin_dir: Path, tmp_path: Path, kind: str) -> None:
    with fake_daemon(tmp_path / "d.sock", lambda seen: None):
        proc = call(bin_dir, kind, base_env(tmp_path / "d.sock", "ADD"))
    assert b"undoing any partial ADD (DEL in-process), then ADD in-process" in proc.stderr, proc.stderr


@pytest.mark.parametrize("kind", SHIMS)
def test_refused_runs_in_process_and_says_so(bin_dir: Path, tmp_path: Path, kind: str) -> None:
    refusal = p.encode_response(p.KIND_REFUSED, 1, b"", b"shutting down\n")
    with fake_daemon(tmp_path / "d.sock", lambda seen: refusal):
        proc = call(bin_dir, kind, base_env(tmp_path / "d.sock"))
    assert b"daemon refused the request (shutting down); running in-process" in proc.stderr, proc.stderr
    assert json.loads(proc.stdout)["code"] == 4  # the in-process skel's answer (no CNI_NETNS)


@pytest.mark.parametrize("kind", SHIMS)
def test_no_daemon_runs_in_process(bin_dir: Path, tmp_path: Path, kind: str) -> None:
    proc = call(bin_dir, kind, base_env(tmp_path / "none.sock"))
    assert proc.returncode == 1 and "CNI_NETNS" in json.loads(proc.stdout)["msg"]


@pytest.mark.parametrize("kind", SHIMS)
def test_no_answer_in_time_is_code_11_and_not_repeated(bin_dir: Path, tmp_path: Path, kind: str) -> None:
    hold = threading.Event()

    def never(seen: Seen) -> bytes | None:
        hold.wait(10)
        return None

    with fake_daemon(tmp_path / "d.sock", never) as daemon:
        start = time.monotonic()
        proc = call(bin_dir, kind, base_env(tmp_path / "d.sock", "ADD", PODNET_SHIM_TIMEOUT="0.5"))
        took = time.monotonic() - start
        hold.set()
    err = json.loads(proc.stdout)
    assert err["code"] == 11 and "not repeated" in err["msg"] and len(daemon.seen) == 1
    assert took < 5


# -- hostile and oversized input ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", SHIMS)
def test_stdin_over_the_limit_is_never_sent_and_the_skel_says_why(bin_dir: Path, tmp_path: Path,
                                                                 kind: str) -> None:
    with fake_daemon(tmp_path / "d.sock", ran()) as daemon:
        proc = call(bin_dir, kind, base_env(tmp_path / "d.sock", "DEL"), b" " * (p.MAX_STDIN + 10))
    assert daemon.seen == [] and proc.returncode == 1
    assert "larger than" in json.loads(proc.stdout)["msg"]


@pytest.mark.parametrize("kind", SHIMS)
def test_environment_over_the_limit_is_never_sent(bin_dir: Path, tmp_path: Path, kind: str) -> None:
    env = base_env(tmp_path / "d.sock", **{f"BIG{i}": "x" * 60_000 for i in range(20)})
    with fake_daemon(tmp_path / "d.sock", ran()) as daemon:
        proc = call(bin_dir, kind, env)
    assert daemon.seen == [] and proc.returncode == 1 and json.loads(proc.stdout)["code"] == 4


@pytest.mark.parametrize("kind", SHIMS)
def test_bare_environment_and_no_stdin(bin_dir: Path, kind: str) -> None:
    proc = subprocess.run([shim_path(bin_dir, kind, "podnet-loopback")], env={}, stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=60, check=False)
    assert b"Traceback" not in proc.stderr and proc.returncode == 1
    assert json.loads(proc.stdout)["code"] == 4  # CNI_COMMAND missing, said by the skel


# -- knobs and VERSION: the same answers from both shims ---------------------------------------------

KNOBS = [
    ("PODNET_SHIM_TIMEOUT", "nan"), ("PODNET_SHIM_TIMEOUT", "-1"), ("PODNET_SHIM_TIMEOUT", "0"),
    ("PODNET_SHIM_TIMEOUT", "inf"), ("PODNET_SHIM_TIMEOUT", "1e3"), ("PODNET_SHIM_TIMEOUT", "86400.5"),
    ("PODNET_SHIM_TIMEOUT", "1_0"), ("PODNET_SHIM_TIMEOUT", " 5"), ("PODNET_SHIM_TIMEOUT", "0x10"),
    ("PODNET_SHIM_TIMEOUT", "."), ("PODNET_SHIM_TIMEOUT", "it's"), ("PODNET_SHIM_REDO", "maybe"),
    ("PODNET_SHIM_REDO", 'say "no"'), ("PODNET_SOCKET", "relative/podnet.sock"),
    ("PODNET_SOCKET", "/" + "s" * 107), ("PODNET_SHIM_TIMEOUT", "tab\there"), ("PODNET_SHIM", "py"),
]


@pytest.mark.parametrize(("name", "value"), KNOBS)
@pytest.mark.parametrize("command", ["CHECK", "VERSION"])
def test_bad_knobs_are_the_same_code_4_from_both_shims(bin_dir: Path, tmp_path: Path, name: str, value: str,
                                                      command: str) -> None:
    env = base_env(tmp_path / "none.sock", command, **{name: value})
    native, python = (call(bin_dir, kind, env) for kind in SHIMS)
    assert native.returncode == python.returncode == 1
    assert json.loads(native.stdout)["code"] == 4 and name in json.loads(native.stdout)["msg"]
    assert (native.stdout, native.stderr) == (python.stdout, python.stderr)


@pytest.mark.parametrize(("name", "value"), [("PODNET_SHIM_TIMEOUT", "0.5"), ("PODNET_SHIM_TIMEOUT", "86400"),
                                             ("PODNET_SHIM_TIMEOUT", "7."), ("PODNET_SHIM_REDO", "TRUE"),
                                             ("PODNET_SHIM_REDO", ""), ("PODNET_SOCKET", "")])
def test_good_knobs_are_taken_by_both_shims(bin_dir: Path, tmp_path: Path, name: str, value: str) -> None:
    env = base_env(tmp_path / "none.sock", "VERSION", **{name: value})
    for kind in SHIMS:
        proc = call(bin_dir, kind, env)
        assert proc.returncode == 0 and proc.stdout.decode() == version_json() + "\n"


@pytest.mark.parametrize("plugin", registry.available())
def test_native_version_is_the_skels_answer(bin_dir: Path, tmp_path: Path, plugin: str) -> None:
    out = io.StringIO()
    skel.run(registry.load(plugin), env={"CNI_COMMAND": "VERSION"}, stdin=io.BytesIO(b""), stdout=out)
    with fake_daemon(tmp_path / "d.sock", ran()) as daemon:
        proc = call(bin_dir, "native", base_env(tmp_path / "d.sock", "VERSION"), plugin=plugin)
    assert proc.returncode == 0 and json.loads(proc.stdout) == json.loads(out.getvalue())
    assert daemon.seen == []  # answered by the shim itself


# -- the build --------------------------------------------------------------------------------------

def test_the_source_does_not_build_without_protocol_definitions(tmp_path: Path) -> None:
    """The constants come from protocol.py only: the C file has no copy to drift."""
    argv = [build.find_compiler(), *build.CFLAGS, "-fsyntax-only", build.SOURCE]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "podnet.daemon.native.build" in proc.stderr


def test_every_plugin_is_a_link_to_one_binary(bin_dir: Path) -> None:
    for plugin in registry.available():
        assert os.readlink(bin_dir / plugin) == build.BINARY
        assert (bin_dir / py_shim_name(plugin)).read_text().startswith("#!")
    assert "-Werror" in build.CFLAGS


# -- the socket named in the network config ----------------------------------------------------------

def _conf_with(socket_value: object, **more: object) -> bytes:
    return json.dumps({"cniVersion": "1.1.0", "name": "lo", "type": "podnet-loopback",
                       p.SOCKET_KEY: socket_value, **more}).encode()


@pytest.mark.parametrize("kind", SHIMS)
def test_the_configs_socket_reaches_a_call_with_a_bare_environment(bin_dir: Path, tmp_path: Path,
                                                                    kind: str) -> None:
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_PATH": "/nowhere"}
    with fake_daemon(tmp_path / "conf.sock", ran()) as daemon:
        proc = call(bin_dir, kind, env, _conf_with(str(tmp_path / "conf.sock")))
    assert proc.returncode == 0 and len(daemon.seen) == 1, proc.stderr


@pytest.mark.parametrize("kind", SHIMS)
def test_the_configs_socket_wins_over_podnet_socket(bin_dir: Path, tmp_path: Path, kind: str) -> None:
    with fake_daemon(tmp_path / "env.sock", ran()) as by_env, \
            fake_daemon(tmp_path / "conf.sock", ran()) as by_conf:
        call(bin_dir, kind, base_env(tmp_path / "env.sock", "DEL"), _conf_with(str(tmp_path / "conf.sock")))
    assert (len(by_env.seen), len(by_conf.seen)) == (0, 1)


@pytest.mark.parametrize("kind", SHIMS)
def test_only_the_top_level_key_counts_and_the_last_one_wins(bin_dir: Path, tmp_path: Path,
                                                             kind: str) -> None:
    nested, last, key = str(tmp_path / "nested.sock"), str(tmp_path / "last.sock"), p.SOCKET_KEY.encode()
    stdin = (b'{"cniVersion": "1.1.0", "name": "lo", "ipam": {"' + key + b'": "' + nested.encode()
             + b'"}, "' + key + b'": "/nowhere.sock", "x": [1, {"y": "\\"}"}], "'
             + key + b'": "' + last.replace("/", "\\/").encode() + b'"}')
    assert json.loads(stdin)[p.SOCKET_KEY] == last
    with fake_daemon(tmp_path / "nested.sock", ran()) as wrong, \
            fake_daemon(tmp_path / "last.sock", ran()) as right:
        call(bin_dir, kind, base_env(tmp_path / "none.sock", "DEL"), stdin)
    assert (len(wrong.seen), len(right.seen)) == (0, 1)


@pytest.mark.parametrize("value", [5, "relative.sock", "/" + "s" * 107, None, ["/a"], "/a\u0000b"])
def test_a_bad_configured_socket_is_the_same_code_7_from_both_shims(bin_dir: Path, tmp_path: Path,
                                                                    value: object) -> None:
    env = base_env(tmp_path / "none.sock", "DEL")
    native, python = (call(bin_dir, kind, env, _conf_with(value)) for kind in SHIMS)
    err = json.loads(native.stdout)
    assert native.returncode == 1 and err["code"] == 7 and p.SOCKET_KEY in err["msg"], err
    assert (native.stdout, native.stderr) == (python.stdout, python.stderr)
