"""libcni and podnet read each other's result cache.

(a) podnet writes an entry, libcni (the Go driver) reads result and config back;
(b) libcni runs a real ADD of Debian's Go bridge + host-local, podnet reads what libcni cached,
    byte-for-byte re-encodes it, and libcni's CHECK and DEL then run from the cache.
Every runtime runs inside the test's node namespace.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from podnet.runtime.cache import CacheEntry, ResultCache

pytestmark = [pytest.mark.root, pytest.mark.interop]

ARGS = [("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", "default"), ("K8S_POD_NAME", "web-0")]
# No plugin below declares these capabilities, so libcni only caches them.
CAP_ARGS: dict[str, Any] = {
    "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
    "io.kubernetes.cri.pod-annotations": {"note": "a<b>&c"},
}
RESULT_100: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "cni0", "mac": "0a:58:0a:16:00:01"},
        {"name": "veth1a2b3c4d", "mac": "6e:1f:22:33:44:55"},
        {"name": "eth0", "mac": "0a:58:0a:16:00:05", "sandbox": "/var/run/netns/cni-1234"},
    ],
    "ips": [{"interface": 2, "address": "10.22.0.5/16", "gateway": "10.22.0.1"}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.22.0.1"}],
    "dns": {"nameservers": ["10.96.0.10"], "domain": "cluster.local",
            "search": ["default.svc.cluster.local"]},
}


def write_conflist(path: Path, doc: dict[str, Any]) -> bytes:
    # Indented on purpose: libcni caches the file's bytes as they are, whitespace included.
    data = (json.dumps(doc, indent=2) + "\n").encode()
    path.write_bytes(data)
    return data


def test_libcni_reads_podnet_entry(go_runtime: Any, tmp_path: Path) -> None:
    conf = tmp_path / "10-compat.conflist"
    config = write_conflist(conf, {"cniVersion": "1.0.0", "name": "pn-compat",
                                   "plugins": [{"type": "bridge", "bridge": "cni0"}]})
    cache_dir = tmp_path / "cache"
    rc = ResultCache(cache_dir)
    rc.write(CacheEntry("pn-compat", "c0ffee01", "eth0", config, RESULT_100, ARGS, CAP_ARGS))

    got = go_runtime.json("cached-result", conf, "c0ffee01", "eth0", cache_dir=cache_dir)
    assert got == RESULT_100
    cfg = go_runtime.json("cached-config", conf, "c0ffee01", "eth0", cache_dir=cache_dir)
    assert cfg == {"config": config.decode(), "args": [list(a) for a in ARGS], "capabilityArgs": CAP_ARGS}

    # Another attachment is not found, and after podnet removes the entry libcni sees none.
    assert go_runtime.json("cached-result", conf, "c0ffee01", "net1", cache_dir=cache_dir) is None
    rc.remove("pn-compat", "c0ffee01", "eth0")
    assert go_runtime.json("cached-result", conf, "c0ffee01", "eth0", cache_dir=cache_dir) is None
    assert go_runtime.json("cached-config", conf, "c0ffee01", "eth0", cache_dir=cache_dir) is None


def test_podnet_reads_libcni_entry_from_real_add(go_runtime: Any, netns: Any, node: Any,
                                                 tmp_path: Path) -> None:
    pod = netns("pod")
    net, cid = "pn-gobridge", "5f3c0a0e9d1b"
    conf = tmp_path / "10-gobridge.conflist"
    config = write_conflist(conf, {
        "cniVersion": "1.0.0", "name": net,
        "plugins": [{
            "type": "bridge", "bridge": "pnbr0", "isGateway": True, "ipMasq": False,
            "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"),
                     "ranges": [[{"subnet": "10.99.0.0/24", "gateway": "10.99.0.1"}]],
                     "routes": [{"dst": "0.0.0.0/0"}]},
        }],
    })
    cache_dir = tmp_path / "cache"
    kw: dict[str, Any] = {"netns": pod.path, "cache_dir": cache_dir}
    # Set before ADD: a half-done ADD is cleaned up with a DEL as well.
    needs_del = True
    try:
        result = go_runtime.json("add", conf, cid, "eth0", args=ARGS, cap_args=CAP_ARGS, **kw)
        assert result["cniVersion"] == "1.0.0" and result["ips"][0]["address"].startswith("10.99.0.")
        assert result["ips"][0]["address"].split("/")[0] in pod.sh("ip -o -4 addr show dev eth0")

        rc = ResultCache(cache_dir)
        got = rc.read(net, cid, "eth0")
        assert got.ok, got
        assert got.entry is not None
        assert got.entry.result == result
        assert got.entry.config == config
        assert got.entry.cni_args == ARGS
        assert got.entry.capability_args == CAP_ARGS
        assert not got.entry.legacy
        assert rc.attachments(net) == [got.entry] and rc.damaged(net) == []

        # podnet's encoder reproduces libcni's file byte for byte.
        go_bytes = rc.path(net, cid, "eth0").read_bytes()
        assert json.loads(go_bytes)["config"] == base64.b64encode(config).decode()
        other = ResultCache(tmp_path / "podnet-cache")
        other.write(got.entry)
        assert other.path(net, cid, "eth0").read_bytes() == go_bytes

        # libcni's own reads agree, and CHECK runs from the cached result.
        assert go_runtime.json("cached-result", conf, cid, "eth0", **kw) == result
        go_runtime.run("check", conf, cid, "eth0", args=ARGS, **kw)

        # Rewritten by podnet, the entry still drives libcni's DEL (prevResult comes from it).
        rc.write(got.entry)
        go_runtime.run("del", conf, cid, "eth0", args=ARGS, **kw)
        needs_del = False
        assert rc.read(net, cid, "eth0").missing
        assert "eth0" not in pod.links()
        assert [n for n in node.links() if n not in ("lo", "pnbr0")] == []
        leased = [p.name for p in (tmp_path / "ipam" / net).iterdir()
                  if not p.name.startswith(("last_reserved_ip", "lock"))]
        assert leased == []
    finally:
        if needs_del:
            go_runtime.run("del", conf, cid, "eth0", args=ARGS, check=False, **kw)
