"""agent.routes against the kernel: four node namespaces (three on one underlay bridge, one behind a
router), a pod on each, a RouteSync per node fed Node objects through its own store (see
``routes_cluster``). Host-gw between the bridged nodes, VXLAN to and from the routed one, IPv4 and
IPv6; deletion, repair and ownership."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nsutil import NetnsFactory
from podnet.agent.routes_plan import vxlan_mac
from podnet.kernel import Netlink
from podnet.plugins.agent_notify import ask

from .routes_cluster import NAMES, PERIOD, Cluster, cluster, node_ip, pod_ip, wait_until

pytestmark = pytest.mark.root
PODNET = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "podnet")
PROTO = "proto 157"


@pytest.fixture
def nodes(netns: NetnsFactory) -> Iterator[Cluster]:
    with cluster(netns) as c:
        c.start()
        c.settled()
        yield c


def routes(c: Cluster, name: str, version: int = 4) -> dict[str, dict[str, object]]:
    out = c.sh(name, f"ip -{version} -j route show {PROTO}")
    return {r["dst"]: r for r in json.loads(out or "[]")}


def fdb(c: Cluster, name: str, device: str = "podnet.vx4") -> dict[str, str]:
    out = json.loads(c.sh(name, f"bridge -j fdb show dev {device}") or "[]")
    return {e["mac"]: e["dst"] for e in out if "dst" in e}


def neighbours(c: Cluster, name: str, device: str = "podnet.vx4") -> dict[str, str]:
    out = json.loads(c.sh(name, f"ip -j neigh show dev {device} nud permanent") or "[]")
    return {e["dst"]: e["lladdr"] for e in out}


def ping_matrix(c: Cluster, version: int) -> list[str]:
    failed = []
    for i, src in enumerate(NAMES, 1):
        for j in range(1, 5):
            if j != i and not c.pods[src].ping(pod_ip(j, version), timeout=1):
                failed.append(f"{src} -> n{j}")
    return failed


def test_every_pod_reaches_every_other_pod(nodes: Cluster) -> None:
    status = nodes.syncs["n1"].status()
    modes = {p["name"]: p["mode"] for p in status["peers"]}
    assert modes == {"n2": "host-gw", "n3": "host-gw", "n4": "vxlan"}
    assert all(p["state"] == "ok" for p in status["peers"]), status
    assert {p["mode"] for p in nodes.syncs["n4"].status()["peers"]} == {"vxlan"}
    # host-gw: the peer's node IP as gateway on the underlay link; vxlan: its VTEP, onlink, on the device
    r4 = routes(nodes, "n1")
    assert r4["10.90.2.0/24"]["gateway"] == "10.80.0.2" and r4["10.90.2.0/24"]["dev"] == "eth0"
    assert r4["10.90.4.0/24"]["gateway"] == "10.90.4.0" and r4["10.90.4.0/24"]["dev"] == "podnet.vx4"
    assert "onlink" in r4["10.90.4.0/24"]["flags"]
    assert routes(nodes, "n1", 6)["fd90:4::/64"]["dev"] == "podnet.vx6"
    assert fdb(nodes, "n1") == {vxlan_mac("n4"): "10.81.0.4"}
    assert neighbours(nodes, "n1") == {"10.90.4.0": vxlan_mac("n4")}
    assert fdb(nodes, "n4") == {vxlan_mac(f"n{i}"): node_ip(i) for i in (1, 2, 3)}
    vx = json.loads(nodes.sh("n1", "ip -d -j link show podnet.vx4"))[0]
    info = vx["linkinfo"]["info_data"]
    assert (info["id"], info["port"], info["learning"], info["local"]) == (1, 8472, False, "10.80.0.1")
    assert vx["address"] == vxlan_mac("n1") and "group" not in info and "remote" not in info
    assert ping_matrix(nodes, 4) == []
    assert ping_matrix(nodes, 6) == []


def test_deleted_node_loses_its_routes_on_every_other_node(nodes: Cluster) -> None:
    nodes.delete_node("n4")
    nodes.delete_node("n3")

    def gone() -> bool:
        return all("10.90.4.0/24" not in routes(nodes, n) and "10.90.3.0/24" not in routes(nodes, n)
                   and "fd90:4::/64" not in routes(nodes, n, 6) and not fdb(nodes, n)
                   and not neighbours(nodes, n) for n in ("n1", "n2"))

    assert wait_until(gone, 1.0) < 1.0
    assert "10.90.2.0/24" in routes(nodes, "n1") and "10.90.1.0/24" in routes(nodes, "n2")
    assert nodes.pods["n1"].ping(pod_ip(2), timeout=1)
    assert not nodes.pods["n1"].ping(pod_ip(3), timeout=1)


def test_entries_deleted_by_hand_come_back(nodes: Cluster) -> None:
    before = nodes.syncs["n1"].status()["repairs"]
    nodes.sh("n1", f"ip route del 10.90.2.0/24 {PROTO}; ip route del 10.90.4.0/24 {PROTO}; "
                   "ip neigh del 10.90.4.0 dev podnet.vx4; ip addr del 10.90.1.0/32 dev podnet.vx4; "
                   f"bridge fdb del {vxlan_mac('n4')} dev podnet.vx4 dst 10.81.0.4; "
                   f"ip -6 route del fd90:4::/64 {PROTO}")

    def back() -> bool:
        return ({"10.90.2.0/24", "10.90.4.0/24"} <= routes(nodes, "n1").keys()
                and "fd90:4::/64" in routes(nodes, "n1", 6)
                and fdb(nodes, "n1") == {vxlan_mac("n4"): "10.81.0.4"}
                and neighbours(nodes, "n1") == {"10.90.4.0": vxlan_mac("n4")}
                and "10.90.1.0/32" in nodes.sh("n1", "ip -4 addr show dev podnet.vx4"))

    assert wait_until(back, PERIOD + 1.0) <= PERIOD + 1.0
    assert nodes.syncs["n1"].status()["repairs"] >= before + 6
    assert nodes.pods["n1"].ping(pod_ip(4), timeout=1) and nodes.pods["n1"].ping(pod_ip(2), timeout=1)


def test_a_wrong_entry_is_replaced_and_an_extra_one_removed(nodes: Cluster) -> None:
    extra, before = "02:00:00:00:00:02", nodes.syncs["n1"].status()["repairs"]
    nodes.sh("n1", f"ip route replace 10.90.2.0/24 via 10.80.0.3 {PROTO}; "
                   f"ip -6 route replace fd90:2::/64 via fd80::3 {PROTO}; "
                   f"ip route add 10.90.77.0/24 via 10.80.0.3 {PROTO}; "
                   "ip neigh replace 10.90.4.0 lladdr 02:00:00:00:00:01 dev podnet.vx4 nud permanent; "
                   "ip neigh add 10.90.78.0 lladdr 02:00:00:00:00:01 dev podnet.vx4 nud permanent; "
                   f"bridge fdb replace {vxlan_mac('n4')} dev podnet.vx4 dst 10.80.0.9 self permanent; "
                   f"bridge fdb append {extra} dev podnet.vx4 dst 10.80.0.9 self permanent; "
                   "ip addr add 10.90.79.0/32 dev podnet.vx4")

    def fixed() -> bool:
        r4 = routes(nodes, "n1")
        return (r4["10.90.2.0/24"]["gateway"] == "10.80.0.2" and "10.90.77.0/24" not in r4
                and routes(nodes, "n1", 6)["fd90:2::/64"]["gateway"] == "fd80::2"
                and neighbours(nodes, "n1") == {"10.90.4.0": vxlan_mac("n4")}
                and fdb(nodes, "n1") == {vxlan_mac("n4"): "10.81.0.4"}
                and "10.90.79.0" not in nodes.sh("n1", "ip -4 addr show dev podnet.vx4"))

    wait_until(fixed, PERIOD + 1.0)
    # One write per entry changed above (the forwarding entry moved elsewhere: its deletion and the
    # right one), so each change was there to repair (the reads above could not tell it from none).
    assert nodes.syncs["n1"].status()["repairs"] >= before + 9
    assert nodes.pods["n1"].ping(pod_ip(4), timeout=1) and nodes.pods["n1"].ping(pod_ip(2, 6), timeout=1)


def test_a_device_deleted_by_hand_is_made_again(nodes: Cluster) -> None:
    before = nodes.syncs["n4"].status()["repairs"]
    nodes.sh("n4", "ip link del podnet.vx4; ip link del podnet.vx6")

    def back() -> bool:
        return (len(routes(nodes, "n4")) == 3 and len(routes(nodes, "n4", 6)) == 3
                and len(fdb(nodes, "n4")) == 3 and len(neighbours(nodes, "n4", "podnet.vx6")) == 3)

    wait_until(back, PERIOD + 1.0)
    # Two devices, two addresses on each, and per device three routes, neighbours and entries
    assert nodes.syncs["n4"].status()["repairs"] >= before + 2 * (1 + 2 + 3 * 3)
    links = {link["ifname"]: link for link in json.loads(nodes.sh("n4", "ip -j addr show"))}
    # The underlay's MTU less VXLAN's overhead (IPv4 50, IPv6 70 bytes); the VTEP address on each.
    assert (links["podnet.vx4"]["mtu"], links["podnet.vx6"]["mtu"]) == (1450, 1430)
    assert {"10.90.4.0", "fd90:4::"} <= {a["local"] for a in links["podnet.vx4"]["addr_info"]}
    assert ping_matrix(nodes, 4) == [] and ping_matrix(nodes, 6) == []


def test_routes_podnet_does_not_own_are_left_alone(netns: NetnsFactory) -> None:
    with cluster(netns) as c:
        # Before the controllers start: another program's route to a peer's pod CIDR, and one in the
        # same family elsewhere, and a permanent neighbour on the underlay link.
        c.sh("n1", "ip route add 10.90.3.0/24 via 10.80.0.2; "
                   "ip route add 10.99.0.0/24 via 10.80.0.3 proto 4; "
                   "ip -6 route add fd99::/64 via fd80::3; "
                   "ip neigh add 10.80.0.77 lladdr 02:00:00:00:00:77 dev eth0 nud permanent")
        c.start()
        c.settled()
        c.delete_node("n2")
        c.settled()
        main = json.loads(c.sh("n1", "ip -4 -j route show"))
        foreign = {r["dst"]: r.get("gateway") for r in main if r.get("protocol") != "157"}
        assert foreign["10.90.3.0/24"] == "10.80.0.2" and foreign["10.99.0.0/24"] == "10.80.0.3"
        assert "10.90.3.0/24" not in routes(c, "n1")
        assert "fd99::/64" in c.sh("n1", "ip -6 route show")
        assert "10.80.0.77" in c.sh("n1", "ip neigh show dev eth0 nud permanent")
        n3 = next(p for p in c.syncs["n1"].status()["peers"] if p["name"] == "n3")
        assert "not own" in n3["state"]


def test_routes_are_marked_podnet_in_the_kernel(nodes: Cluster) -> None:
    with Netlink(nodes.nodes["n2"].path) as nl:
        ours = [r for r in nl.routes(socket.AF_INET, table=254) if r.protocol == 157]
    assert sorted(r.destination for r in ours) == ["10.90.1.0/24", "10.90.3.0/24", "10.90.4.0/24"]


# ---- through the real agent process -------------------------------------------------------------

NODE_YAML = """\
apiVersion: v1
kind: Node
metadata: {{name: n{i}}}
spec: {{podCIDR: 10.90.{i}.0/24, podCIDRs: [10.90.{i}.0/24, "fd90:{i}::/64"]}}
status:
  addresses: [{{type: InternalIP, address: {v4}}}, {{type: InternalIP, address: "{v6}"}}]
