"""Loading networks from a config directory the way libcni does, plus drop-in plugin directories."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from podnet.cni.errors import CNIError
from podnet.runtime.confdir import NetworkNotFound, load_file, load_network, network_names


def conflist(name: str, *types: str, version: str = "1.1.0", **top: Any) -> str:
    return json.dumps({"cniVersion": version, "name": name, "plugins": [{"type": t} for t in types], **top})


def single(name: str, type_: str, version: str = "1.0.0") -> str:
    return json.dumps({"cniVersion": version, "name": name, "type": type_})


def write(directory: Path, name: str, text: str | bytes) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def types(conf: Any) -> list[str]:
    return [p.type for p in conf.plugins]


def test_conflist_wins_over_conf_and_json(tmp_path: Path) -> None:
    write(tmp_path, "00-net.conf", single("net", "from-conf"))
    write(tmp_path, "00-net.json", single("net", "from-json"))
    write(tmp_path, "99-net.conflist", conflist("net", "from-list-1", "from-list-2"))
    conf = load_network(tmp_path, "net")
    assert types(conf) == ["from-list-1", "from-list-2"]
    assert conf.source.endswith("99-net.conflist")
    assert conf.raw_bytes == (tmp_path / "99-net.conflist").read_bytes()


def test_first_file_in_name_order_wins(tmp_path: Path) -> None:
    write(tmp_path, "20-b.conflist", conflist("net", "second"))
    write(tmp_path, "10-a.conflist", conflist("net", "first"))
    write(tmp_path, "30-c.conflist", conflist("net", "third"))
    assert types(load_network(tmp_path, "net")) == ["first"]


def test_single_conf_becomes_list_of_one(tmp_path: Path) -> None:
    write(tmp_path, "20-x.json", single("net", "json-one"))
    write(tmp_path, "10-x.conf", single("net", "conf-one", version="0.4.0"))
    conf = load_network(tmp_path, "net")
    assert types(conf) == ["conf-one"] and conf.cni_version == "0.4.0" and conf.name == "net"
    assert json.loads(conf.raw_bytes)["plugins"][0]["type"] == "conf-one"


def test_other_extensions_and_directories_ignored(tmp_path: Path) -> None:
    write(tmp_path, "10-net.conflist.bak", conflist("net", "backup"))
    write(tmp_path, "10-net.yaml", conflist("net", "yaml"))
    (tmp_path / "05-dir.conflist").mkdir()
    write(tmp_path, "50-net.conflist", conflist("net", "real"))
    assert types(load_network(tmp_path, "net")) == ["real"]


@pytest.mark.parametrize("content", [
    b"this is not json", b"", b"\xff\xfe", b"[1, 2]", b'"a string"',
    b'{"cniVersion": "1.0.0", "plugins": []}', b'{"name": 7, "plugins": []}',
    b'{"name": "../x", "plugins": [{"type": "a"}]}',
    '{"cniVersion": "1.0.0", "name": "other", "plugins": [{"type": "a"}]}'.encode("utf-16"),
], ids=["garbage", "empty", "binary", "list", "string", "no-name", "name-int", "bad-name", "utf-16"])
def test_broken_files_skipped_but_named(tmp_path: Path, content: bytes) -> None:
    write(tmp_path, "01-broken.conflist", content)
    write(tmp_path, "02-broken.conf", content)
    write(tmp_path, "50-net.conflist", conflist("net", "ok"))
    assert types(load_network(tmp_path, "net")) == ["ok"]
    with pytest.raises(NetworkNotFound) as info:
        load_network(tmp_path, "other")
    assert info.value.code == 7
    text = str(info.value)
    assert "01-broken.conflist" in text and "02-broken.conf" in text
    assert "50-net.conflist" not in text  # a good file of another network is not broken


def test_unreadable_file_named(tmp_path: Path) -> None:
    write(tmp_path, "01-huge.conflist", b" " * (1024 * 1024 + 1))
    (tmp_path / "02-loop.conflist").symlink_to(tmp_path / "02-loop.conflist")
    write(tmp_path, "50-net.conflist", conflist("net", "ok"))
    assert types(load_network(tmp_path, "net")) == ["ok"]
    with pytest.raises(NetworkNotFound, match=r"01-huge\.conflist"):
        load_network(tmp_path, "other")


def test_not_found_names_network_and_dir(tmp_path: Path) -> None:
    write(tmp_path, "50-net.conflist", conflist("net", "ok"))
    with pytest.raises(NetworkNotFound) as info:
        load_network(tmp_path, "nope")
    assert "'nope'" in str(info.value) and str(tmp_path) in str(info.value)
    assert info.value.details == ""


def test_missing_directory_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NetworkNotFound, match="does not exist"):
        load_network(tmp_path / "nope", "net")


@pytest.mark.parametrize(("content", "code"), [
    (conflist("net", "a", version="9.9.9"), 1),
    (conflist("net", "../bin/sh"), 7),
    (json.dumps({"cniVersion": "1.0.0", "name": "net", "plugins": {"type": "a"}}), 7),
    (json.dumps({"cniVersion": "1.0.0", "name": "net", "plugins": [{"bridge": "x"}]}), 7),
    (conflist("net", "a", disableCheck="yes"), 7),
    (conflist("net"), 7),
])
def test_matching_but_invalid_file_is_reported_not_skipped(tmp_path: Path, content: str, code: int) -> None:
    write(tmp_path, "10-net.conflist", content)
    write(tmp_path, "20-net.conflist", conflist("net", "later"))
    with pytest.raises(CNIError) as info:
        load_network(tmp_path, "net")
    assert info.value.code == code
    assert not isinstance(info.value, NetworkNotFound)


# ---- drop-in plugin directories (spec 1.1.0) ------------------------------------------------


def test_drop_in_plugins_appended_in_name_order(tmp_path: Path) -> None:
    write(tmp_path, "10-net.conflist", conflist("net", "bridge"))
    write(tmp_path, "net/20-tuning.conf", json.dumps({"type": "tuning", "sysctl": {}}))
    write(tmp_path, "net/10-portmap.conf", json.dumps({"type": "portmap",
                                                       "capabilities": {"portMappings": True}}))
    write(tmp_path, "net/30-ignored.json", json.dumps({"type": "json-ignored"}))
    write(tmp_path, "net/40-ignored.conflist", json.dumps({"type": "list-ignored"}))
    write(tmp_path, "other/10-x.conf", json.dumps({"type": "not-ours"}))
    conf = load_network(tmp_path, "net")
    assert types(conf) == ["bridge", "portmap", "tuning"]
    assert conf.plugins[1].capabilities == {"portMappings": True}


def test_drop_in_with_name_and_version_is_fine(tmp_path: Path) -> None:
    write(tmp_path, "10-net.conflist", conflist("net", "bridge"))
    write(tmp_path, "net/10-x.conf", single("net", "extra"))
    assert types(load_network(tmp_path, "net")) == ["bridge", "extra"]


def test_drop_ins_alone_make_the_list(tmp_path: Path) -> None:
    write(tmp_path, "10-net.conflist", conflist("net"))
    write(tmp_path, "net/10-x.conf", json.dumps({"type": "only"}))
    assert types(load_network(tmp_path, "net")) == ["only"]


@pytest.mark.parametrize("flag", [True, "true", "TRUE"])
def test_load_only_inlined_plugins_ignores_drop_ins(tmp_path: Path, flag: object) -> None:
    write(tmp_path, "10-net.conflist", conflist("net", "bridge", loadOnlyInlinedPlugins=flag))
    write(tmp_path, "net/10-x.conf", json.dumps({"type": "extra"}))
    assert types(load_network(tmp_path, "net")) == ["bridge"]


def test_load_only_inlined_with_no_plugins_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "10-net.conflist", conflist("net", loadOnlyInlinedPlugins=True))
    write(tmp_path, "net/10-x.conf", json.dumps({"type": "extra"}))
    with pytest.raises(CNIError) as info:
        load_network(tmp_path, "net")
    assert info.value.code == 7 and "no plugins" in str(info.value)


def test_single_conf_takes_no_drop_ins(tmp_path: Path) -> None:
    write(tmp_path, "10-net.conf", single("net", "bridge"))
    write(tmp_path, "net/10-x.conf", json.dumps({"type": "extra"}))
    assert types(load_network(tmp_path, "net")) == ["bridge"]


@pytest.mark.parametrize(("content", "code"), [
    (b"{not json", 6), (b"[]", 6), (b'{"name": "x"}', 7), (b'{"type": "../sh"}', 7),
    (b'{"type": "a", "capabilities": []}', 7), ('{"type": "a"}'.encode("utf-16"), 6),
])
def test_broken_drop_in_fails_naming_the_file(tmp_path: Path, content: bytes, code: int) -> None:
    write(tmp_path, "10-net.conflist", conflist("net", "bridge"))
    write(tmp_path, "net/10-bad.conf", content)
    with pytest.raises(CNIError) as info:
        load_network(tmp_path, "net")
    assert info.value.code == code
    assert "10-bad.conf" in str(info.value)


# ---- load_file and network_names ------------------------------------------------------------


def test_load_file_by_extension(tmp_path: Path) -> None:
    lst = write(tmp_path, "a.conflist", conflist("net", "x", "y"))
    one = write(tmp_path, "a.conf", single("net", "z"))
    assert types(load_file(lst)) == ["x", "y"]
    assert types(load_file(one)) == ["z"]


def test_load_file_errors_are_cni_errors(tmp_path: Path) -> None:
    with pytest.raises(CNIError) as info:
        load_file(tmp_path / "missing.conflist")
    assert info.value.code == 7
    garbage = write(tmp_path, "g.conflist", "garbage")
    with pytest.raises(CNIError) as info:
        load_file(garbage)
    assert info.value.code == 6


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    big = write(tmp_path, "big.conflist", b" " * (1024 * 1024 + 1))
    with pytest.raises(CNIError) as info:
        load_file(big)
    assert info.value.code == 7


def test_network_names(tmp_path: Path) -> None:
    write(tmp_path, "10-a.conflist", conflist("net-a", "x"))
    write(tmp_path, "20-b.conf", single("net-b", "x"))
    write(tmp_path, "30-c.json", single("net", "x"))
    write(tmp_path, "40-broken.conflist", "garbage")
    write(tmp_path, "50-bad-name.conflist", conflist("../x", "x"))
    write(tmp_path, "60-ignored.txt", conflist("txt", "x"))
    write(tmp_path, "net/10-dropin.conf", single("dropin", "x"))
    assert network_names(tmp_path) == ["net-a", "net-b", "net"]
    assert network_names(tmp_path / "missing") == []


def test_deeply_nested_files(tmp_path: Path) -> None:
    write(tmp_path, "01-deep.conflist", b"[" * 50000)
    write(tmp_path, "50-net.conflist", conflist("net", "ok"))
    write(tmp_path, "net/10-deep.conf", b"{" + b'"a":[' * 50000)
    with pytest.raises(CNIError) as info:
        load_network(tmp_path, "net")
    assert info.value.code == 6 and "10-deep.conf" in str(info.value)
    with pytest.raises(NetworkNotFound, match=r"01-deep\.conflist"):
        load_network(tmp_path, "other")
    deep = write(tmp_path, "deep.conflist", b'{"name": "net", "x": ' + b"[" * 50000)
    with pytest.raises(CNIError) as info:
        load_file(deep)
    assert info.value.code == 6
