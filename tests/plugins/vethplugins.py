"""Both veth plugins (podnet-bridge, podnet-routed) behind one small interface, for tests that
must hold for each of them alike: a config, a run of the executable, and what is left on the node."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nsutil import Netns

REPO = Path(__file__).resolve().parent.parent.parent
VENV_BIN = REPO / ".venv" / "bin"


@dataclass(frozen=True)
class VethPlugin:
    type: str
    subnet: str

    @property
    def exe(self) -> str:
        return str(VENV_BIN / self.type)

    def conf(self, name: str, data_dir: Path, version: str = "1.1.0", **keys: Any) -> dict[str, Any]:
        plugin: dict[str, Any] = {"type": self.type}
        if self.type == "podnet-bridge":
            plugin.update(bridge="br-vp", isGateway=True, ipMasq=True)
        ipam = {"type": "podnet-host-local", "dataDir": str(data_dir), "ranges": [[{"subnet": self.subnet}]]}
        return {"cniVersion": version, "name": name, **plugin, "ipam": ipam, **keys}


BRIDGE = VethPlugin("podnet-bridge", "10.77.0.0/24")
ROUTED = VethPlugin("podnet-routed", "10.78.0.0/24")
BOTH = [BRIDGE, ROUTED]
IDS = ["bridge", "routed"]


def env_for(command: str, container_id: str = "", netns: str = "", ifname: str = "eth0",
            cni_args: str = "") -> dict[str, str]:
    # This process's environment (minus CNI_*) carries PODNET_SOCKET: daemon or in-process mode.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update(CNI_COMMAND=command, CNI_PATH=str(VENV_BIN), CNI_IFNAME=ifname)
    for key, value in (("CNI_CONTAINERID", container_id), ("CNI_NETNS", netns), ("CNI_ARGS", cni_args)):
        if value:
            env[key] = value
    return env


def run(node: Netns, plugin: VethPlugin, command: str, conf: dict[str, Any], container_id: str = "",
        pod: Netns | None = None, *, ifname: str = "eth0", cni_args: str = "") -> tuple[int, Any]:
    """Exec the plugin in the node namespace; (exit code, parsed stdout or None)."""
    env = env_for(command, container_id, pod.path if pod is not None else "", ifname, cni_args)
    proc = node.run([plugin.exe], input=json.dumps(conf), env=env, check=False)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None


def ok(node: Netns, plugin: VethPlugin, command: str, conf: dict[str, Any], *a: Any, **kw: Any) -> Any:
    code, out = run(node, plugin, command, conf, *a, **kw)
    assert code == 0, out
    return out


def host_veths(node: Netns) -> list[str]:
    out = node.run(["ip", "-j", "link", "show", "type", "veth"]).stdout
    return sorted(link["ifname"] for link in json.loads(out or "[]"))


def ip_files(data_dir: Path, network: str) -> dict[str, str]:
    """host-local's reservations: IP -> the first line of its file (the container ID)."""
    d = data_dir / network
    if not d.exists():
        return {}
    return {e.name: e.read_text().splitlines()[0] for e in d.iterdir()
            if e.name[0].isdigit() or ":" in e.name}


def nft_comments(node: Netns) -> list[str]:
    """Comments of the elements in podnet-bridge's inet table ([] without the table)."""
    proc = node.run(["nft", "-j", "list", "table", "inet", "podnet-bridge"], check=False)
    if proc.returncode != 0:
        return []
    out = []
    for item in json.loads(proc.stdout)["nftables"]:
        for elem in item.get("set", {}).get("elem", []):
            if isinstance(elem, dict) and "elem" in elem:
                out.append(str(elem["elem"].get("comment", "")))
    return sorted(out)
