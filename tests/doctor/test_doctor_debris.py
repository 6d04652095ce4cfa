"""podnet doctor on a live node (a namespace the test makes): each kind of debris is planted for
real, doctor finds it (JSON and text, exit 1), --fix repairs what is safe, doctor then calls the
node clean (exit 0), and nothing podnet does not own was touched."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from doctor_util import (
    BRIDGE,
    ROUTED,
    SHORT,
    Foreign,
    assert_found,
    doctor,
    fix_and_assert_clean,
    links,
    make_env,
    wait_until,
)

from nsutil import Netns, NetnsFactory, destroy
from podnet.cli.cni_cmd import default_container_id
from podnet.doctor.examine import Options, examine, repair
from podnet.plugins.identity import host_veth_name
from podnet.runtime.cache import CacheEntry, ResultCache

pytestmark = pytest.mark.root


def _cid(pod: Netns) -> str:
    return default_container_id(pod.path)


def _pod_dies(pod: Netns, node: Netns, network: str) -> None:
    """The pod's namespace goes without a DEL (the runtime crashed); its veth pair goes with it."""
    name = host_veth_name(network, _cid(pod), "eth0")
    destroy(pod)
    wait_until(lambda: name not in links(node), what=f"{name} to go with its namespace")


def test_clean_node_exits_0(node: Netns, netns: NetnsFactory, tmp_path: Path) -> None:
    env = make_env(node, tmp_path)
    foreign = Foreign(env)
    env.add(ROUTED, netns("pod"))
    env.add(BRIDGE, netns("pod"))
    run = doctor(env)
    assert run.code == 0, run.text
    assert run.doc["clean"] and not run.kinds()
    assert sorted(run.doc["networks"]) == [SHORT, BRIDGE, ROUTED]
    text = doctor(env, json_out=False)
    assert text.code == 0 and "no problems found" in text.text
    # Run inside the node namespace itself (no --netns), as a person on the node would.
    inside = node.run([sys.executable, "-m", "podnet.cli.main", "doctor", "--conf-dir", str(env.conf_dir),
                       "--cache-dir", str(env.cache_dir)], check=False)
    assert inside.returncode == 0 and "no problems found" in inside.stdout, inside.stdout + inside.stderr
    assert doctor(env, "--fix").code == 0
    foreign.assert_untouched()