---
# Its pod, as the API lists it: the agent holds back addresses of its Node's pod CIDR it does not know.
apiVersion: v1
kind: Pod
metadata: {{namespace: default, name: p{i}}}
spec: {{nodeName: n{i}, containers: [{{name: c, image: pause}}]}}
status: {{phase: Running, podIP: {p4}, podIPs: [{{ip: {p4}}}, {{ip: "{p6}"}}]}}
"""


def test_the_agent_routes_with_routing_auto(netns: NetnsFactory, tmp_path: Path) -> None:
    manifests, sock = tmp_path / "manifests", str(tmp_path / "agent.sock")
    manifests.mkdir()
    for i in range(1, 5):
        (manifests / f"n{i}.yaml").write_text(NODE_YAML.format(i=i, v4=node_ip(i), v6=node_ip(i, 6),
                                                               p4=pod_ip(i), p6=pod_ip(i, 6)))
    argv = [PODNET, "agent", "--manifests", str(manifests), "--node-name", "n1", "--socket", sock,
            "--routing", "auto", "--route-check-period", "0.5"]
    with cluster(netns) as c, open(tmp_path / "agent.log", "wb") as log:
        c.start(("n2", "n3", "n4"))
        proc = c.nodes["n1"].popen(argv, stdout=log, stderr=subprocess.STDOUT)

        def routing() -> dict[str, Any]:
            assert proc.poll() is None, (tmp_path / "agent.log").read_text()
            try:
                found: dict[str, Any] = ask(sock, {"op": "status"}, 2)["status"]["routing"]
            except (OSError, ValueError):
                return {}
            return found

        wait_until(lambda: routing().get("syncs", 0) > 0 and routing()["routes"] == 6, 30)
        modes = {p["name"]: (p["mode"], p["state"]) for p in routing()["peers"]}
        assert modes == {"n2": ("host-gw", "ok"), "n3": ("host-gw", "ok"), "n4": ("vxlan", "ok")}
        assert ping_matrix(c, 4) == [] and ping_matrix(c, 6) == []
        status = [PODNET, "status", "--socket", sock, "--daemon-socket", str(tmp_path / "none")]
        text = c.nodes["n1"].run(status, check=False).stdout
        assert "routing: 3 peer(s), 6 route(s)" in text and "peer n4: vxlan" in text, text
        (manifests / "n4.yaml").unlink()
        assert wait_until(lambda: "10.90.4.0/24" not in routes(c, "n1") and not fdb(c, "n1"), 1.0) < 1.0
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(15) == 0


def test_a_link_of_another_kind_by_the_device_name_is_not_podnets(netns: NetnsFactory) -> None:
    with cluster(netns) as c:
        c.sh("n2", "ip link add podnet.vx4 type veth peer name other")
        c.start()
        c.settled(("n1", "n3", "n4"))
        sync, taken = c.syncs["n2"], "podnet.vx4: link podnet.vx4: name taken"
        wait_until(lambda: taken in (sync.status()["last_error"] or ""), 2)
        # The bridged peers are routed, and IPv6 to n4 over podnet.vx6; only IPv4 to n4 waits.
        assert set(routes(c, "n2")) == {"10.90.1.0/24", "10.90.3.0/24"}
        assert set(routes(c, "n2", 6)) == {"fd90:1::/64", "fd90:3::/64", "fd90:4::/64"}
        assert c.pods["n2"].ping(pod_ip(1), timeout=1) and c.pods["n2"].ping(pod_ip(4, 6), timeout=1)
        assert "veth" in c.sh("n2", "ip -d link show podnet.vx4")
