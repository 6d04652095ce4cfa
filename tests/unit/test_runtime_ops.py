"""CNIRuntime list operations against a fake Exec: order, prevResult chaining, rollback, cache, GC."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from podnet.cni.config import NetConfList, parse_conflist
from podnet.cni.errors import CNIError, IOFailure, PluginNotAvailable, TryAgainLater
from podnet.runtime.cache import CacheEntry, ResultCache
from podnet.runtime.invoke import Invocation, PluginNotFound
from podnet.runtime.operations import PENDING_DIR, CNIRuntime, MultiError, RuntimeConf

# ---- the fake -------------------------------------------------------------------------------


@dataclass
class Call:
    plugin: str
    command: str
    inv: Invocation
    stdin: dict[str, Any]


Outcome = bytes | CNIError | Callable[["Call"], bytes]


def default_add(call: Call) -> bytes:
    """A plugin's ADD: the previous result plus one interface named after the plugin."""
    prev = call.stdin.get("prevResult") or {}
    interfaces = [*prev.get("interfaces", []), {"name": call.plugin}]
    out = {"cniVersion": "1.1.0", "interfaces": interfaces,
           "ips": prev.get("ips") or [{"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 0}],
           "routes": prev.get("routes", [])}
    return json.dumps(out).encode()


class FakeExec:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.script: dict[tuple[str, str], Outcome] = {}
        self.missing: set[str] = set()

    def find(self, plugin_type: str, path: Sequence[str]) -> str:
        if plugin_type in self.missing:
            raise PluginNotFound(f"failed to find plugin {plugin_type!r} in path {list(path)}")
        return f"/fake/bin/{plugin_type}"

    def run(self, plugin: str, inv: Invocation, stdin: bytes) -> bytes:
        call = Call(os.path.basename(plugin), inv.command, inv, json.loads(stdin))
        self.calls.append(call)
        outcome = self.script.get((call.plugin, inv.command))
        if isinstance(outcome, CNIError):
            raise outcome
        if isinstance(outcome, bytes):
            return outcome
        if outcome is not None:
            return outcome(call)
        return default_add(call) if inv.command == "ADD" else b""

    def seq(self, command: str | None = None) -> list[tuple[str, str]]:
        return [(c.plugin, c.command) for c in self.calls if command is None or c.command == command]


# ---- helpers --------------------------------------------------------------------------------

NET = "net1"
CID = "c0ffee"
RT = RuntimeConf(CID, "/var/run/netns/pod1", "eth0", (("K8S_POD_NAME", "web-0"),),
                 {"portMappings": [{"hostPort": 80, "containerPort": 8080}], "bandwidth": {"rate": 1}})


def conflist(version: str = "1.0.0", types: Sequence[str] = ("a", "b", "c"), **top: Any) -> NetConfList:
    plugins = [{"type": t} for t in types]
    doc = {"cniVersion": version, "name": NET, "plugins": plugins, **top}
    return parse_conflist(json.dumps(doc).encode(), "test.conflist")


@pytest.fixture
def fx() -> FakeExec:
    return FakeExec()


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def rt_(fx: FakeExec, cache_dir: Path) -> CNIRuntime:
    return CNIRuntime(["/fake/bin"], cache_dir, fx)


def cache(cache_dir: Path) -> ResultCache:
    return ResultCache(cache_dir)


def pending(cache_dir: Path) -> ResultCache:
    return ResultCache(cache_dir / PENDING_DIR)


def files(rc: ResultCache) -> list[str]:
    return sorted(p.name for p in rc.results_dir.iterdir()) if rc.results_dir.is_dir() else []


def seed(cache_dir: Path, conf: NetConfList, cid: str = CID, ifname: str = "eth0",
         result: dict[str, Any] | None = None, store: str = "cache",
         args: Sequence[tuple[str, str]] = ()) -> None:
    rc = cache(cache_dir) if store == "cache" else pending(cache_dir)
    if result is None and store == "cache":
        result = {"cniVersion": "1.0.0", "interfaces": [{"name": "cached0"}],
                  "ips": [{"address": "10.9.0.9/24", "interface": 0}]}
    rc.write(CacheEntry(conf.name, cid, ifname, conf.raw_bytes, result, list(args)))


def put_raw(cache_dir: Path, data: bytes, cid: str = CID, ifname: str = "eth0") -> Path:
    rc = cache(cache_dir)
    rc.results_dir.mkdir(parents=True, exist_ok=True)
    path = rc.path(NET, cid, ifname)
    path.write_bytes(data)
    return path


# ---- ADD ------------------------------------------------------------------------------------


def test_add_runs_plugins_in_order_and_chains_prev_result(fx: FakeExec, rt_: CNIRuntime,
                                                          cache_dir: Path) -> None:
    conf = conflist("1.0.0")
    result = rt_.add(conf, RT)
    assert fx.seq() == [("a", "ADD"), ("b", "ADD"), ("c", "ADD")]
    first, second, third = fx.calls
    assert "prevResult" not in first.stdin
    # Each plugin gets the previous one's result, converted to the list's version.
    assert second.stdin["prevResult"]["cniVersion"] == "1.0.0"
    assert [i["name"] for i in second.stdin["prevResult"]["interfaces"]] == ["a"]
    assert [i["name"] for i in third.stdin["prevResult"]["interfaces"]] == ["a", "b"]
    for call in fx.calls:
        assert call.stdin["name"] == NET and call.stdin["cniVersion"] == "1.0.0"
        assert call.inv == Invocation("ADD", CID, RT.netns, "eth0", RT.args, ("/fake/bin",))
    assert result.cni_version == "1.0.0"
    assert [i.name for i in result.interfaces] == ["a", "b", "c"]


def test_add_converts_prev_result_to_list_version(fx: FakeExec, rt_: CNIRuntime) -> None:
    rich = {"cniVersion": "1.1.0", "interfaces": [{"name": "a", "mtu": 9000}],
            "ips": [{"address": "10.1.0.5/24", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1", "mtu": 1400}]}
    fx.script[("a", "ADD")] = json.dumps(rich).encode()
    rt_.add(conflist("0.4.0", ("a", "b")), RT)
    prev = fx.calls[1].stdin["prevResult"]
    assert prev["cniVersion"] == "0.4.0"
    assert prev["ips"] == [{"version": "4", "interface": 0, "address": "10.1.0.5/24"}]
    assert "mtu" not in prev["interfaces"][0] and "mtu" not in prev["routes"][0]


def test_add_legacy_list_version(fx: FakeExec, rt_: CNIRuntime) -> None:
    result = rt_.add(conflist("0.2.0", ("a", "b")), RT)
    prev = fx.calls[1].stdin["prevResult"]
    assert prev["cniVersion"] == "0.2.0" and prev["ip4"]["ip"] == "10.1.0.5/24"
    assert result.to_json()["cniVersion"] == "0.2.0"


def test_add_only_declared_capabilities_become_runtime_config(fx: FakeExec, cache_dir: Path) -> None:
    doc = {"cniVersion": "1.0.0", "name": NET, "plugins": [
        {"type": "a", "capabilities": {"portMappings": True, "bandwidth": False}},
        {"type": "b"},
        {"type": "c", "capabilities": {"ips": True}},
    ]}
    conf = parse_conflist(json.dumps(doc).encode())
    CNIRuntime(["/fake/bin"], cache_dir, fx).add(conf, RT)
    a, b, c = fx.calls
    assert a.stdin["runtimeConfig"] == {"portMappings": RT.capability_args["portMappings"]}
    assert "runtimeConfig" not in b.stdin
    assert "runtimeConfig" not in c.stdin


def test_add_caches_libcni_entry_and_removes_pending(fx: FakeExec, rt_: CNIRuntime, cache_dir: Path) -> None:
    conf = conflist("1.0.0")
    result = rt_.add(conf, RT)
    read = cache(cache_dir).read(NET, CID, "eth0")
    assert read.ok and read.entry is not None
    assert read.entry.config == conf.raw_bytes
    assert read.entry.result == result.to_json("1.0.0")
    assert read.entry.cni_args == list(RT.args)
    assert read.entry.capability_args == dict(RT.capability_args)
    assert files(cache(cache_dir)) == [f"{NET}-{CID}-eth0"]
    assert files(pending(cache_dir)) == []


def test_pending_marker_exists_while_add_runs(fx: FakeExec, rt_: CNIRuntime, cache_dir: Path) -> None:
    seen: list[bool] = []

    def look(call: Call) -> bytes:
        seen.append(pending(cache_dir).read(NET, CID, "eth0").ok)
        return default_add(call)

    fx.script[("b", "ADD")] = look
    rt_.add(conflist(), RT)
    assert seen == [True]
    assert files(pending(cache_dir)) == []


@pytest.mark.parametrize("fail_at", ["a", "b", "c"])
def test_add_failure_rolls_back_whole_list(fx: FakeExec, rt_: CNIRuntime, cache_dir: Path,
                                           fail_at: str) -> None:
    fx.script[(fail_at, "ADD")] = TryAgainLater("busy", "come back later")
    with pytest.raises(CNIError) as info:
        rt_.add(conflist(), RT)
    assert info.value.code == 11 and info.value.msg == "busy"
    adds = fx.seq("ADD")
    assert adds[-1] == (fail_at, "ADD")
    # DEL for every plugin of the list, reverse order, even those whose ADD never ran.
    assert fx.seq("DEL") == [("c", "DEL"), ("b", "DEL"), ("a", "DEL")]
    assert files(cache(cache_dir)) == [] and files(pending(cache_dir)) == []


def test_add_garbage_output_rolls_back(fx: FakeExec, rt_: CNIRuntime, cache_dir: Path) -> None:
    fx.script[("b", "ADD")] = b"this is not json"
    with pytest.raises(CNIError) as info:
        rt_.add(conflist(), RT)
    assert info.value.code == 6
    assert fx.seq("DEL") == [("c", "DEL"), ("b", "DEL"), ("a", "DEL")]
    assert files(cache(cache_dir)) == [] and files(pending(cache_dir)) == []


def test_add_result_not_a_result_rolls_back(fx: FakeExec, rt_: CNIRuntime, cache_dir: Path) -> None:
    fx.script[("a", "ADD")] = b'["a list"]'
    with pytest.raises(CNIError) as info:
        rt_.add(conflist(), RT)
    assert info.value.code == 6
    assert fx.seq() == [("a", "ADD"), ("c", "DEL"), ("b", "DEL"), ("a", "DEL")]


def test_add_rollback_failure_keeps_pending(fx: FakeExec, rt_: CNIRuntime, cache_dir: Path) -> None:
    fx.script[("c", "ADD")] = PluginNotAvailable("no IPs left")
    fx.script[("b", "DEL")] = IOFailure("disk gone")
    with pytest.raises(CNIError) as info:
        rt_.add(conflist(), RT)
    assert info.value.code == 50  # the ADD's error, not the rollback's
    assert fx.seq("DEL") == [("c", "DEL"), ("b", "DEL"), ("a", "DEL")]
    assert files(cache(cache_dir)) == []
    marker = pending(cache_dir).read(NET, CID, "eth0")
    assert marker.ok and marker.entry is not None and marker.entry.cni_args == list(RT.args)


def test_add_cache_write_failure_rolls_back(fx: FakeExec, cache_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                            ) -> None:
    rt_ = CNIRuntime(["/fake/bin"], cache_dir, fx)

    def boom(entry: CacheEntry) -> None:
        raise IOFailure("cannot write cache file")

    monkeypatch.setattr(rt_.cache, "write", boom)
    with pytest.raises(IOFailure):
        rt_.add(conflist(), RT)
    assert fx.seq("DEL") == [("c", "DEL"), ("b", "DEL"), ("a", "DEL")]
    assert files(pending(cache_dir)) == []


def test_add_unknown_plugin_type_writes_nothing(fx: FakeExec, rt_: CNIRuntime, cache_dir: Path) -> None:
    fx.missing.add("c")
    with pytest.raises(PluginNotFound) as info:
        rt_.add(conflist(), RT)
    assert info.value.code == 7
    # No plugin ran (ADD would otherwise have to be undone with a DEL it cannot send to 'c').
    assert fx.seq("ADD") == []
    assert files(cache(cache_dir)) == [] and files(pending(cache_dir)) == []


def test_add_rollback_on_legacy_version_sends_no_prev_result(fx: FakeExec, rt_: CNIRuntime) -> None:
    fx.script[("b", "ADD")] = TryAgainLater("busy")
    with pytest.raises(TryAgainLater):
        rt_.add(conflist("0.3.1"), RT)
    assert all("prevResult" not in c.stdin for c in fx.calls if c.command == "DEL")


def test_add_rollback_sends_prev_result_from_040(fx: FakeExec, rt_: CNIRuntime) -> None:
    fx.script[("b", "ADD")] = TryAgainLater("busy")
    with pytest.raises(TryAgainLater):
        rt_.add(conflist("0.4.0"), RT)
    dels = [c for c in fx.calls if c.command == "DEL"]
    assert [d.stdin["prevResult"]["interfaces"][0]["name"] for d in dels] == ["a", "a", "a"]


def test_add_result_unfit_for_list_version_is_still_rolled_back(fx: FakeExec, rt_: CNIRuntime,
                                                                 cache_dir: Path) -> None:
    # A 0.2.0 result needs an IP; a result without one cannot be handed on as prevResult.
    fx.script[("a", "ADD")] = b'{"cniVersion": "1.0.0", "interfaces": [{"name": "a"}]}'
    with pytest.raises(CNIError) as info:
        rt_.add(conflist("0.2.0", ("a", "b")), RT)
    assert info.value.code == 1
    assert fx.seq() == [("a", "ADD"), ("b", "DEL"), ("a", "DEL")]
    assert files(cache(cache_dir)) == [] and files(pending(cache_dir)) == []


def test_add_succeeds_when_pending_marker_cannot_be_removed(fx: FakeExec, rt_: CNIRuntime, cache_dir: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object) -> None:
        raise IOFailure("cannot remove")

    monkeypatch.setattr(rt_.pending, "remove", boom)
    rt_.add(conflist(), RT)
    assert fx.seq("DEL") == []
    assert cache(cache_dir).read(NET, CID, "eth0").ok


# ---- invalid runtime parameters -------------------------------------------------------------


@pytest.mark.parametrize("rt", [
    RuntimeConf("../x", "/ns"), RuntimeConf("", "/ns"), RuntimeConf("x" * 300, "/ns"),
    RuntimeConf("ok", "/ns", ifname="a/b"), RuntimeConf("ok", "/ns", ifname="."),
    RuntimeConf("ok", "/ns", ifname="x" * 16), RuntimeConf("ok", "/ns", ifname=""),
    # Each part is fine on its own; together the cache file name is longer than NAME_MAX.
    RuntimeConf("x" * 250, "/ns", ifname="eth0"),
], ids=["dotdot", "empty", "300", "slash-if", "dot-if", "16-if", "empty-if", "long-file"])
@pytest.mark.parametrize("op", ["add", "delete", "check"])
def test_invalid_runtime_conf_is_code_4_before_any_plugin(fx: FakeExec, rt_: CNIRuntime, cache_dir: Path,
                                                          rt: RuntimeConf, op: str) -> None:
    with pytest.raises(CNIError) as info:
        getattr(rt_, op)(conflist(), rt)
    assert info.value.code == 4
    assert fx.calls == []
    assert not cache_dir.exists()


def test_add_and_check_need_netns(fx: FakeExec, rt_: CNIRuntime) -> None:
    for op in (rt_.add, rt_.check):
        with pytest.raises(CNIError) as info:
            op(conflist(), RuntimeConf(CID, ""))
        assert info.value.code == 4
    assert fx.calls == []


# ---- DEL ------------------------------------------------------------------------------------


def test_del_reverse_order_with_cached_prev_result(fx: FakeExec, rt_: CNIRuntime, cache_dir: Path) -> None:
    conf = conflist("1.0.0")
    rt_.add(conf, RT)
    fx.calls.clear()
    rt_.delete(conf, RT)
    assert fx.seq() == [("c", "DEL"), ("b", "DEL"), ("a", "DEL")]
    for call in fx.calls:
        assert [i["name"] for i in call.stdin["prevResult"]["interfaces"]] == ["a", "b", "c"]
        assert call.inv.args == RT.args and call.inv.netns == RT.netns
    assert files(cache(cache_dir)) == [] and files(pending(cache_dir)) == []


def test_del_goes_on_after_failure_and_reports_all(fx: FakeExec, rt_: CNIRuntime, cache_dir: Path) -> None:
    conf = conflist()
    rt_.add(conf, RT)
    fx.calls.clear()
    fx.script[("c", "DEL")] = IOFailure("c broke")
    fx.script[("a", "DEL")] = TryAgainLater("a busy")
    with pytest.raises(MultiError) as info:
        rt_.delete(conf, RT)
    assert fx.seq() == [("c", "DEL"), ("b", "DEL"), ("a", "DEL")]
    err = info.value
    assert err.code == 5  # the first failure's code
    assert [(name, e.code) for name, e in err.errors] == [("c", 5), ("a", 11)]
    assert "c broke" in str(err) and "a busy" in str(err)
    # The entry stays so that a retried DEL still has the prevResult.
    assert cache(cache_dir).read(NET, CID, "eth0").ok


def test_del_retry_after_failure_succeeds(fx: FakeExec, rt_: CNIRuntime, cache_dir: Path) -> None:
    conf = conflist()
    rt_.add(conf, RT)
    fx.script[("b", "DEL")] = IOFailure("b broke")
    with pytest.raises(MultiError):
        rt_.delete(conf, RT)
    del fx.script[("b", "DEL")]
    fx.calls.clear()
    rt_.delete(conf, RT)
    assert all("prevResult" in c.stdin for c in fx.calls)
    assert files(cache(cache_dir)) == []


DAMAGED = {
    "empty": b"",
    "half": b'{"kind":"cniCacheV1","containerId":"c0ffee","result":{"cniVer',
    "garbage": b"\x00\xff garbage \x13",
    "wrong-kind": b'{"kind":"somethingElse","containerId":"c0ffee","ifName":"eth0","networkName":"net1"}',
    "not-object": b"[1,2,3]",
    "bad-result": (b'{"kind":"cniCacheV1","containerId":"c0ffee","ifName":"eth0","networkName":"net1",'
                   b'"result":{"cniVersion":"1.0.0","ips":[{"address":"not-an-ip"}]}}'),
}


@pytest.mark.parametrize("what", ["missing", *DAMAGED])
def test_del_without_usable_cache_runs_without_prev_result(fx: FakeExec, rt_: CNIRuntime, cache_dir: Path,
                                                           what: str) -> None:
    conf = conflist("1.0.0")
    if what != "missing":
        path = put_raw(cache_dir, DAMAGED[what])
    rt_.delete(conf, RT)
    assert fx.seq() == [("c", "DEL"), ("b", "DEL"), ("a", "DEL")]
    assert all("prevResult" not in c.stdin for c in fx.calls)
    if what != "missing":
        assert not path.exists()
    assert files(cache(cache_dir)) == []


def test_del_with_damaged_cache_and_failing_plugin_drops_file(fx: FakeExec, rt_: CNIRuntime,
                                                              cache_dir: Path) -> None:
    put_raw(cache_dir, b"")
    fx.script[("b", "DEL")] = IOFailure("b broke")
    with pytest.raises(MultiError):
        rt_.delete(conflist(), RT)
    # The file was useless; a retry would not read anything from it either.
    assert files(cache(cache_dir)) == []


@pytest.mark.parametrize("what", ["directory", "symlink", "fifo"])
def test_del_with_odd_file_at_cache_path_succeeds(fx: FakeExec, rt_: CNIRuntime, cache_dir: Path,
                                                  what: str) -> None:
    rc = cache(cache_dir)
    rc.results_dir.mkdir(parents=True)
    path = rc.path(NET, CID, "eth0")
    if what == "directory":
        path.mkdir()
    elif what == "symlink":
        target = cache_dir / "elsewhere"
        target.write_bytes(b"{}")
        path.symlink_to(target)
    else:
        os.mkfifo(path)
    rt_.delete(conflist(), RT)
    assert fx.seq() == [("c", "DEL"), ("b", "DEL"), ("a", "DEL")]
    assert all("prevResult" not in c.stdin for c in fx.calls)
    if what == "symlink":
        assert not path.is_symlink() and (cache_dir / "elsewhere").exists()


def test_del_on_031_passes_no_prev_result(fx: FakeExec, rt_: CNIRuntime, cache_dir: Path) -> None:
    conf = conflist("0.3.1")
    rt_.add(conf, RT)
    fx.calls.clear()
    rt_.delete(conf, RT)
    assert fx.seq() == [("c", "DEL"), ("b", "DEL"), ("a", "DEL")]
    assert all("prevResult" not in c.stdin for c in fx.calls)
    assert files(cache(cache_dir)) == []


def test_del_of_never_added_attachment_succeeds(fx: FakeExec, rt_: CNIRuntime, cache_dir: Path) -> None:
    rt_.delete(conflist(), RuntimeConf(CID))  # no netns either: DEL must still work
    assert fx.seq() == [("c", "DEL"), ("b", "DEL"), ("a", "DEL")]
    assert fx.calls[0].inv.netns == ""


def test_del_removes_pending_marker(fx: FakeExec, rt_: CNIRuntime, cache_dir: Path) -> None:
    conf = conflist()
    seed(cache_dir, conf, store="pending")
    rt_.delete(conf, RT)
    assert files(pending(cache_dir)) == []


def test_del_does_not_remove_another_attachments_colliding_entry(fx: FakeExec, rt_: CNIRuntime,
                                                                 cache_dir: Path) -> None:
    # libcni's file names collide: net1 + "a-b" + eth0 and net1-a + "b" + eth0 share one file.
    other = parse_conflist(json.dumps({"cniVersion": "1.0.0", "name": "net1-a",
                                       "plugins": [{"type": "a"}]}).encode())
    cache(cache_dir).write(CacheEntry("net1-a", "b", "eth0", other.raw_bytes,
                                      {"cniVersion": "1.0.0", "ips": [{"address": "10.2.0.2/24"}]}))
    rt_.delete(conflist(), RuntimeConf("a-b"))
    assert all("prevResult" not in c.stdin for c in fx.calls)
    assert cache(cache_dir).read("net1-a", "b", "eth0").ok


# ---- CHECK ----------------------------------------------------------------------------------


def test_check_disabled_calls_nothing(fx: FakeExec, rt_: CNIRuntime) -> None:
    rt_.check(conflist("1.0.0", disableCheck=True), RT)
    assert fx.calls == []


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0", "0.3.0", "0.3.1"])
def test_check_before_040_is_code_1(fx: FakeExec, rt_: CNIRuntime, cache_dir: Path, version: str) -> None:
    seed(cache_dir, conflist(version))
    with pytest.raises(CNIError) as info:
        rt_.check(conflist(version), RT)
    assert info.value.code == 1
    assert fx.calls == []


@pytest.mark.parametrize("what", ["missing", "empty", "garbage"])
def test_check_without_cache_is_code_3(fx: FakeExec, rt_: CNIRuntime, cache_dir: Path, what: str) -> None:
    if what != "missing":
        path = put_raw(cache_dir, DAMAGED[what])
    with pytest.raises(CNIError) as info:
        rt_.check(conflist(), RT)
    assert info.value.code == 3
    assert fx.calls == []
    if what != "missing":
        assert path.exists()  # CHECK reports; it does not clean up


def test_check_passes_cached_prev_result_in_order(fx: FakeExec, rt_: CNIRuntime) -> None:
    conf = conflist("0.4.0")
    rt_.add(conf, RT)
    fx.calls.clear()
    rt_.check(conf, RT)
    assert fx.seq() == [("a", "CHECK"), ("b", "CHECK"), ("c", "CHECK")]
    for call in fx.calls:
        prev = call.stdin["prevResult"]
        assert prev["cniVersion"] == "0.4.0"
        assert [i["name"] for i in prev["interfaces"]] == ["a", "b", "c"]


def test_check_stops_at_first_error(fx: FakeExec, rt_: CNIRuntime) -> None:
    conf = conflist()
    rt_.add(conf, RT)
    fx.calls.clear()
    fx.script[("b", "CHECK")] = CNIError("veth MAC drifted", code=110)
    with pytest.raises(CNIError) as info:
        rt_.check(conf, RT)
    assert info.value.code == 110
    assert fx.seq() == [("a", "CHECK"), ("b", "CHECK")]


# ---- STATUS ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_status_before_110_calls_nothing(fx: FakeExec, rt_: CNIRuntime, version: str) -> None:
    rt_.status(conflist(version))
    assert fx.calls == []


def test_status_calls_each_in_order(fx: FakeExec, rt_: CNIRuntime) -> None:
    rt_.status(conflist("1.1.0"))
    assert fx.seq() == [("a", "STATUS"), ("b", "STATUS"), ("c", "STATUS")]
    assert all("prevResult" not in c.stdin and c.stdin["name"] == NET for c in fx.calls)


def test_status_returns_first_error(fx: FakeExec, rt_: CNIRuntime) -> None:
    fx.script[("b", "STATUS")] = PluginNotAvailable("no IPs left in 10.1.0.0/24")
    fx.script[("c", "STATUS")] = IOFailure("never asked")
    with pytest.raises(CNIError) as info:
        rt_.status(conflist("1.1.0"))
    assert info.value.code == 50 and "no IPs left" in info.value.msg
    assert fx.seq() == [("a", "STATUS"), ("b", "STATUS")]


# ---- GC -------------------------------------------------------------------------------------


def gc_setup(cache_dir: Path, conf: NetConfList) -> None:
    seed(cache_dir, conf, "keep1", args=[("K", "keep")])
    seed(cache_dir, conf, "stale1", args=[("K8S_POD_NAME", "old-0")])
    seed(cache_dir, conf, "stale2", "net1")
    seed(cache_dir, conf, "half1", store="pending", args=[("K8S_POD_NAME", "crashed")])


def test_gc_deletes_stale_cached_and_pending(fx: FakeExec, rt_: CNIRuntime, cache_dir: Path) -> None:
    conf = conflist("1.1.0", ("a", "b"))
    gc_setup(cache_dir, conf)
    deleted = rt_.gc(conf, [("keep1", "eth0")])
    assert sorted(deleted) == [("half1", "eth0"), ("stale1", "eth0"), ("stale2", "net1")]
    dels = [(c.inv.container_id, c.inv.ifname, c.plugin) for c in fx.calls if c.command == "DEL"]
    assert sorted(dels) == sorted([(cid, ifn, p) for cid, ifn in deleted for p in ("a", "b")])
    by_cid = {c.inv.container_id: c for c in fx.calls if c.command == "DEL"}
    assert by_cid["stale1"].inv.args == (("K8S_POD_NAME", "old-0"),)
    assert by_cid["half1"].inv.args == (("K8S_POD_NAME", "crashed"),)
    assert "prevResult" in by_cid["stale1"].stdin
    assert files(cache(cache_dir)) == [f"{NET}-keep1-eth0"]
    assert files(pending(cache_dir)) == []
    gcs = [c for c in fx.calls if c.command == "GC"]
    assert [c.plugin for c in gcs] == ["a", "b"]
    for call in gcs:
        assert call.stdin["cni.dev/valid-attachments"] == [{"containerID": "keep1", "ifname": "eth0"}]
        assert call.stdin["name"] == NET and call.stdin["cniVersion"] == "1.1.0"
    # GC goes after the DELs.
    assert fx.calls[-2:] == gcs


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_gc_before_110_dels_but_sends_no_gc(fx: FakeExec, rt_: CNIRuntime, cache_dir: Path,
                                            version: str) -> None:
    conf = conflist(version, ("a",))
    gc_setup(cache_dir, conf)
    rt_.gc(conf, [("keep1", "eth0")])
    assert {c.command for c in fx.calls} == {"DEL"}
    assert files(cache(cache_dir)) == [f"{NET}-keep1-eth0"]


def test_gc_disabled_does_nothing(fx: FakeExec, rt_: CNIRuntime, cache_dir: Path) -> None:
    conf = conflist("1.1.0", disableGC=True)
    gc_setup(cache_dir, conf)
    put_raw(cache_dir, b"", "broken1")
    assert rt_.gc(conf, []) == []
    assert fx.calls == []
    assert len(files(cache(cache_dir))) == 4 and len(files(pending(cache_dir))) == 1


def test_gc_removes_damaged_files_but_not_valid_ones(fx: FakeExec, rt_: CNIRuntime, cache_dir: Path) -> None:
    conf = conflist("1.1.0", ("a",))
    broken = put_raw(cache_dir, b"", "broken1")
    kept = put_raw(cache_dir, b"{garbage", "keep1")
    rt_.gc(conf, [("keep1", "eth0")])
    assert not broken.exists()
    assert kept.exists()  # a live attachment's own DEL deals with it
    assert fx.seq() == [("a", "GC")]


def test_gc_removes_damaged_pending_markers(fx: FakeExec, rt_: CNIRuntime, cache_dir: Path) -> None:
    conf = conflist("1.1.0", ("a",))
    pend = pending(cache_dir)
    pend.results_dir.mkdir(parents=True)
    torn = pend.results_dir / f"{NET}-torn1-eth0"
    torn.write_bytes(b'{"kind":"cniCa')
    rt_.gc(conf, [])
    assert not torn.exists()


def test_gc_leaves_other_networks_alone(fx: FakeExec, rt_: CNIRuntime, cache_dir: Path) -> None:
    conf = conflist("1.1.0", ("a",))
    other = parse_conflist(json.dumps({"cniVersion": "1.1.0", "name": "net1-x",
                                       "plugins": [{"type": "z"}]}).encode())
    seed(cache_dir, other, "s1")
    cache(cache_dir).results_dir.joinpath("net1-x-broken-eth0").write_bytes(b"")
    rt_.gc(conf, [], other_networks=["net1-x"])
    assert fx.seq() == [("a", "GC")]
    assert files(cache(cache_dir)) == ["net1-x-broken-eth0", "net1-x-s1-eth0"]


def test_gc_goes_on_after_failures_and_reports_all(fx: FakeExec, rt_: CNIRuntime, cache_dir: Path) -> None:
    conf = conflist("1.1.0", ("a", "b"))
    gc_setup(cache_dir, conf)
    fx.script[("a", "DEL")] = lambda call: (_ for _ in ()).throw(IOFailure("stuck")) \
        if call.inv.container_id == "stale1" else b""
    fx.script[("a", "GC")] = TryAgainLater("later")
    with pytest.raises(MultiError) as info:
        rt_.gc(conf, [("keep1", "eth0")])
    codes = [e.code for _, e in info.value.errors]
    assert codes == [5, 11]
    assert [c.plugin for c in fx.calls if c.command == "GC"] == ["a", "b"]
    # The failed attachment stays for the next GC; the others are gone.
    assert files(cache(cache_dir)) == [f"{NET}-keep1-eth0", f"{NET}-stale1-eth0"]


def test_gc_with_nothing_cached_only_sends_gc(fx: FakeExec, rt_: CNIRuntime) -> None:
    assert rt_.gc(conflist("1.1.0"), []) == []
    assert fx.seq() == [("a", "GC"), ("b", "GC"), ("c", "GC")]
    assert fx.calls[0].stdin["cni.dev/valid-attachments"] == []


@pytest.mark.parametrize("valid", [[("../x", "eth0")], [("ok", "a/b")], [("", "eth0")]])
def test_gc_invalid_valid_attachment_is_code_4(fx: FakeExec, rt_: CNIRuntime, cache_dir: Path,
                                               valid: list[tuple[str, str]]) -> None:
    conf = conflist("1.1.0")
    seed(cache_dir, conf, "stale1")
    with pytest.raises(CNIError) as info:
        rt_.gc(conf, valid)
    assert info.value.code == 4
    assert fx.calls == []
    assert files(cache(cache_dir)) == [f"{NET}-stale1-eth0"]
