"""podnet-loopback driven by the Go reference runtime (libcni 1.1.2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cnienv import REPO
from nsutil import NetnsFactory

pytestmark = [pytest.mark.root, pytest.mark.interop]


def test_libcni_drives_podnet_loopback(go_runtime: Any, netns: NetnsFactory, tmp_path: Path) -> None:
    go_runtime.cni_path = str(REPO / ".venv" / "bin")
    conf = tmp_path / "lo.conflist"
    body = {"cniVersion": "1.0.0", "name": "lo", "plugins": [{"type": "podnet-loopback"}]}
    conf.write_text(json.dumps(body))
    pod = netns("pod")
    pod.run(["ip", "link", "set", "lo", "down"])
    result = go_runtime.json("add", conf, "ctr1", "lo", netns=pod.path, cache_dir=tmp_path / "cache")
    assert result["interfaces"][0]["name"] == "lo"
    assert pod.ping("127.0.0.1")
    go_runtime.run("check", conf, "ctr1", "lo", netns=pod.path, cache_dir=tmp_path / "cache")
    go_runtime.run("del", conf, "ctr1", "lo", netns=pod.path, cache_dir=tmp_path / "cache")
    assert "UP" not in json.loads(pod.run(["ip", "-j", "link", "show", "lo"]).stdout)[0]["flags"]
