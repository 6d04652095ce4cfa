"""podnet-bridge logic without root: configuration, MAC precedence, gateways and default routes,
owner strings of nftables elements."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from podnet.cni import skel
from podnet.cni.errors import CNIError
from podnet.cni.result import DNS, IPConfig, Result, Route
from podnet.dataplane import plugin_elements
from podnet.kernel.nft import FakeNft
from podnet.plugins import attachment, bridge
from podnet.plugins.identity import network_token, owner


def _args(conf: dict[str, Any], cni_args: list[tuple[str, str]] | None = None) -> skel.CmdArgs:
    full = {"cniVersion": "1.0.0", "name": "net", "type": "podnet-bridge", **conf}
    return skel.CmdArgs(command="ADD", container_id="cid", netns="/run/netns/x", ifname="eth0",
                        args=cni_args or [], path=[], stdin_data=b"", conf=full, cni_version="1.0.0")


def test_defaults() -> None:
    conf = bridge.load_conf(_args({}))
    assert (conf.bridge, conf.is_gateway, conf.ip_masq) == ("cni0", False, False)
    assert conf.mtu is None and conf.vlan == 0
    assert conf.preserve_default_vlan and not conf.has_ipam and conf.mac is None and conf.dns.is_empty()


def test_default_gateway_implies_gateway() -> None:
    conf = bridge.load_conf(_args({"isDefaultGateway": True}))
    assert conf.is_gateway and conf.is_default_gateway


def test_mac_precedence() -> None:
    """As in the reference: CNI_ARGS, then args.cni.mac, then runtimeConfig.mac; the last set wins."""
    env = [("IgnoreUnknown", "1"), ("MAC", "02:00:00:00:00:01")]
    assert bridge.load_conf(_args({}, env)).mac == "02:00:00:00:00:01"
    conf = {"args": {"cni": {"mac": "02:00:00:00:00:02"}}}
    assert bridge.load_conf(_args(conf, env)).mac == "02:00:00:00:00:02"
    conf["runtimeConfig"] = {"mac": "02-00-00-00-00-0A"}
    assert bridge.load_conf(_args(conf, env)).mac == "02:00:00:00:00:0a"


@pytest.mark.parametrize(("conf", "code"), [
    ({"mtu": 67}, 7), ({"mtu": 65536}, 7), ({"vlan": 4095}, 7), ({"bridge": "a/b"}, 7),
    ({"bridge": 5}, 7), ({"forceAddress": 1}, 7), ({"runtimeConfig": {"mac": "02:00:00:00:00"}}, 7),
    ({"dns": {"nameservers": "1.1.1.1"}}, 7), ({"vlanTrunk": []}, 2),
])
def test_invalid(conf: dict[str, Any], code: int) -> None:
    with pytest.raises(CNIError) as err:
        bridge.load_conf(_args(conf))
    assert err.value.code == code


def test_conf_dns_wins() -> None:
    conf = bridge.load_conf(_args({"dns": {"nameservers": ["10.0.0.10"], "search": ["svc"]}}))
    assert conf.dns == DNS(nameservers=["10.0.0.10"], search=["svc"])
    assert bridge.load_conf(_args({"dns": {}})).dns.is_empty()


def _ipam(*ips: IPConfig, routes: list[Route] | None = None) -> Result:
    return Result(ips=list(ips), routes=routes or [])


def test_gateways_and_default_routes() -> None:
    conf = bridge.load_conf(_args({"isDefaultGateway": True}))
    v4 = IPConfig(address=ipaddress.ip_interface("10.1.2.7/24"))
    v6 = IPConfig(address=ipaddress.ip_interface("fd00::7/64"), gateway=ipaddress.ip_address("fd00::fe"))
    ips, routes = bridge.pod_ips(conf, _ipam(v4, v6))
    assert [str(ip.gateway) for ip in ips] == ["10.1.2.1", "fd00::fe"]
    assert all(ip.interface == bridge.POD_IDX for ip in ips)
    assert [(str(r.dst), str(r.gw)) for r in routes] == [("0.0.0.0/0", "10.1.2.1"), ("::/0", "fd00::fe")]


def test_ipam_default_route_is_kept() -> None:
    conf = bridge.load_conf(_args({"isDefaultGateway": True}))
    ipam_default = Route(dst=ipaddress.ip_network("0.0.0.0/0"), gw=ipaddress.ip_address("10.1.2.254"))
    _, routes = bridge.pod_ips(conf, _ipam(IPConfig(address=ipaddress.ip_interface("10.1.2.7/24")),
                                           routes=[ipam_default]))
    assert routes == [ipam_default]


def test_no_gateway_without_is_gateway() -> None:
    ips, routes = bridge.pod_ips(bridge.load_conf(_args({})),
                                 _ipam(IPConfig(address=ipaddress.ip_interface("10.1.2.7/24"))))
    assert ips[0].gateway is None and routes == []
    with pytest.raises(CNIError, match="no IP configuration"):
        bridge.pod_ips(bridge.load_conf(_args({})), _ipam())


def test_owner_strings() -> None:
    assert owner("net", "cid", "eth0") == "net/cid/eth0"
    hashed = owner("net", "c" * 200, "eth0")
    assert hashed.startswith("net/#") and len(hashed) < 128
    assert owner("net", "cid", 'e"th0').startswith("net/#")  # quotes cannot go into nft
    long_net = "n" * 100
    assert owner(long_net, "cid", "eth0").startswith(network_token(long_net) + "/")
    assert network_token(long_net).startswith("#") and len(network_token(long_net)) == 17
    assert owner("net", "a", "b") != owner("net", "a", "c")


class _NoLinks:
    """Stands in for the node's Netlink session: no host veths (this test never touches a kernel)."""

    def __init__(self, *a: object) -> None:
        self.deleted: list[str] = []

    def __enter__(self) -> _NoLinks:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def links(self) -> list[object]:
        return []

    def find_link(self, name: str) -> None:
        return None