def _sleeper(tmp_path: Path) -> tuple[Path, Path]:
    """A chained plugin that records its PID and hangs: the ADD is killed while it runs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    pid_file = tmp_path / "sleeper.pid"
    script = bin_dir / "doc-sleeper"
    script.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 600\n")
    script.chmod(0o755)
    return bin_dir, pid_file


def test_killed_add_leaves_pending_marker_and_reservation(node: Netns, netns: NetnsFactory,
                                                           tmp_path: Path) -> None:
    env = make_env(node, tmp_path)
    foreign = Foreign(env)
    bin_dir, pid_file = _sleeper(tmp_path)
    conf = json.loads((env.conf_dir / f"{ROUTED}.conflist").read_text())
    conf["plugins"].append({"type": "doc-sleeper"})
    (env.conf_dir / f"{ROUTED}.conflist").write_text(json.dumps(conf))
    run_env = {**env.env(), "CNI_PATH": f"{env.cni_path}:{bin_dir}"}
    pod = netns("pod")
    proc = node.popen([sys.executable, "-m", "podnet.cli.main", "cni", "add", ROUTED, pod.path],
                      env=run_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(pid_file.exists, 30, "the chained plugin to start")
    # SIGKILL the runtime mid-ADD (after podnet-routed, before the cache entry), then its plugin.
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    wait_until(lambda: pid_file.read_text().strip() != "", 5, "the sleeper's PID")
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert env.pending_files() and not [f for f in env.cache_files() if f.startswith(ROUTED)]

    # The pod is alive and half-built: reported with what to do, never "fixed" by doctor.
    run = assert_found(env, "add-interrupted")
    assert "podnet cni del" in run.of_kind("add-interrupted")[0]["fix"]
    after = doctor(env, "--fix")
    assert after.code == 1 and after.of_kind("add-interrupted")[0]["status"] == "found"
    assert host_veth_name(ROUTED, _cid(pod), "eth0") in links(node) and env.ip_files(ROUTED)

    # The pod dies without a DEL: what the killed ADD left is debris now.
    _pod_dies(pod, node, ROUTED)
    run = assert_found(env, "pending-orphan", "reservation-orphan")
    assert run.of_kind("reservation-orphan")[0]["containerID"] == _cid(pod)
    fix_and_assert_clean(env, fixed=2)
    assert not env.pending_files() and not env.ip_files(ROUTED)
    foreign.assert_untouched()


def test_empty_cache_entry_of_a_live_pod(node: Netns, netns: NetnsFactory, tmp_path: Path) -> None:
    env = make_env(node, tmp_path)
    foreign = Foreign(env)
    pod = netns("pod")
    env.add(ROUTED, pod)
    entry = env.cache_dir / "results" / f"{ROUTED}-{_cid(pod)}-eth0"
    entry.write_bytes(b"")  # what a writer without fsync+rename leaves after a crash
    run = assert_found(env, "cache-empty")
    finding = run.of_kind("cache-empty")[0]
    assert finding["where"] == str(entry) and finding["containerID"] == _cid(pod)
    fix_and_assert_clean(env, fixed=1)
    assert not entry.exists()
    # The live pod keeps everything else: its veth and its address.
    assert host_veth_name(ROUTED, _cid(pod), "eth0") in links(node) and env.ip_files(ROUTED)
    env.cni("del", ROUTED, pod)  # and DEL still works without the entry
    assert not env.ip_files(ROUTED)
    foreign.assert_untouched()


def test_garbage_cache_entries(node: Netns, tmp_path: Path) -> None:
    env = make_env(node, tmp_path)
    foreign = Foreign(env)
    results = env.cache_dir / "results"
    torn = results / f"{BRIDGE}-0123abcd-eth0"
    torn.write_bytes(b'{"kind":"cniCacheV1","containerId":"0123')  # cut mid-write
    wrong = results / f"{ROUTED}-4567ef-eth0"
    wrong.write_text('{"kind":"somethingElse"}')
    old = time.time() - 600
    for path in (torn, wrong):
        os.utime(path, (old, old))
    run = assert_found(env, "cache-torn", "cache-torn")
    assert {f["where"] for f in run.of_kind("cache-torn")} == {str(torn), str(wrong)}
    fix_and_assert_clean(env, fixed=2)
    assert not torn.exists() and not wrong.exists()
    foreign.assert_untouched()


def test_reservation_whose_veth_is_gone(node: Netns, netns: NetnsFactory, tmp_path: Path) -> None:
    env = make_env(node, tmp_path)
    foreign = Foreign(env)
    live = netns("pod")
    env.add(ROUTED, live)
    planted = env.ipam_dir / ROUTED / "10.71.0.200"
    planted.write_bytes(b"gone-container\r\neth0")
    run = assert_found(env, "reservation-orphan")
    assert run.of_kind("reservation-orphan")[0]["where"] == str(planted)
    fix_and_assert_clean(env, fixed=1)
    assert not planted.exists()
    assert len(env.ip_files(ROUTED)) == 1  # the live pod's reservation stays
    env.cni("check", ROUTED, live)
    foreign.assert_untouched()


def test_live_pod_without_reservation_is_reported_not_invented(node: Netns, netns: NetnsFactory,
                                                               tmp_path: Path) -> None:
    env = make_env(node, tmp_path)
    pod = netns("pod")
    env.add(ROUTED, pod)
    (reservation,) = env.ip_files(ROUTED)
    (env.ipam_dir / ROUTED / reservation).unlink()
    run = assert_found(env, "reservation-missing")
    assert not run.of_kind("reservation-missing")[0]["fixable"]
    after = doctor(env, "--fix")
    assert after.code == 1 and not env.ip_files(ROUTED)  # nothing invented
    # The person's fix: DEL and ADD the pod.
    env.cni("del", ROUTED, pod)
    env.add(ROUTED, pod)
    assert doctor(env).code == 0


def test_pod_gone_leaves_nft_elements(node: Netns, netns: NetnsFactory, tmp_path: Path) -> None:
    env = make_env(node, tmp_path)
    foreign = Foreign(env)
    gone, live = netns("pod"), netns("pod")
    env.add(BRIDGE, gone)
    env.add(BRIDGE, live)
    # An element of a network in no config, in podnet's own table: not judged, not touched.
    node.run(["nft", "add", "element", "inet", "podnet-bridge", "masq-pods-v4",
              '{ 10.99.0.9 comment "ghostnet/abc/eth0" }'])
    _pod_dies(gone, node, BRIDGE)
    run = assert_found(env, "cache-orphan", "nft-orphan", "nft-orphan", "reservation-orphan")
    tables = {f["where"].split(":")[0] for f in run.of_kind("nft-orphan")}
    assert tables == {"inet podnet-bridge", "bridge podnet-bridge"}
    fix_and_assert_clean(env, fixed=4)
    masq = node.run(["nft", "-j", "list", "table", "inet", "podnet-bridge"]).stdout
    spoof = node.run(["nft", "-j", "list", "table", "bridge", "podnet-bridge"]).stdout
    assert _cid(gone) not in masq + spoof
    assert masq.count(_cid(live)) == 2 and spoof.count(_cid(live)) == 2  # the live pod's stay
    assert "ghostnet/abc/eth0" in masq
    env.cni("check", BRIDGE, live)
    foreign.assert_untouched()


def test_fresh_files_are_left_to_the_operation_under_way(node: Netns, tmp_path: Path) -> None:
    """A reservation or marker younger than --grace may belong to an ADD still running."""
    env = make_env(node, tmp_path)
    planted = env.ipam_dir / ROUTED / "10.71.0.201"
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_bytes(b"adding-right-now\r\neth0")
    run = doctor(env, grace=60)
    assert run.code == 0 and run.doc["unjudgedRecentFiles"] == 1, run.text
    assert "not judged" in doctor(env, grace=60, json_out=False).text
    assert doctor(env, "--fix", grace=60).code == 0 and planted.exists()
    old = time.time() - 61
    os.utime(planted, (old, old))
    assert doctor(env, grace=60).kinds() == ["reservation-orphan"]


def test_repair_leaves_alone_what_came_alive_since_the_scan(node: Netns, netns: NetnsFactory,
                                                            tmp_path: Path) -> None:
    """Between the scan and --fix a pod with that identity appears: its reservation, cache entry
    and pending marker are its own now, and the repairs leave them alone."""
    env = make_env(node, tmp_path)
    cid = "comes-back"
    (env.ipam_dir / ROUTED).mkdir(parents=True, exist_ok=True)
    reservation = env.ipam_dir / ROUTED / "10.71.0.202"
    reservation.write_bytes(f"{cid}\r\neth0".encode())
    entry = CacheEntry(ROUTED, cid, "eth0", b"{}", {"cniVersion": "1.0.0"})
    ResultCache(env.cache_dir).write(entry)
    ResultCache(env.cache_dir / "podnet-pending").write(entry)
    opts = Options(conf_dir=str(env.conf_dir), cache_dir=str(env.cache_dir), netns=node.name, grace=0)
    report = examine(opts)
    kinds = sorted(f.kind for f in report.findings if f.severity == "problem")
    assert kinds == ["cache-orphan", "pending-orphan", "reservation-orphan"]
    pod = netns("pod")
    node.run(["ip", "link", "add", host_veth_name(ROUTED, cid, "eth0"), "type", "veth", "peer", "name",
              "eth0", "netns", pod.name])
    repair(report.findings)
    assert [f.status for f in report.findings if f.severity == "problem"] == ["changed"] * 3
    assert reservation.exists() and env.pending_files() and f"{ROUTED}-{cid}-eth0" in env.cache_files()
    assert report.exit_code == 1
