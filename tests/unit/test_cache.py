"""Result cache: libcni's cniCacheV1 layout, tolerant reads, atomic writes."""

from __future__ import annotations

import base64
import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from podnet.cni.errors import IOFailure
from podnet.runtime import cache as cache_mod
from podnet.runtime.cache import CacheEntry, ResultCache

CONFIG = (b'{"cniVersion":"1.0.0","name":"net1","plugins":[{"type":"bridge","bridge":"cni0",'
          b'"ipam":{"type":"host-local","subnet":"10.22.0.0/16"}}]}\n')
RESULT: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "cni0", "mac": "0a:58:0a:16:00:01"},
        {"name": "veth1a2b3c4d", "mac": "6e:1f:22:33:44:55"},
        {"name": "eth0", "mac": "0a:58:0a:16:00:05", "sandbox": "/var/run/netns/cni-1234"},
    ],
    "ips": [{"interface": 2, "address": "10.22.0.5/16", "gateway": "10.22.0.1"}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.22.0.1"}],
    "dns": {"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"]},
}


def entry(**kw: Any) -> CacheEntry:
    base: dict[str, Any] = {
        "network": "net1", "container_id": "abc123", "ifname": "eth0", "config": CONFIG,
        "result": RESULT, "cni_args": [("K8S_POD_NAMESPACE", "default"), ("K8S_POD_NAME", "web-0")],
        "capability_args": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
    }
    base.update(kw)
    return CacheEntry(**base)


@pytest.fixture
def rc(tmp_path: Path) -> ResultCache:
    return ResultCache(tmp_path / "cni")


def put(rc: ResultCache, data: bytes | str, name: str = "net1-abc123-eth0") -> Path:
    rc.results_dir.mkdir(parents=True, exist_ok=True)
    path = rc.results_dir / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def test_round_trip(rc: ResultCache) -> None:
    e = entry()
    rc.write(e)
    got = rc.read("net1", "abc123", "eth0")
    assert got.ok and not got.missing and not got.damaged
    assert got.entry == e
    assert got.prev_result == RESULT


def test_missing(rc: ResultCache) -> None:
    got = rc.read("net1", "abc123", "eth0")
    assert got.missing and got.entry is None and got.prev_result is None


