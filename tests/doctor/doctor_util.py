"""Helpers for the doctor tests: a node namespace with podnet networks, ``podnet doctor`` run from
outside it with ``--netns``, and foreign things planted next to podnet's that must survive --fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnienv import REPO, CniEnv
from nsutil import Netns

VENV_BIN = REPO / ".venv" / "bin"
ROUTED = "doc-routed"
BRIDGE = "doc-bridge"
FOREIGN_NET = "doc-foreign"  # a network of Go plugins: nothing of it is podnet's
# A podnet network whose name starts the foreign network's: the foreign network's files
# (doc-foreign-...) start with "doc-" too, and are still not podnet's.
SHORT = "doc"


def host_local(env: CniEnv, subnet: str) -> dict[str, Any]:
    return {"type": "podnet-host-local", "dataDir": str(env.ipam_dir), "ranges": [[{"subnet": subnet}]]}


def write_networks(env: CniEnv) -> None:
    """Two routed networks, a bridge network with ipMasq and macspoofchk, and a foreign network."""
    env.write_conflist(SHORT, [{"type": "podnet-routed", "ipam": host_local(env, "10.70.0.0/24")}])
    env.write_conflist(ROUTED, [{"type": "podnet-routed", "ipam": host_local(env, "10.71.0.0/24")}])
    env.write_conflist(BRIDGE, [{"type": "podnet-bridge", "bridge": "docbr0", "isGateway": True,
                                 "ipMasq": True, "macspoofchk": True,
                                 "ipam": host_local(env, "10.72.0.0/24")}])
    env.write_conflist(FOREIGN_NET, [{"type": "bridge", "bridge": "fgnbr0",
                                      "ipam": {"type": "host-local", "dataDir": str(env.ipam_dir),
                                               "subnet": "10.73.0.0/24"}}])


def make_env(node: Netns, root: Path) -> CniEnv:
    env = CniEnv(node, root, cni_path=str(VENV_BIN))
    write_networks(env)
    return env


@dataclass
class DoctorRun:
    code: int
    text: str
    stderr: str

    @property
    def doc(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.text)
        return parsed

    def kinds(self, severity: str = "problem") -> list[str]:
        return sorted(f["kind"] for f in self.doc["findings"] if f["severity"] == severity)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.doc["findings"] if f["kind"] == kind]


def doctor(env: CniEnv, *args: str, grace: float = 0, json_out: bool = True) -> DoctorRun:
    """``podnet doctor`` run from the test's own namespace, pointed at the node with --netns
    (grace 0: everything planted here counts as old debris)."""
    argv = [sys.executable, "-m", "podnet.cli.main", "doctor", "--netns", env.node.name,
            "--conf-dir", str(env.conf_dir), "--cache-dir", str(env.cache_dir), "--grace", str(grace), *args]
    if json_out:
        argv.append("--json")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return DoctorRun(proc.returncode, proc.stdout, proc.stderr)


def assert_found(env: CniEnv, *kinds: str) -> DoctorRun:
    """Doctor finds exactly these problem kinds (as JSON and as text), exit status 1."""
    run = doctor(env)
    assert run.code == 1, (run.code, run.text, run.stderr)
    assert run.kinds() == sorted(kinds), run.text
    text = doctor(env, json_out=False)
    assert text.code == 1
    for kind in kinds:
        assert f"PROBLEM [{kind}]" in text.text, text.text
    return run


def fix_and_assert_clean(env: CniEnv, fixed: int) -> DoctorRun:
    run = doctor(env, "--fix")
    statuses = [f["status"] for f in run.doc["findings"] if f["severity"] == "problem"]
    assert statuses == ["fixed"] * fixed, run.text
    assert run.code == 0, run.text
    again = doctor(env, json_out=False)
    assert again.code == 0 and "no problems found" in again.text, again.text
    assert not doctor(env).kinds()
    return run


def wait_until(cond: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def links(node: Netns) -> dict[str, dict[str, Any]]:
    out = node.run(["ip", "-j", "-d", "link", "show"]).stdout
    return {link["ifname"]: link for link in json.loads(out or "[]")}


def ip_files(env: CniEnv, network: str) -> list[str]:
    return env.ip_files(network)


class Foreign:
    """Things next to podnet's that podnet does not own; doctor must leave every one alone."""

    def __init__(self, env: CniEnv) -> None:
        self.env = env
        results = env.cache_dir / "results"
        results.mkdir(parents=True, exist_ok=True)
        self.files = {
            results / f"{FOREIGN_NET}-deadbeef-eth0": b"",  # empty entry of a foreign network
            results / "ghostnet-cafe-eth0": b"{garbage",  # entry of a network in no config
            env.ipam_dir / FOREIGN_NET / "10.73.0.9": b"deadbeef\r\neth0",  # foreign reservation
            env.ipam_dir / "ghostnet" / "10.74.0.9": b"cafe\r\neth0",
        }
        old = time.time() - 3600
        for path, data in self.files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            os.utime(path, (old, old))
        # A veth pair of somebody else's, MACs chosen by the kernel (random).
        env.node.run(["ip", "link", "add", "fgn0", "type", "veth", "peer", "name", "fgn1"])
        # A foreign table whose element's comment looks like a podnet owner of a dead attachment.
        env.node.run(["nft", "-f", "-"], input=(
            "add table inet doc-foreign\n"
            "add set inet doc-foreign owners { type ipv4_addr; }\n"
            f'add element inet doc-foreign owners {{ 10.72.0.250 comment "{BRIDGE}/gone/eth0" }}\n'))

    def assert_untouched(self) -> None:
        for path, data in self.files.items():
            assert path.read_bytes() == data, path
        have = links(self.env.node)
        assert "fgn0" in have and "fgn1" in have
        out = self.env.node.run(["nft", "-j", "list", "table", "inet", "doc-foreign"]).stdout
        assert f"{BRIDGE}/gone/eth0" in out
