"""``podnet cni`` on bad input: the right CNI error, exit 1, no traceback, and nothing left behind.

Every row runs the real ``.venv/bin/podnet cni ...`` with a throw-away NETCONFPATH, CNI_CACHE_DIR and
CNI_PATH of fake plugin scripts. Each fake appends ``COMMAND TYPE CONTAINERID IFNAME NETNS`` to a call
log, so a row can check that every ADD that ran was undone by a DEL.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

PODNET = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "podnet"
RESULT = ('{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],'
          '"ips":[{"address":"10.1.0.5/24","interface":0}]}')

FAKES = {
    "fake-ok": f"echo '{RESULT}'",
    "fake-garbage": "echo 'hello, I am not JSON'",
    "fake-exit": "echo 'something went wrong' >&2; exit 3",
    "fake-cnierr": 'echo \'{"cniVersion":"1.0.0","code":11,"msg":"try again later"}\'; exit 1',
    "fake-signal": "kill -9 $$",
    "fake-deep": "head -c 50000 /dev/zero | tr '\\0' '['",
}
# Every fake records its call, answers ADD as above, and succeeds on every other command.
FAKE = """#!/bin/sh
echo "$CNI_COMMAND {name} $CNI_CONTAINERID $CNI_IFNAME $CNI_NETNS" >> "$FAKE_LOG"
cat > /dev/null
if [ "$CNI_COMMAND" = ADD ]; then
  {add}