def test_exact_libcni_layout(rc: ResultCache) -> None:
    rc.write(entry())
    path = rc.path("net1", "abc123", "eth0")
    assert path == rc.cache_dir / "results" / "net1-abc123-eth0"
    raw = path.read_bytes()
    doc = json.loads(raw)
    # Field order is Go's struct order; the encoding is compact like encoding/json.
    assert list(doc) == ["kind", "containerId", "config", "ifName", "networkName", "cniArgs",
                         "capabilityArgs", "result"]
    assert raw.startswith(b'{"kind":"cniCacheV1","containerId":"abc123","config":"')
    assert b": " not in raw and b", " not in raw
    assert doc["config"] == base64.b64encode(CONFIG).decode()
    assert doc["cniArgs"] == [["K8S_POD_NAMESPACE", "default"], ["K8S_POD_NAME", "web-0"]]
    assert doc["capabilityArgs"] == {"portMappings": [{"containerPort": 80, "hostPort": 8080,
                                                       "protocol": "tcp"}]}
    assert doc["result"] == RESULT
    # Maps are written with sorted keys, as Go does.
    assert list(doc["result"]) == sorted(RESULT)
    assert list(doc["result"]["ips"][0]) == ["address", "gateway", "interface"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(rc.results_dir.stat().st_mode) == 0o700


def test_empty_fields_omitted(rc: ResultCache) -> None:
    rc.write(entry(result=None, cni_args=[], capability_args={}, config=b""))
    raw = rc.path("net1", "abc123", "eth0").read_bytes()
    assert raw == (b'{"kind":"cniCacheV1","containerId":"abc123","config":"",'
                   b'"ifName":"eth0","networkName":"net1"}')
    got = rc.read("net1", "abc123", "eth0")
    assert got.ok and got.entry == entry(result=None, cni_args=[], capability_args={}, config=b"")


def test_go_string_escapes(rc: ResultCache) -> None:
    e = entry(capability_args={"note": "a<b>&c\u2028é"})
    rc.write(e)
    raw = rc.path("net1", "abc123", "eth0").read_bytes()
    assert b'"a\\u003cb\\u003e\\u0026c\\u2028\xc3\xa9"' in raw
    assert rc.read("net1", "abc123", "eth0").entry == e


def test_reads_go_written_entry(rc: ResultCache) -> None:
    # What libcni writes: null config possible (nil []byte), CR/LF-free base64, no optional fields.
    put(rc, json.dumps({"kind": "cniCacheV1", "containerId": "abc123", "config": None,
                        "ifName": "eth0", "networkName": "net1", "result": RESULT}))
    got = rc.read("net1", "abc123", "eth0")
    assert got.ok and got.entry is not None
    assert got.entry.config == b"" and got.entry.cni_args == [] and got.entry.capability_args == {}
    assert got.entry.result == RESULT and not got.entry.legacy


def test_legacy_format(rc: ResultCache) -> None:
    legacy = {"cniVersion": "0.3.1", "ips": [{"version": "4", "address": "10.1.0.2/24"}]}
    put(rc, json.dumps(legacy))
    got = rc.read("net1", "abc123", "eth0")
    assert got.ok and got.entry is not None
    assert got.entry.legacy and got.entry.result == legacy and got.entry.config == b""
    assert (got.entry.network, got.entry.container_id, got.entry.ifname) == ("net1", "abc123", "eth0")


HALF = json.dumps({"kind": "cniCacheV1", "containerId": "abc123", "config": "", "ifName": "eth0",
                   "networkName": "net1", "result": RESULT})


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"   \n",
        HALF[: len(HALF) // 2].encode(),
        HALF[:-1].encode(),
        b"\x00" * 4096,
        os.urandom(512),
        b"\xff\xfe{}",
        b"not json at all",
        b"[1, 2, 3]",
        b'"cniCacheV1"',
        b"null",
        b"{}",
        b'{"cniVersion": 1}',
        b'{"cniVersion": NaN}',
        b'{"kind": "cniCacheV2", "containerId": "abc123", "ifName": "eth0", "networkName": "net1"}',
        b'{"kind": 1}',
        b'{"kind": null}',
        b'{"kind": "cniCacheV1", "containerId": 5, "ifName": "eth0", "networkName": "net1"}',
        b'{"kind": "cniCacheV1", "containerId": "abc123", "ifName": "eth0", "networkName": "net1",'
        b' "config": 12}',
        b'{"kind": "cniCacheV1", "containerId": "abc123", "ifName": "eth0", "networkName": "net1",'
        b' "config": "@@not base64@@"}',
        b'{"kind": "cniCacheV1", "containerId": "abc123", "ifName": "eth0", "networkName": "net1",'
        b' "result": [1]}',
        b'{"kind": "cniCacheV1", "containerId": "abc123", "ifName": "eth0", "networkName": "net1",'
        b' "result": "x"}',
        b'{"kind": "cniCacheV1", "containerId": "abc123", "ifName": "eth0", "networkName": "net1",'
        b' "cniArgs": [["a"]]}',
        b'{"kind": "cniCacheV1", "containerId": "abc123", "ifName": "eth0", "networkName": "net1",'
        b' "cniArgs": {"a": "b"}}',
        b'{"kind": "cniCacheV1", "containerId": "abc123", "ifName": "eth0", "networkName": "net1",'
        b' "capabilityArgs": []}',
        b"[" * 100000,
    ],
    ids=lambda c: repr(c[:40]),
)
def test_damaged_never_raises(rc: ResultCache, content: bytes) -> None:
    put(rc, content)
    got = rc.read("net1", "abc123", "eth0")
    assert got.damaged, got
    assert got.reason and got.entry is None and got.prev_result is None
    # DEL goes on and removes it.
    rc.remove("net1", "abc123", "eth0")
    assert rc.read("net1", "abc123", "eth0").missing


def test_non_regular_files_are_damaged(rc: ResultCache, tmp_path: Path) -> None:
    rc.results_dir.mkdir(parents=True)
    (rc.results_dir / "net1-dir-eth0").mkdir()
    os.mkfifo(rc.results_dir / "net1-fifo-eth0")
    target = tmp_path / "elsewhere"
    target.write_text(json.dumps(RESULT))
    (rc.results_dir / "net1-link-eth0").symlink_to(target)
    for cid in ("dir", "fifo", "link"):
        assert rc.read("net1", cid, "eth0").damaged, cid


def test_entry_of_another_attachment_is_not_used(rc: ResultCache) -> None:
    # libcni names collide: net "a-b" + container "c" and net "a" + container "b-c" share a file.
    rc.write(entry(network="a-b", container_id="c"))
    got = rc.read("a", "b-c", "eth0")
    assert got.missing and got.prev_result is None and "another attachment" in got.reason
    assert rc.read("a-b", "c", "eth0").ok


@pytest.mark.parametrize(
    "key",
    [
        ("../x", "abc", "eth0"), ("net1", "../../etc", "eth0"), ("net1", "abc", "a/b"),
        ("net1", "..", "eth0"), ("net1", ".", "eth0"), ("..", "abc", "eth0"), ("", "abc", "eth0"),
        ("net1", "", "eth0"), ("net1", "abc", ""), ("net1", "abc\0", "eth0"), (".tmp", "abc", "eth0"),
        ("/abs", "abc", "eth0"),
    ],
)
def test_path_components_refused(rc: ResultCache, key: tuple[str, str, str]) -> None:
    with pytest.raises(ValueError):
        rc.path(*key)
    with pytest.raises(ValueError):
        rc.read(*key)
    with pytest.raises(ValueError):
        rc.remove(*key)
    with pytest.raises(ValueError):
        rc.write(entry(network=key[0], container_id=key[1], ifname=key[2]))
    assert not rc.cache_dir.exists()


