"""podnet-bridge and podnet-routed read the values they share the same way (one parser each, in
podnet.plugins.podconf): the pod MAC and its sources, DNS, MTU. Table tests on both plugins'
config loaders, then a real ADD of each that shows the MAC and DNS reach the pod and the result."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from vethplugins import BOTH, IDS, VethPlugin, ok

from nsutil import Netns, NetnsFactory
from podnet.cni import skel
from podnet.cni.errors import CNIError
from podnet.cni.result import DNS
from podnet.plugins import bridge, routed

Loader = Callable[[skel.CmdArgs], Any]
LOADERS: list[tuple[str, Loader, str]] = [("podnet-bridge", bridge.load_conf, "mac"),
                                          ("podnet-routed", routed.load_config, "pod_mac")]


def _args(plugin: str, conf: dict[str, Any], mac_arg: str = "") -> skel.CmdArgs:
    full = {"cniVersion": "1.0.0", "name": "net", "type": plugin,
            "ipam": {"type": "podnet-host-local", "ranges": [[{"subnet": "10.0.0.0/24"}]]}, **conf}
    cni_args = [("IgnoreUnknown", "1")] + ([("MAC", mac_arg)] if mac_arg else [])
    return skel.CmdArgs(command="ADD", container_id="cid", netns="/run/netns/x", ifname="eth0",
                        args=cni_args, path=[], stdin_data=b"", conf=full, cni_version="1.0.0")


def _outcome(loader: Loader, field: str, plugin: str, conf: dict[str, Any], mac_arg: str) -> object:
    try:
        return getattr(loader(_args(plugin, conf, mac_arg)), field)
    except CNIError as err:
        return f"error {err.code}"


A, B, C = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"
# (config changes, CNI_ARGS MAC, the pod MAC both plugins choose or the error code both give)
MAC_CASES: list[tuple[dict[str, Any], str, object]] = [
    ({}, "", None),
    ({}, A, A),
    ({}, "02-00-00-00-00-0A", A),
    ({"args": {"cni": {"mac": B}}}, A, B),
    ({"args": {"cni": {"mac": B}}, "runtimeConfig": {"mac": C}}, A, C),
    ({"runtimeConfig": {"mac": C}}, A, C),
    ({"runtimeConfig": {"mac": ""}}, A, A),
    ({}, "00:00:00:00:00:00", "error 4"),
    ({}, "01:00:5e:00:00:01", "error 4"),
    ({}, "nonsense", "error 4"),
    ({"runtimeConfig": {"mac": "00:00:00:00:00:00"}}, "", "error 7"),
    ({"args": {"cni": {"mac": "00-00-00-00-00-00"}}}, "", "error 7"),
    ({"runtimeConfig": {"mac": "33:33:00:00:00:01"}}, "", "error 7"),
    ({"runtimeConfig": {"mac": 5}}, "", "error 7"),
    ({"runtimeConfig": "02:00:00:00:00:01"}, "", "error 7"),
]


@pytest.mark.parametrize(("conf", "mac_arg", "want"), MAC_CASES)
def test_pod_mac(conf: dict[str, Any], mac_arg: str, want: object) -> None:
    got = [_outcome(loader, field, plugin, conf, mac_arg) for plugin, loader, field in LOADERS]
    assert got == [want, want]


DNS_CASES: list[tuple[object, object]] = [
    (None, DNS()),
    ({}, DNS()),
    ({"nameservers": ["10.0.0.10"], "search": ["svc.cluster.local"], "options": ["ndots:5"]},
     DNS(nameservers=["10.0.0.10"], search=["svc.cluster.local"], options=["ndots:5"])),
    ({"nameservers": "10.0.0.10"}, "error 7"),
    ("10.0.0.10", "error 7"),
]


@pytest.mark.parametrize(("dns", "want"), DNS_CASES)
def test_dns(dns: object, want: object) -> None:
    conf = {} if dns is None else {"dns": dns}
    got = [_outcome(loader, "dns", plugin, conf, "") for plugin, loader, _ in LOADERS]
    assert got == [want, want]


@pytest.mark.parametrize(("mtu", "want"), [(None, None), (0, None), (68, 68), (1500, 1500), (65535, 65535),
                                           (67, "error 7"), (65536, "error 7"), (70000, "error 7"),
                                           ("1500", "error 7"), (True, "error 7")])
def test_mtu(mtu: object, want: object) -> None:
    conf = {} if mtu is None else {"mtu": mtu}
    got = [_outcome(loader, "mtu", plugin, conf, "") for plugin, loader, _ in LOADERS]
    assert got == [want, want]


def _pod_mac(pod: Netns) -> str:
    return pod.run(["cat", "/sys/class/net/eth0/address"]).stdout.strip()


@pytest.mark.parametrize("plugin", BOTH, ids=IDS)
def test_add_uses_the_same_mac_and_dns(node: Netns, netns: NetnsFactory, tmp_path: Path,
                                       plugin: VethPlugin) -> None:
    """args.cni.mac wins over CNI_ARGS (routed used to ignore it); the config's DNS is the result's."""
    dns = {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]}
    conf = plugin.conf("agree", tmp_path, args={"cni": {"mac": B}}, dns=dns)
    pod = netns("pod")
    result = ok(node, plugin, "ADD", conf, "cid", pod, cni_args=f"IgnoreUnknown=1;MAC={A}")
    assert _pod_mac(pod) == B
    assert [i["mac"] for i in result["interfaces"] if i.get("sandbox")] == [B]
    assert result["dns"] == dns
    ok(node, plugin, "DEL", conf, "cid", pod)
