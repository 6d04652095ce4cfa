"""A CNI setup for namespace tests: conf dir, cache dir, IPAM dir in tmp, and ``podnet cni`` run
inside the test's node namespace (never in the machine's own namespace)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nsutil import Netns

REPO = Path(__file__).resolve().parent.parent
GO_PLUGINS = "/usr/lib/cni"


@dataclass
class CniEnv:
    node: Netns
    root: Path
    cni_path: str = GO_PLUGINS

    def __post_init__(self) -> None:
        for sub in ("conf", "cache", "ipam"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    @property
    def conf_dir(self) -> Path:
        return self.root / "conf"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def ipam_dir(self) -> Path:
        return self.root / "ipam"

    def write_conflist(self, name: str, plugins: list[dict[str, Any]], version: str = "1.0.0",
                       **top: Any) -> Path:
        body = {"cniVersion": version, "name": name, "plugins": plugins, **top}
        path = self.conf_dir / f"{name}.conflist"
        path.write_text(json.dumps(body, indent=2))
        return path

    def host_local(self, subnet: str, **extra: Any) -> dict[str, Any]:
        ranges = [[{"subnet": subnet}]]
        return {"type": "host-local", "dataDir": str(self.ipam_dir), "ranges": ranges, **extra}

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env.update(NETCONFPATH=str(self.conf_dir), CNI_PATH=self.cni_path, CNI_CACHE_DIR=str(self.cache_dir))
        return env

    def cni(self, command: str, network: str, pod: Netns | None = None, *extra: str,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "podnet.cli.main", "cni", command, network]
        if pod is not None:
            argv.append(pod.path)
        argv.extend(extra)
        proc = self.node.run(argv, check=False, env=self.env())
        assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
        if check and proc.returncode != 0:
            raise AssertionError(f"podnet cni {command} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def add(self, network: str, pod: Netns, *extra: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.cni("add", network, pod, *extra).stdout)
        return result

    def cache_files(self) -> list[str]:
        results = self.cache_dir / "results"
        return sorted(os.listdir(results)) if results.exists() else []

    def pending_files(self) -> list[str]:
        pending = self.cache_dir / "podnet-pending" / "results"
        return sorted(os.listdir(pending)) if pending.exists() else []

    def ip_files(self, network: str) -> list[str]:
        """host-local's reservations: one file per IP (plus its bookkeeping files)."""
        d = self.ipam_dir / network
        if not d.exists():
            return []
        return sorted(n for n in os.listdir(d) if n[0].isdigit() or ":" in n)


def pod_address(pod: Netns, ifname: str = "eth0", family: int = 4) -> list[str]:
    out = pod.run(["ip", "-j", f"-{family}", "addr", "show", "dev", ifname], check=False).stdout
    if not out.strip():
        return []
    return [f"{a['local']}/{a['prefixlen']}" for link in json.loads(out) for a in link.get("addr_info", [])
            if a.get("scope") == "global"]


def veths(node: Netns) -> list[str]:
    out = node.run(["ip", "-j", "link", "show", "type", "veth"]).stdout
    return [link["ifname"] for link in json.loads(out or "[]")]