fi
exit 0
"""


@dataclass
class Env:
    root: Path
    conf: Path = field(init=False)
    cache: Path = field(init=False)
    bin: Path = field(init=False)
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.conf = self.root / "net.d"
        self.cache = self.root / "cache"
        self.bin = self.root / "bin"
        self.log = self.root / "calls.log"
        self.conf.mkdir()
        self.bin.mkdir()
        for name, add in FAKES.items():
            path = self.bin / name
            path.write_text(FAKE.format(name=name, add=add))
            path.chmod(0o755)

    def environ(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("CNI_") and k not in ("NETCONFPATH", "CAP_ARGS")}
        env.update(NETCONFPATH=str(self.conf), CNI_PATH=str(self.bin), CNI_CACHE_DIR=str(self.cache),
                   FAKE_LOG=str(self.log))
        env.pop("PODNET_DEBUG", None)
        env.update(extra)
        return env

    def write(self, name: str, doc: Any) -> Path:
        path = self.conf / name
        path.write_bytes(doc if isinstance(doc, bytes) else json.dumps(doc).encode())
        return path

    def cni(self, *argv: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(PODNET), "cni", *argv], env=self.environ(**env), capture_output=True,
                              text=True, timeout=30, check=False, cwd=cwd or self.root)

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [line.split(" ") for line in self.log.read_text().splitlines()]

    def written(self) -> list[Path]:
        return sorted(p for p in self.cache.rglob("*") if not p.is_dir()) if self.cache.is_dir() else []

    def undone_adds(self) -> list[tuple[str, ...]]:
        """(type, containerID, ifname) of every ADD with no later DEL for the same attachment."""
        open_adds: list[tuple[str, ...]] = []
        for cmd, *key in self.calls():
            attachment = tuple(key[:3])
            if cmd == "ADD":
                open_adds.append(attachment)
            elif cmd == "DEL" and attachment in open_adds:
                open_adds.remove(attachment)
        return open_adds


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def net(*types: str, version: str = "1.0.0", name: str = "net", **top: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": name, "plugins": [{"type": t} for t in types], **top}


GOOD = net("fake-ok", "fake-ok")


@dataclass
class Row:
    id: str
    code: int
    argv: tuple[str, ...] = ("add", "net", "NETNS")
    conf: Any = field(default_factory=lambda: GOOD)
    env: dict[str, str] = field(default_factory=dict)
    setup: Callable[[Env], None] | None = None
    says: str = ""


def _cache_is_a_file(e: Env) -> None:
    e.cache.write_text("not a directory")


def _conf_file(content: bytes) -> Callable[[Env], None]:
    def setup(e: Env) -> None:
        (e.root / "given.conflist").write_bytes(content)
    return setup


ROWS = [
    # malformed configs
    Row("not-json", 7, conf=b"{this is not json", says="10-net.conflist"),
    Row("not-object", 7, conf=b'["a", "list"]', says="10-net.conflist"),
    Row("no-name", 7, conf={"cniVersion": "1.0.0", "plugins": [{"type": "fake-ok"}]}, says="10-net.conflist"),
    Row("bad-name", 7, argv=("add", "../x", "NETNS"), conf=net("fake-ok", name="../x")),
    Row("bad-name-other", 7, conf=net("fake-ok", name="../x"), says="10-net.conflist"),
    Row("plugins-not-list", 7, conf={"cniVersion": "1.0.0", "name": "net", "plugins": {"type": "fake-ok"}}),
    Row("plugin-not-object", 7, conf={"cniVersion": "1.0.0", "name": "net", "plugins": ["fake-ok"]}),
    Row("plugin-no-type", 7, conf={"cniVersion": "1.0.0", "name": "net", "plugins": [{"bridge": "x"}]}),
    Row("type-is-path", 7, conf=net("../bin/sh")),
    Row("type-is-abs-path", 7, conf=net("/bin/sh")),
    Row("no-plugins", 7, conf=net()),
    Row("unsupported-version", 1, conf=net("fake-ok", version="9.9.9")),
    Row("garbage-version", 1, conf=net("fake-ok", version="one")),
    Row("bad-string-bool", 7, conf=net("fake-ok", disableCheck="yes")),
    Row("bad-bool-type", 7, conf=net("fake-ok", disableGC=1)),
    Row("network-missing", 7, argv=("add", "other", "NETNS"), says="'other'"),
    Row("conf-dir-missing", 7, env={"NETCONFPATH": "/nonexistent/podnet-test"}),
    Row("conf-file-not-json", 6, argv=("add", "net", "NETNS", "--conf-file", "given.conflist"),
        setup=_conf_file(b"garbage")),
    Row("conf-deep", 7, conf=b"[" * 50000, says="10-net.conflist"),
    Row("conf-file-deep", 6, argv=("add", "net", "NETNS", "--conf-file", "given.conflist"),
        setup=_conf_file(b'{"name": "net", "x": ' + b"[" * 50000)),
    Row("conf-file-missing", 7, argv=("add", "net", "NETNS", "--conf-file", "missing.conflist")),
    # bad environment
    Row("cni-args-novalue", 4, env={"CNI_ARGS": "novalue"}),
    Row("cni-args-empty-key", 4, env={"CNI_ARGS": "K8S_POD_NAME=a;=b"}),
    Row("cni-args-option", 4, argv=("add", "net", "NETNS", "--args", "novalue")),
    Row("cap-args-not-json", 4, env={"CAP_ARGS": "{portMappings"}),
    Row("cap-args-not-object", 4, env={"CAP_ARGS": "[1, 2]"}),
    Row("cap-args-nan", 4, env={"CAP_ARGS": '{"bandwidth": {"ingressRate": NaN}}'}),
    Row("cap-args-deep", 4, env={"CAP_ARGS": "[" * 50000}),
    Row("no-netns", 4, argv=("add", "net")),
    Row("no-cni-path", 7, env={"CNI_PATH": ""}),
    Row("cache-dir-is-a-file", 5, setup=_cache_is_a_file),
    # container IDs
    Row("cid-dotdot", 4, argv=("add", "net", "NETNS", "--container-id", "../x")),
    Row("cid-empty", 4, argv=("add", "net", "NETNS", "--container-id", "")),
    Row("cid-300", 4, argv=("add", "net", "NETNS", "--container-id", "c" * 300)),
    Row("cid-newline", 4, argv=("add", "net", "NETNS", "--container-id", "abc\n")),
    Row("cache-name-too-long", 4, argv=("add", "n" * 200, "NETNS", "--container-id", "c" * 60),
        conf=net("fake-ok", name="n" * 200)),
    # interface names
    Row("ifname-16", 4, env={"CNI_IFNAME": "e" * 16}),
    Row("ifname-slash", 4, argv=("add", "net", "NETNS", "--ifname", "a/b")),
    Row("ifname-dot", 4, argv=("add", "net", "NETNS", "--ifname", ".")),
    Row("ifname-empty", 4, argv=("add", "net", "NETNS", "--ifname", "")),
    # plugins
    Row("unknown-type", 7, conf=net("fake-ok", "nosuch"), says="nosuch"),
    Row("plugin-garbage", 6, conf=net("fake-ok", "fake-garbage", "fake-ok"), says="fake-garbage"),
    Row("plugin-exit", 999, conf=net("fake-ok", "fake-exit"), says="something went wrong"),
    Row("plugin-cni-error", 11, conf=net("fake-ok", "fake-cnierr"), says="try again later"),
    Row("plugin-killed", 999, conf=net("fake-ok", "fake-signal"), says="signal 9"),
    Row("plugin-deep", 6, conf=net("fake-ok", "fake-deep"), says="fake-deep"),
    Row("plugin-first-fails", 11, conf=net("fake-cnierr", "fake-ok")),
    # other commands
    Row("del-cid-dotdot", 4, argv=("del", "net", "NETNS", "--container-id", "../x")),
    Row("del-ifname-16", 4, argv=("del", "net", "NETNS"), env={"CNI_IFNAME": "e" * 16}),
    Row("check-not-added", 3, argv=("check", "net", "NETNS")),
    Row("check-031", 1, argv=("check", "net", "NETNS"), conf=net("fake-ok", version="0.3.1")),
    Row("gc-valid-dotdot", 4, argv=("gc", "net", "--valid", "../x:eth0"),
        conf=net("fake-ok", version="1.1.0")),
    Row("gc-valid-no-colon", 4, argv=("gc", "net", "--valid", "abc"), conf=net("fake-ok", version="1.1.0")),
    Row("gc-valid-bad-ifname", 4, argv=("gc", "net", "--valid", "abc:a/b"),
        conf=net("fake-ok", version="1.1.0")),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(env: Env, row: Row) -> None:
    env.write("10-net.conflist", row.conf)
    if row.setup:
        row.setup(env)
    netns = str(env.root / "netns" / "pod1")
    argv = [netns if a == "NETNS" else a for a in row.argv]
    proc = env.cni(*argv, **row.env)
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    err = json.loads(proc.stdout)
    assert err["code"] == row.code, err
    assert isinstance(err["msg"], str) and err["msg"]
    assert row.says in json.dumps(err)
    assert f"podnet cni {argv[0]}: error {row.code}: " in proc.stderr
    assert env.written() == [] or row.setup is _cache_is_a_file
    assert env.undone_adds() == []
    if not row.id.startswith("plugin-"):
        # Refused input: no plugin ran at all.
        assert env.calls() == [], env.calls()


def test_unknown_type_runs_nothing(env: Env) -> None:
    env.write("10-net.conflist", net("fake-ok", "nosuch"))
    proc = env.cni("add", "net", str(env.root / "ns"))
    assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == 7
    assert env.calls() == [] and env.written() == []


def test_failed_add_is_rolled_back_in_reverse(env: Env) -> None:
    env.write("10-net.conflist", net("fake-ok", "fake-garbage", "fake-cnierr"))
    proc = env.cni("add", "net", str(env.root / "ns"), "--container-id", "c1")
    assert json.loads(proc.stdout)["code"] == 6
    assert [(c[0], c[1]) for c in env.calls()] == [
        ("ADD", "fake-ok"), ("ADD", "fake-garbage"),
        ("DEL", "fake-cnierr"), ("DEL", "fake-garbage"), ("DEL", "fake-ok")]


# ---- the good path, for contrast ------------------------------------------------------------


def cnitool_id(netns: str) -> str:
    return "cnitool-" + hashlib.sha512(netns.encode()).hexdigest()[:20]


def test_add_check_del_roundtrip(env: Env) -> None:
    env.write("10-net.conflist", GOOD)
    ns = str(env.root / "ns1")
    add = env.cni("add", "net", ns, CNI_ARGS="K8S_POD_NAME=web-0", CAP_ARGS='{"portMappings": []}')
    assert add.returncode == 0, add.stderr
    assert json.loads(add.stdout)["ips"][0]["address"] == "10.1.0.5/24"
    cid = cnitool_id(ns)
    assert [p.name for p in env.written()] == [f"net-{cid}-eth0"]
    assert env.cni("check", "net", ns).returncode == 0
    rm = env.cni("del", "net", ns)
    assert rm.returncode == 0, rm.stderr
    assert rm.stdout == ""
    assert env.written() == [] and env.undone_adds() == []
    assert [c[0] for c in env.calls()] == ["ADD", "ADD", "CHECK", "CHECK", "DEL", "DEL"]


def test_default_container_id_is_cnitools(env: Env) -> None:
    env.write("10-net.conflist", GOOD)
    (env.root / "work").mkdir()
    proc = env.cni("add", "net", "pods/../pod1", cwd=env.root / "work")
    assert proc.returncode == 0, proc.stderr
    abs_ns = str(env.root / "work" / "pod1")
    cid = cnitool_id(abs_ns)
    assert len(cid) == len("cnitool-") + 20
    call = env.calls()[0]
    assert call[2] == cid and call[4] == abs_ns  # CNI_CONTAINERID and the absolute, clean CNI_NETNS


def test_default_container_id_cleans_leading_double_slash(env: Env) -> None:
    # Go's filepath.Abs cleans "//x" to "/x"; POSIX path normalisation in Python keeps the "//".
    env.write("10-net.conflist", GOOD)
    ns = str(env.root / "pod2")
    proc = env.cni("add", "net", "/" + ns)
    assert proc.returncode == 0, proc.stderr
    call = env.calls()[0]
    assert call[2] == cnitool_id(ns) and call[4] == ns


def test_options_override_environment(env: Env) -> None:
    env.write("10-net.conflist", GOOD)
    options = ["--ifname", "net1", "--container-id", "c2", "--args", "K=V", "--cap-args", "{}",
               "--conf-dir", str(env.conf), "--cni-path", str(env.bin), "--cache-dir", str(env.cache)]
    proc = env.cni("add", "net", str(env.root / "ns"), *options,
                   CNI_IFNAME="e" * 16, CNI_ARGS="novalue", CAP_ARGS="garbage",
                   NETCONFPATH="/nonexistent", CNI_PATH="/nonexistent", CNI_CACHE_DIR="/nonexistent")
    assert proc.returncode == 0, proc.stderr
    assert env.calls()[0][2:4] == ["c2", "net1"]


def test_del_with_damaged_cache_succeeds(env: Env) -> None:
    env.write("10-net.conflist", GOOD)
    ns = str(env.root / "ns")
    assert env.cni("add", "net", ns, "--container-id", "c3").returncode == 0
    entry = env.cache / "results" / "net-c3-eth0"
    entry.write_bytes(b"")
    proc = env.cni("del", "net", ns, "--container-id", "c3")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert env.written() == []


def test_gc_removes_unlisted(env: Env) -> None:
    env.write("10-net.conflist", net("fake-ok", version="1.1.0"))
    for cid in ("keep", "drop"):
        assert env.cni("add", "net", str(env.root / cid), "--container-id", cid).returncode == 0
    proc = env.cni("gc", "net", "--valid", "keep:eth0")
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in env.written()] == ["net-keep-eth0"]
    assert [c[:3] for c in env.calls()[2:]] == [["DEL", "fake-ok", "drop"], ["GC", "fake-ok", ""]]
