"""Debian's Go host-local and podnet-host-local share one data directory: each sees, respects and
releases the other's reservations, and they exclude each other through the same lock."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from ipam_procs import GO_HOST_LOCAL, PODNET_HOST_LOCAL, finish, host_local_conf, ip_files, run, start

from podnet.cni import skel
from podnet.plugins import host_local
from podnet.plugins.ipam_delegate import ipam_add, ipam_del

pytestmark = pytest.mark.interop

NET = "sharednet"
RANGES = [[{"subnet": "10.66.0.0/24"}], [{"subnet": "fd66::/120"}]]


def owner(cid: str) -> bytes:
    return f"{cid}\r\neth0".encode()


def test_go_reservation_is_seen_and_released_by_podnet(tmp_path: Path) -> None:
    conf = host_local_conf(tmp_path, NET, RANGES)
    go = run(GO_HOST_LOCAL, "ADD", "go-pod", conf)
    assert go.rc == 0, go.out
    assert go.addresses() == ["10.66.0.2/24", "fd66::2/120"]
    ours = run(PODNET_HOST_LOCAL, "ADD", "py-pod", conf)
    assert ours.rc == 0, ours.out
    assert ours.addresses() == ["10.66.0.3/24", "fd66::3/120"]  # round robin goes on from Go's cursor
    # podnet's CHECK finds Go's reservation, and a requested IP held by Go is refused naming the owner.
    assert run(PODNET_HOST_LOCAL, "CHECK", "go-pod", {**conf, "prevResult": go.out}).rc == 0
    taken = run(PODNET_HOST_LOCAL, "ADD", "thief", {**conf, "runtimeConfig": {"ips": ["10.66.0.2"]}})
    assert taken.rc == 1 and "container go-pod interface eth0" in taken.out["msg"]
    # podnet's DEL releases Go's files.
    assert run(PODNET_HOST_LOCAL, "DEL", "go-pod", conf).rc == 0
    assert ip_files(tmp_path, NET) == {"10.66.0.3": owner("py-pod"), "fd66::3": owner("py-pod")}


def test_podnet_reservation_is_seen_and_released_by_go(tmp_path: Path) -> None:
    conf = host_local_conf(tmp_path, NET, RANGES)
    ours = run(PODNET_HOST_LOCAL, "ADD", "py-pod", conf)
    assert ours.rc == 0 and ours.addresses() == ["10.66.0.2/24", "fd66::2/120"]
    # Go's CHECK finds podnet's reservation; Go's ADD skips it and follows podnet's cursor.
    assert run(GO_HOST_LOCAL, "CHECK", "py-pod", {**conf, "prevResult": ours.out}).rc == 0
    go = run(GO_HOST_LOCAL, "ADD", "go-pod", conf)
    assert go.rc == 0 and go.addresses() == ["10.66.0.3/24", "fd66::3/120"]
    # Go refuses a requested address podnet holds.
    stolen = run(GO_HOST_LOCAL, "ADD", "thief", {**conf, "args": {"cni": {"ips": ["10.66.0.2"]}}})
    assert stolen.rc == 1
    # Go's DEL releases podnet's files.
    assert run(GO_HOST_LOCAL, "DEL", "py-pod", conf).rc == 0
    assert ip_files(tmp_path, NET) == {"10.66.0.3": owner("go-pod"), "fd66::3": owner("go-pod")}


def test_podnet_gc_reclaims_go_reservations_and_go_s_crash_leftovers(tmp_path: Path) -> None:
    conf = host_local_conf(tmp_path, NET, RANGES, version="1.0.0")
    for cid in ("go-keep", "go-stale"):
        assert run(GO_HOST_LOCAL, "ADD", cid, conf).rc == 0
    # What Go leaves when killed between creating and writing a reservation file.
    (tmp_path / NET / "10.66.0.99").write_bytes(b"")
    gc_conf = {**conf, "cniVersion": "1.1.0", "cni.dev/valid-attachments": [
        {"containerID": "go-keep", "ifname": "eth0"}]}
    assert run(PODNET_HOST_LOCAL, "GC", "x", gc_conf).rc == 0
    assert sorted(ip_files(tmp_path, NET)) == ["10.66.0.2", "fd66::2"]


def test_shared_exhaustion(tmp_path: Path) -> None:
    conf = host_local_conf(tmp_path, NET, [[{"subnet": "10.66.0.0/29"}]])  # 5 addresses
    for i in range(5):
        binary = GO_HOST_LOCAL if i % 2 else PODNET_HOST_LOCAL
        assert run(binary, "ADD", f"pod{i}", conf).rc == 0
    assert len(ip_files(tmp_path, NET)) == 5
    ours, go = run(PODNET_HOST_LOCAL, "ADD", "late", conf), run(GO_HOST_LOCAL, "ADD", "late", conf)
    assert ours.rc == go.rc == 1
    assert "no free IP address in range set 0" in ours.out["msg"]


@pytest.mark.timeout(120)
def test_mixed_parallel_allocations_share_the_lock(tmp_path: Path) -> None:
    conf = host_local_conf(tmp_path, NET, [[{"subnet": "10.66.0.0/24"}]])
    ids = [f"pod{i:02d}" for i in range(40)]
    binaries = {cid: GO_HOST_LOCAL if i % 2 else PODNET_HOST_LOCAL for i, cid in enumerate(ids)}
    outcomes = [finish(p) for p in [start(binaries[cid], "ADD", cid, conf) for cid in ids]]
    assert all(o.rc == 0 for o in outcomes), [o.out for o in outcomes if o.rc]
    addresses = [o.addresses()[0] for o in outcomes]
    assert len(set(addresses)) == len(ids)
    # Each one is released by the other implementation.
    other = {cid: PODNET_HOST_LOCAL if b == GO_HOST_LOCAL else GO_HOST_LOCAL for cid, b in binaries.items()}
    dels = [finish(p) for p in [start(other[cid], "DEL", cid, conf) for cid in ids]]
    assert all(o.rc == 0 for o in dels), [o.out for o in dels if o.rc]
    assert ip_files(tmp_path, NET) == {}


def test_delegate_execs_go_host_local(tmp_path: Path) -> None:
    """The delegate runs a non-podnet IPAM type from CNI_PATH (here Go's host-local)."""
    conf = host_local_conf(tmp_path, NET, RANGES, ipam_type="host-local")
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "deleg", "CNI_NETNS": "/x", "CNI_IFNAME": "eth0",
           "CNI_PATH": os.pathsep.join(["/nonexistent", os.path.dirname(GO_HOST_LOCAL)]),
           "PATH": os.environ.get("PATH", "")}
    args = skel.build_args(env, json.dumps(conf).encode(), host_local.PLUGIN)
    result = ipam_add(args)
    assert [str(ip.address) for ip in result.ips] == ["10.66.0.2/24", "fd66::2/120"]
    assert ip_files(tmp_path, NET)["10.66.0.2"] == owner("deleg")
    ipam_del(args)
    assert ip_files(tmp_path, NET) == {}