def test_atomic_write_leaves_no_temp(rc: ResultCache) -> None:
    for i in range(5):
        rc.write(entry(capability_args={"i": i}))
    assert sorted(p.name for p in rc.results_dir.iterdir()) == ["net1-abc123-eth0"]
    got = rc.read("net1", "abc123", "eth0")
    assert got.entry is not None and got.entry.capability_args == {"i": 4}


def test_write_is_rename_of_synced_temp(rc: ResultCache, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        calls.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        real_fsync(fd)

    def rename(src: Any, dst: Any) -> None:
        assert Path(src).name.startswith(cache_mod.TEMP_PREFIX) and Path(src).parent == Path(dst).parent
        calls.append("rename")
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    rc.write(entry())
    assert calls == ["fsync-file", "rename", "fsync-dir"]


def test_remove(rc: ResultCache) -> None:
    rc.remove("net1", "abc123", "eth0")  # no cache dir at all: fine
    rc.write(entry())
    rc.remove("net1", "abc123", "eth0")
    assert rc.read("net1", "abc123", "eth0").missing
    rc.remove("net1", "abc123", "eth0")  # twice: fine


def test_attachments_and_damaged_for_gc(rc: ResultCache) -> None:
    rc.write(entry(container_id="c1"))
    rc.write(entry(container_id="c2", ifname="net0"))
    rc.write(entry(network="net1-x", container_id="c3"))  # name starts with "net1-", other network
    rc.write(entry(network="other", container_id="c4"))
    put(rc, b"", "net1-c5-eth0")
    put(rc, b'{"kind":"cniCacheV1","contai', "net1-c6-eth0")
    put(rc, json.dumps({"cniVersion": "0.4.0"}), "net1-c7-eth0")  # legacy: not attributable, skipped
    put(rc, b"junk", "other-c8-eth0")
    put(rc, b"{half", ".tmp-net1-c9-eth0.123.abcd")  # a crashed writer's temp file
    put(rc, b"", "net1-x-c10-eth0")  # damaged, but belongs to network net1-x

    got = sorted((e.container_id, e.ifname) for e in rc.attachments("net1"))
    assert got == [("c1", "eth0"), ("c2", "net0")]
    assert all(e.network == "net1" and e.result == RESULT for e in rc.attachments("net1"))
    assert [p.name for p in rc.damaged("net1")] == ["net1-c5-eth0", "net1-c6-eth0", "net1-x-c10-eth0"]
    known = ["net1-x", "other"]
    assert [p.name for p in rc.damaged("net1", others=known)] == ["net1-c5-eth0", "net1-c6-eth0"]
    assert [e.container_id for e in rc.attachments("net1-x")] == ["c3"]
    assert [p.name for p in rc.damaged("other")] == ["other-c8-eth0"]
    assert ResultCache(rc.cache_dir / "nope").attachments("net1") == []
    assert ResultCache(rc.cache_dir / "nope").damaged("net1") == []


def test_sweep_temp(rc: ResultCache) -> None:
    rc.write(entry())
    old = put(rc, b"{half", ".tmp-net1-abc123-eth0.1.aaaa")
    os.utime(old, (1, 1))
    fresh = put(rc, b"{half", ".tmp-net1-abc123-eth0.2.bbbb")
    assert rc.sweep_temp(older_than_s=60) == [old]
    assert fresh.exists() and not old.exists()
    assert rc.sweep_temp(older_than_s=0) == [fresh]
    assert [p.name for p in rc.results_dir.iterdir()] == ["net1-abc123-eth0"]
    assert ResultCache(rc.cache_dir / "nope").sweep_temp(0) == []


def test_write_error_disk_full(rc: ResultCache, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    rc.write(entry(capability_args={"v": "old"}))
    monkeypatch.setattr(os, "write", full)
    with pytest.raises(IOFailure) as exc:
        rc.write(entry(capability_args={"v": "new"}))
    assert str(rc.path("net1", "abc123", "eth0")) in str(exc.value)
    assert "No space left" in str(exc.value)
    assert exc.value.code == 5
    monkeypatch.undo()
    # The old entry is intact and no temp file is left.
    assert [p.name for p in rc.results_dir.iterdir()] == ["net1-abc123-eth0"]
    got = rc.read("net1", "abc123", "eth0")
    assert got.entry is not None and got.entry.capability_args == {"v": "old"}


def test_write_error_fsync(rc: ResultCache, monkeypatch: pytest.MonkeyPatch) -> None:
    def eio(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", eio)
    with pytest.raises(IOFailure, match="net1-abc123-eth0"):
        rc.write(entry())
    monkeypatch.undo()
    assert list(rc.results_dir.iterdir()) == []


def test_write_error_cache_dir_unusable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = ResultCache(blocker / "cni")
    with pytest.raises(IOFailure, match=str(blocker / "cni" / "results")):
        rc.write(entry())
    # Reading and listing under it: missing/empty, no exception.
    assert rc.read("net1", "abc123", "eth0").missing
    assert rc.attachments("net1") == [] and rc.damaged("net1") == []
    rc.remove("net1", "abc123", "eth0")


def test_default_cache_dir() -> None:
    assert ResultCache().path("n", "c", "eth0") == Path("/var/lib/cni/results/n-c-eth0")
