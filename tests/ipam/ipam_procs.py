"""Helpers for the IPAM process tests: run podnet-host-local (or Go host-local) as a real executable
with CNI env + stdin, and read a network's data directory."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PODNET_HOST_LOCAL = str(REPO / ".venv" / "bin" / "podnet-host-local")
GO_HOST_LOCAL = "/usr/lib/cni/host-local"
TEMP_PREFIX = ".podnet-tmp-"


def host_local_conf(data_dir: Path, network: str, ranges: list[list[dict[str, str]]],
                    version: str = "1.0.0", ipam_type: str = "podnet-host-local") -> dict[str, Any]:
    return {"cniVersion": version, "name": network, "type": "bridge",
            "ipam": {"type": ipam_type, "dataDir": str(data_dir), "ranges": ranges}}


def cni_env(command: str, container_id: str, ifname: str = "eth0", extra: dict[str, str] | None = None
            ) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update(CNI_COMMAND=command, CNI_CONTAINERID=container_id, CNI_NETNS="/var/run/netns/none",
               CNI_IFNAME=ifname, CNI_PATH=os.path.dirname(PODNET_HOST_LOCAL), **(extra or {}))
    return env


def start(binary: str, command: str, container_id: str, conf: dict[str, Any], ifname: str = "eth0"
          ) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=cni_env(command, container_id, ifname))
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(conf).encode())  # small: fits the pipe buffer, never blocks
    proc.stdin.close()
    proc.stdin = None  # so communicate() only reads
    return proc


@dataclass
class Outcome:
    rc: int
    out: dict[str, Any]
    err: str

    def addresses(self) -> list[str]:
        return [ip["address"] for ip in self.out.get("ips", [])]


def finish(proc: subprocess.Popen[bytes], timeout: float = 30) -> Outcome:
    out, err = proc.communicate(timeout=timeout)
    return Outcome(proc.returncode, json.loads(out) if out.strip() else {}, err.decode(errors="replace"))


def run(binary: str, command: str, container_id: str, conf: dict[str, Any], ifname: str = "eth0") -> Outcome:
    return finish(start(binary, command, container_id, conf, ifname))


def dir_entries(data_dir: Path, network: str) -> dict[str, bytes]:
    d = data_dir / network
    if not d.exists():
        return {}
    return {name: (d / name).read_bytes() for name in os.listdir(d)}


def ip_files(data_dir: Path, network: str) -> dict[str, bytes]:
    """Reservation files (name is an IP address) and their content."""
    return {n: c for n, c in dir_entries(data_dir, network).items() if n[0].isdigit() or ":" in n}