def test_del_and_gc_pick_exactly_their_elements(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = FakeNft()
    monkeypatch.setattr(plugin_elements, "plugin_backend", lambda: fake)
    monkeypatch.setattr(attachment, "Netlink", _NoLinks)
    masq, spoof = plugin_elements.bridge_masquerade(), plugin_elements.bridge_spoof_check()
    long_net = "n" * 80
    owners = {
        "a": owner("net", "a", "eth0"), "b": owner("net", "b", "eth0"),
        "b1": owner("net", "b", "eth1"), "c": owner("net", "c", "eth0"),
        "other": owner("net2", "a", "eth0"), "long": owner(long_net, "a", "eth0"),
    }
    for i, own in enumerate(owners.values()):
        masq.add(own, [ipaddress.ip_interface(f"10.0.0.{i + 2}/24")])
        spoof.add(own, f"pn{i}", f"02:00:00:00:00:0{i}")

    def left() -> set[str]:
        return {e.comment or "" for _, e in masq.elements(lambda c: True) + spoof.elements(lambda c: True)}

    # DEL without ipMasq or macspoofchk in the config still removes the attachment's elements.
    bridge.cmd_del(_gc_args({}, "DEL", "a", env={"PODNET_LOCK_DIR": str(tmp_path)}))
    assert left() == set(owners.values()) - {owners["a"]}
    # GC keeps listed attachments, whole containers listed without ifname, and other networks.
    bridge.cmd_gc(_gc_args({"cni.dev/valid-attachments": [{"containerID": "b"}]}, "GC"))
    assert left() == {owners["b"], owners["b1"], owners["other"], owners["long"]}
    bridge.cmd_gc(_gc_args({"cni.dev/valid-attachments": []}, "GC", name=long_net))
    assert left() == {owners["b"], owners["b1"], owners["other"]}


def _gc_args(conf: dict[str, Any], command: str, cid: str = "", name: str = "net",
             env: dict[str, str] | None = None) -> skel.CmdArgs:
    full = {"cniVersion": "1.1.0", "name": name, "type": "podnet-bridge", **conf}
    return skel.CmdArgs(command=command, container_id=cid, netns="", ifname="eth0", args=[], path=[],
                        stdin_data=b"", conf=full, cni_version="1.1.0", env=env or {})
