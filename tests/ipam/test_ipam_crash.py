"""SIGKILL mid-ADD never leaves a torn reservation, never double-allocates, and GC or DEL reclaims it.

Two kinds of victims, alternating:
- the real ``podnet-host-local`` executable running one ADD, killed after a random delay spread over
  its whole run (start-up, config, lock, write, link);
- a process looping ADD/DEL in-process through the skel, so the kill lands inside the allocation
  code most of the time (between temp write, link, last_reserved_ip and the directory fsync).

After every kill the data directory may only hold complete files: reservations whose content is exactly
an owner we know, ``last_reserved_ip.N`` naming an address of range set N, the lock, and temporary
debris. Then DEL of the killed container (odd kills) or GC with the other attachments as the valid list
(even kills) must leave no reservation of the victim and no debris; the next ADD for the same container
works and gets an address no other attachment holds. A final GC with an empty valid list empties it.
"""

from __future__ import annotations

import io
import ipaddress
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from ipam_procs import PODNET_HOST_LOCAL, TEMP_PREFIX, cni_env, dir_entries, host_local_conf, ip_files

from podnet.cni import skel
from podnet.plugins import host_local

KILLS = 40
NET = "crashnet"
RANGES = [[{"subnet": "10.44.0.0/24"}], [{"subnet": "fd44::/120"}]]
HOLDERS = [f"holder{i}" for i in range(5)]
VICTIM = "victim"

LOOP_CHILD = r"""
import io, json, sys
from podnet.cni import skel
from podnet.plugins import host_local
conf = sys.argv[1].encode()
base = {"CNI_CONTAINERID": "victim", "CNI_NETNS": "/x", "CNI_IFNAME": "eth0", "CNI_PATH": "/x"}
sys.stdout.write("r")
sys.stdout.flush()
while True:
    for command in ("ADD", "DEL"):
        out = io.StringIO()
        if skel.run(host_local.PLUGIN, env={**base, "CNI_COMMAND": command}, stdin=io.BytesIO(conf),
                    stdout=out, stderr=sys.stderr):
            sys.stderr.write(out.getvalue())
            sys.exit(3)
"""


def in_process(command: str, conf: dict[str, Any], cid: str) -> dict[str, Any]:
    out = io.StringIO()
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": "/x", "CNI_IFNAME": "eth0",
           "CNI_PATH": "/x"}
    rc = skel.run(host_local.PLUGIN, env=env, stdin=io.BytesIO(json.dumps(conf).encode()), stdout=out)
    body: dict[str, Any] = json.loads(out.getvalue()) if out.getvalue().strip() else {}
    assert rc == 0, body
    return body


def owner(cid: str) -> bytes:
    return f"{cid}\r\neth0".encode()


def check_no_torn_file(data_dir: Path) -> tuple[int, int]:
    """Every file is complete; returns (victim reservations, debris files) found."""
    nets = [ipaddress.ip_network(r[0]["subnet"]) for r in RANGES]
    known = {owner(c) for c in [*HOLDERS, VICTIM]}
    victim = debris = 0
    for name, content in dir_entries(data_dir, NET).items():
        if name == "lock":
            assert content == b""
        elif name.startswith("last_reserved_ip."):
            index = int(name.rsplit(".", 1)[1])
            assert ipaddress.ip_address(content.decode()) in nets[index], (name, content)
        elif name.startswith(TEMP_PREFIX):
            debris += 1
        else:
            ipaddress.ip_address(name)
            assert content in known, f"torn or foreign reservation {name}: {content!r}"
            victim += content == owner(VICTIM)
    assert victim <= len(RANGES)
    return victim, debris


def kill_loop_child(conf: dict[str, Any], rng: random.Random) -> None:
    proc = subprocess.Popen([sys.executable, "-c", LOOP_CHILD, json.dumps(conf)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.read(1) == b"r"
    time.sleep(rng.uniform(0, 0.05))
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL, err.decode()


def kill_executable(conf: dict[str, Any], rng: random.Random, span: float) -> None:
    proc = subprocess.Popen([PODNET_HOST_LOCAL], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=cni_env("ADD", VICTIM))
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(conf).encode())
    proc.stdin.close()
    proc.stdin = None
    time.sleep(rng.uniform(0, span))
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode in (0, -signal.SIGKILL), err.decode()


def measure_add(conf: dict[str, Any]) -> float:
    t0 = time.monotonic()
    proc = subprocess.run([PODNET_HOST_LOCAL], input=json.dumps(conf).encode(), capture_output=True,
                          env=cni_env("ADD", "probe"), check=True)
    assert json.loads(proc.stdout)["ips"]
    in_process("DEL", conf, "probe")
    return time.monotonic() - t0


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigkill_mid_add_leaves_nothing_torn_and_gc_or_del_reclaims(tmp_path: Path) -> None:
    conf = host_local_conf(tmp_path, NET, RANGES, version="1.1.0")
    holder_ips = {cid: in_process("ADD", conf, cid)["ips"] for cid in HOLDERS}
    held = {ip["address"] for ips in holder_ips.values() for ip in ips}
    span = measure_add(conf) * 1.2
    rng = random.Random(0xC0FFEE)
    stats = {"kills": 0, "victim_held": 0, "debris": 0, "by_del": 0, "by_gc": 0}
    for n in range(KILLS):
        if n % 2:
            kill_executable(conf, rng, span)
        else:
            kill_loop_child(conf, rng)
        stats["kills"] += 1
        victim, debris = check_no_torn_file(tmp_path)
        stats["victim_held"] += victim > 0
        stats["debris"] += debris > 0
        if n % 2:
            in_process("DEL", conf, VICTIM)
            stats["by_del"] += 1
        else:
            valid = [{"containerID": c, "ifname": "eth0"} for c in HOLDERS]
            in_process("GC", {**conf, "cni.dev/valid-attachments": valid}, "gc")
            stats["by_gc"] += 1
        assert owner(VICTIM) not in ip_files(tmp_path, NET).values()
        assert not any(n.startswith(TEMP_PREFIX) for n in dir_entries(tmp_path, NET))
        got = {ip["address"] for ip in in_process("ADD", conf, VICTIM)["ips"]}
        assert len(got) == 2 and not got & held, (got, held)
        in_process("DEL", conf, VICTIM)
        # The holders' reservations are untouched.
        assert {c: in_process("ADD", conf, c)["ips"] for c in HOLDERS} == holder_ips
    print(f"\nIPAM crash test: {stats}")
    assert stats["victim_held"] > 0, "no kill landed while the victim held an address"

    in_process("GC", {**conf, "cni.dev/valid-attachments": []}, "gc")
    assert ip_files(tmp_path, NET) == {}
    assert sorted(dir_entries(tmp_path, NET)) == ["last_reserved_ip.0", "last_reserved_ip.1", "lock"]
