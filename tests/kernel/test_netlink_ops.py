"""Every Netlink operation against the real kernel, in throw-away namespaces only."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from nsutil import Netns, NetnsFactory
from podnet.kernel import (
    DUMP_STATS,
    Exists,
    InvalidArgument,
    KernelError,
    LinkNotFound,
    Netlink,
    NotFound,
    NotSupported,
    model,
    random_mac,
)
from podnet.kernel.dump import DumpRequest, consistent_dump

pytestmark = pytest.mark.root


@pytest.fixture
def nl(node: Netns) -> Iterator[Netlink]:
    with Netlink(node.name) as session:
        yield session


def sysfs(ns: Netns, ifname: str, attr: str) -> str:
    # `ip netns exec` remounts /sys for the namespace; a thread's setns does not.
    return ns.sh(f"cat /sys/class/net/{ifname}/{attr}").strip()


def add_veth(nl: Netlink, name: str = "vh0", peer: str = "vp0") -> model.Link:
    return nl.add_veth(name, peer, mac=random_mac(), peer_mac=random_mac())


# -- links -------------------------------------------------------------------------------

def test_veth_peer_created_in_pod_with_both_macs_set(node: Netns, netns: NetnsFactory, nl: Netlink) -> None:
    pod = netns("pod")
    node.run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other0"])  # eth0 taken here
    host_mac, pod_mac = random_mac(), random_mac()
    host = nl.add_veth("vethpod0", "eth0", mac=host_mac, peer_mac=pod_mac, peer_netns=pod.name, mtu=1450)
    assert host.name == "vethpod0" and host.kind == "veth" and host.mac == host_mac and host.mtu == 1450
    assert host.link_netnsid is not None  # the peer lives in another namespace
    with Netlink(pod.name) as pod_nl:
        peer = pod_nl.link("eth0")
    assert peer.mac == pod_mac and peer.mtu == 1450 and peer.index == host.peer_index
    # NET_ADDR_SET (3), not NET_ADDR_RANDOM (1): udev's MACAddressPolicy leaves both alone.
    assert sysfs(node, "vethpod0", "addr_assign_type") == "3"
    assert sysfs(pod, "eth0", "addr_assign_type") == "3"
    assert sysfs(node, "other0", "addr_assign_type") == "1"  # control: a MAC left to the kernel


def test_veth_in_the_same_namespace(nl: Netlink) -> None:
    host = add_veth(nl)
    peer = nl.link("vp0")
    assert peer.peer_index == host.index and host.peer_index == peer.index
    assert host.link_netnsid is None
    with pytest.raises(Exists):
        add_veth(nl)


def test_lookup_by_name_index_alias(nl: Netlink) -> None:
    host = add_veth(nl)
    assert nl.link(host.index) == nl.link("vh0") == nl.link(host)
    nl.set_alias("vh0", "pod default/web-0")
    assert nl.link_by_alias("pod default/web-0").index == host.index
    assert nl.find_link("nope0") is None
    with pytest.raises(LinkNotFound):
        nl.link("nope0")
    with pytest.raises(LinkNotFound):
        nl.link(99999)
    with pytest.raises(LinkNotFound):
        nl.link_by_alias("no such alias")


def test_up_down_mtu_mac_rename(node: Netns, nl: Netlink) -> None:
    add_veth(nl)
    nl.set_up("vh0")
    assert nl.link("vh0").up
    nl.set_down("vh0")
    assert not nl.link("vh0").up
    nl.set_mtu("vh0", 1400)
    assert nl.link("vh0").mtu == 1400
    with pytest.raises(InvalidArgument):
        nl.set_mtu("vh0", 10)  # below the minimum
    mac = random_mac()
    nl.set_mac("vh0", mac)
    assert nl.link("vh0").mac == mac and sysfs(node, "vh0", "addr_assign_type") == "3"
    nl.rename("vh0", "vh1")
    assert nl.find_link("vh0") is None and nl.link("vh1").mac == mac


def test_bridge_create_reuse_master(nl: Netlink) -> None:
    mac = random_mac()
    br = nl.ensure_bridge("br0", mac=mac, mtu=1400)
    assert br.kind == "bridge" and br.mac == mac and br.mtu == 1400 and br.vlan_filtering is False
    assert nl.ensure_bridge("br0").index == br.index  # reused, not recreated
    add_veth(nl)
    nl.set_master("vh0", "br0")
    port = nl.link("vh0")
    assert port.master == br.index and port.slave_kind == "bridge"
    nl.set_master("vh0", None)
    assert nl.link("vh0").master is None
    with pytest.raises(Exists):
        nl.ensure_bridge("vh0")  # the name belongs to a veth


def test_bridge_vlan_filtering(nl: Netlink) -> None:
    nl.ensure_bridge("br0", vlan_filtering=False)
    try:
        br = nl.ensure_bridge("br0", vlan_filtering=True)
    except NotSupported:
        pytest.skip("kernel built without CONFIG_BRIDGE_VLAN_FILTERING")
    assert br.vlan_filtering is True
    assert nl.ensure_bridge("br0", vlan_filtering=False).vlan_filtering is False


def test_move_to_namespace_with_new_name(netns: NetnsFactory, nl: Netlink) -> None:
    pod = netns("pod")
    add_veth(nl)
    nl.set_netns("vp0", pod.name, new_name="eth0")
    assert nl.find_link("vp0") is None
    assert "eth0" in pod.links()


def test_delete_link(nl: Netlink) -> None:
    add_veth(nl)
    nl.delete_link("vh0")
    assert nl.find_link("vh0") is None and nl.find_link("vp0") is None  # the peer goes too
    nl.delete_link("vh0", missing_ok=True)
    with pytest.raises(LinkNotFound):
        nl.delete_link("vh0")


def test_links_dump(nl: Netlink) -> None:
    add_veth(nl)
    nl.ensure_bridge("br0")
    snap = nl.links()
    assert snap.consistent and snap.attempts == 1
    assert {link.name for link in snap} == {"lo", "vh0", "vp0", "br0"}


# -- addresses ---------------------------------------------------------------------------

def test_addresses(node: Netns, nl: Netlink) -> None:
    add_veth(nl)
    nl.add_address("vh0", "10.20.0.1/24")
    nl.add_address("vh0", "fd00:20::1/64", nodad=True)
    nl.add_address("vp0", "10.20.0.2/24")
    with pytest.raises(Exists):
        nl.add_address("vh0", "10.20.0.1/24")
    nl.add_address("vh0", "10.20.0.1/24", exist_ok=True)
    on_vh0 = nl.addresses("vh0")
    assert sorted(a.cidr for a in on_vh0) == ["10.20.0.1/24", "fd00:20::1/64"]
    v6 = nl.addresses("vh0", socket.AF_INET6)
    assert [a.cidr for a in v6] == ["fd00:20::1/64"] and v6[0].flags & model.IFA_F_NODAD
    assert "10.20.0.2/24" in {a.cidr for a in nl.addresses()}
    assert "inet 10.20.0.1/24" in node.sh("ip -4 addr show vh0")
    nl.del_address("vh0", "10.20.0.1/24")
    assert [a.cidr for a in nl.addresses("vh0")] == ["fd00:20::1/64"]
    with pytest.raises(NotFound):
        nl.del_address("vh0", "10.20.0.1/24")
    nl.del_address("vh0", "10.20.0.1/24", missing_ok=True)
    with pytest.raises(InvalidArgument):
        nl.add_address("vh0", "not-an-ip")
    with pytest.raises(LinkNotFound):
        nl.add_address("nope0", "10.20.0.9/24")


# -- routes ------------------------------------------------------------------------------

def test_routes(node: Netns, nl: Netlink) -> None:
    add_veth(nl)
    nl.set_up("vh0")
    nl.set_up("vp0")
    nl.add_address("vh0", "10.30.0.1/24")
    nl.add_address("vh0", "fd00:30::1/64", nodad=True)
    nl.add_route("10.31.0.0/16", gateway="10.30.0.254", metric=77)
    nl.add_route("10.32.0.5/32", oif="vh0", scope=model.RT_SCOPE_LINK)
    nl.add_route("default", gateway="169.254.1.1", oif="vh0", onlink=True, table=100)
    nl.add_route("default", gateway="fd00:30::fe", oif="vh0")
    main = {r.destination: r for r in nl.routes(table=model.RT_TABLE_MAIN)}
    assert main["10.31.0.0/16"].gateway == "10.30.0.254" and main["10.31.0.0/16"].priority == 77
    assert main["10.32.0.5/32"].scope == model.RT_SCOPE_LINK and main["10.32.0.5/32"].gateway is None
    assert main["::/0"].gateway == "fd00:30::fe" and main["::/0"].family == socket.AF_INET6
    (default,) = nl.routes(socket.AF_INET, table=100)
    assert default.dst is None and default.gateway == "169.254.1.1" and default.onlink
    assert "default via 169.254.1.1 dev vh0" in node.sh("ip route show table 100")
    # replace changes in place; add of the same route is Exists
    with pytest.raises(Exists):
        nl.add_route("10.31.0.0/16", gateway="10.30.0.254", metric=77)
    nl.add_route("10.31.0.0/16", gateway="10.30.0.253", metric=77, replace=True)
    assert {r.gateway for r in nl.routes(oif="vh0") if r.destination == "10.31.0.0/16"} == {"10.30.0.253"}
    nl.del_route("10.31.0.0/16", metric=77)
    nl.del_route("default", gateway="169.254.1.1", table=100)
    assert not list(nl.routes(socket.AF_INET, table=100))
    with pytest.raises(NotFound):
        nl.del_route("10.31.0.0/16")
    nl.del_route("10.31.0.0/16", missing_ok=True)
    with pytest.raises(KernelError):
        nl.add_route("10.33.0.0/16", gateway="10.99.99.1")  # gateway not reachable
    with pytest.raises(InvalidArgument):
        nl.add_route("10.33.0.1/16", oif="vh0")  # host bits set: not a network


def test_routes_of_a_table_that_never_existed_are_none(nl: Netlink) -> None:
    assert list(nl.routes(socket.AF_INET, table=4242)) == []  # the kernel says ENOENT for IPv4
    assert list(nl.routes(socket.AF_INET6, table=4242)) == []
    assert list(nl.routes(table=4242)) == []


def test_filtered_dumps_fit_in_one_part_however_big_the_table(node: Netns, nl: Netlink) -> None:
    """The hot paths ask about one link: the kernel filters (strict checking), the answer is one
    part, and one attempt is enough even for dumps the kernel does not flag. The same tables
    unfiltered come in several parts and need a second attempt to be checked."""
    add_veth(nl)
    for name in ("vh0", "vp0"):
        nl.set_up(name)
    nl.add_address("vh0", "10.30.0.1/24")
    nl.add_route("10.32.0.5/32", oif="vh0", scope=model.RT_SCOPE_LINK)
    nl.set_neighbour("vh0", "10.30.0.9", random_mac())
    big = [f"addr add 10.60.{i // 250}.{i % 250 + 1}/32 dev vp0" for i in range(1500)]
    big += [f"route add 10.61.{i // 250}.{i % 250 + 1}/32 dev vp0" for i in range(1500)]
    big += [f"neigh add 10.62.{i // 250}.{i % 250 + 1} lladdr 02:00:00:00:00:01 dev vp0" for i in range(1500)]
    node.run(["ip", "-batch", "-"], input="\n".join(big) + "\n")

    def attempts(dump: Callable[[], object]) -> int:
        before = DUMP_STATS.attempts
        dump()
        return DUMP_STATS.attempts - before

    assert attempts(lambda: nl.addresses("vh0")) == 1
    mine = nl.routes(socket.AF_INET, table=model.RT_TABLE_MAIN, oif="vh0")
    assert [r.destination for r in mine] == ["10.30.0.0/24", "10.32.0.5/32"]
    assert attempts(lambda: nl.routes(table=model.RT_TABLE_MAIN, oif="vh0")) == 1
    assert attempts(lambda: nl.neighbours("vh0")) == 1
    # Several parts: at least a second attempt to compare with, more when a change notification
    # arrived meanwhile (the fresh veths' IPv6 neighbour discovery can still be going on).
    assert attempts(lambda: nl.routes()) >= 2
    assert attempts(lambda: nl.neighbours()) >= 2


# -- neighbours --------------------------------------------------------------------------

def test_permanent_neighbours(node: Netns, nl: Netlink) -> None:
    add_veth(nl)
    mac, mac2 = random_mac(), random_mac()
    nl.set_neighbour("vh0", "169.254.1.1", mac)
    nl.set_neighbour("vh0", "fe80::1", mac)
    (v4,) = nl.neighbours("vh0", socket.AF_INET)
    assert v4.dst == "169.254.1.1" and v4.lladdr == mac and v4.permanent
    nl.set_neighbour("vh0", "169.254.1.1", mac2)  # replaced, not duplicated
    assert [n.lladdr for n in nl.neighbours("vh0", socket.AF_INET)] == [mac2]
    assert "PERMANENT" in node.sh("ip neigh show dev vh0 169.254.1.1")
    assert {n.dst for n in nl.neighbours()} >= {"169.254.1.1", "fe80::1"}
    nl.del_neighbour("vh0", "169.254.1.1")
    with pytest.raises(NotFound):
        nl.del_neighbour("vh0", "169.254.1.1")
    nl.del_neighbour("vh0", "169.254.1.1", missing_ok=True)
    assert [n.dst for n in nl.neighbours("vh0")] == ["fe80::1"]


# -- rules and sysctls -------------------------------------------------------------------

def test_rules_dump(node: Netns, nl: Netlink) -> None:
    node.run(["ip", "rule", "add", "from", "10.40.0.0/24", "table", "100", "priority", "100"])
    rule = next(r for r in nl.rules(socket.AF_INET) if r.priority == 100)
    assert rule.src == "10.40.0.0" and rule.src_len == 24 and rule.table == 100
    assert {r.family for r in nl.rules(socket.AF_INET6)} == {socket.AF_INET6}


def test_sysctls_per_namespace(node: Netns, netns: NetnsFactory, nl: Netlink) -> None:
    other = netns("other")
    add_veth(nl, "eth0.100", "vp0")  # a dotted name: only the slash form can address it
    nl.set_sysctl("net.ipv4.ip_forward", 1)
    nl.set_sysctl("net/ipv4/conf/eth0.100/rp_filter", "2")
    assert nl.sysctl("net.ipv4.ip_forward") == "1"
    assert node.sh("sysctl -n net.ipv4.ip_forward").strip() == "1"
    assert node.sh("cat /proc/sys/net/ipv4/conf/eth0.100/rp_filter").strip() == "2"
    with Netlink(other.name) as other_nl:
        assert other_nl.sysctl("net.ipv4.ip_forward") == "0"
    with pytest.raises(NotFound):
        nl.sysctl("net.ipv4.conf.nope0.forwarding")


# -- sessions ----------------------------------------------------------------------------

def test_routed_pod_wiring_end_to_end(node: Netns, netns: NetnsFactory, nl: Netlink) -> None:
    """The VPC-CNI / Calico wiring built only with this API; then a ping crosses it."""
    pod = netns("pod")
    host_mac, pod_mac = random_mac(), random_mac()
    nl.add_veth("vethpod0", "eth0", mac=host_mac, peer_mac=pod_mac, peer_netns=pod.name)
    nl.add_address("lo", "10.88.255.1/32")
    nl.set_up("vethpod0")
    nl.add_route("10.88.0.2/32", oif="vethpod0", scope=model.RT_SCOPE_LINK)
    nl.set_neighbour("vethpod0", "10.88.0.2", pod_mac)
    with Netlink(pod.name) as pod_nl:
        pod_nl.add_address("eth0", "10.88.0.2/32")
        pod_nl.set_up("eth0")
        pod_nl.add_route("169.254.1.1/32", oif="eth0", scope=model.RT_SCOPE_LINK)
        pod_nl.add_route("default", gateway="169.254.1.1", oif="eth0", onlink=True)
        pod_nl.set_neighbour("eth0", "169.254.1.1", host_mac)
    assert pod.ping("10.88.255.1")


def test_abandoned_dump_does_not_poison_the_socket(nl: Netlink) -> None:
    for i in range(60):
        add_veth(nl, f"va{i}", f"vb{i}")  # a dump of several receive buffers

    def explode(buf: bytes, start: int, end: int) -> None:
        raise RuntimeError("decoder bug")

    with pytest.raises(RuntimeError):
        consistent_dump(nl._rt, DumpRequest("links", model.RTM_GETLINK, model.link_request(), explode))
    assert len(nl.links()) == 121  # the rest of the abandoned dump was drained first


def test_writes_work_from_any_thread(nl: Netlink) -> None:
    """The session's socket is shared under a lock: reads and writes from any thread."""
    add_veth(nl)
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            nl.set_up("vh0")
        except KernelError as exc:
            errors.append(exc)
        assert len(nl.links()) == 3

    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    assert errors == [] and nl.link("vh0").up


def test_vlan_requests_refused_by_this_kernel_are_not_supported(nl: Netlink) -> None:
    """Without CONFIG_BRIDGE_VLAN_FILTERING the kernel refuses VLAN filtering and per-port VLANs;
    podnet's own requests get that refusal as NotSupported, from any thread (one socket, one
    error path: no second netlink stack bound to the first thread that used it)."""
    br = nl.ensure_bridge("br0")
    add_veth(nl)
    nl.set_master("vh0", br)
    try:
        nl.ensure_bridge("br1", vlan_filtering=True)
    except NotSupported:
        pass
    else:
        pytest.skip("this kernel has CONFIG_BRIDGE_VLAN_FILTERING: nothing is refused")
    assert nl.find_link("br1") is None  # refused, nothing half-built
    errors: list[BaseException] = []

    def vlan_calls() -> None:
        for call in (lambda: nl.bridge_vlan_add("vh0", 10, pvid=True, untagged=True),
                     lambda: nl.ensure_bridge("br0", vlan_filtering=True)):
            try:
                call()
            except KernelError as exc:
                errors.append(exc)

    vlan_calls()
    t = threading.Thread(target=vlan_calls)
    t.start()
    t.join()
    assert [type(e) for e in errors] == [NotSupported] * 4, errors
    nl.bridge_vlan_del("vh0", 1)  # accepted: this kernel keeps no VLANs, so there is none to remove
    with pytest.raises(NotSupported):
        nl.bridge_vlan_add("br0", 10)  # the bridge itself (not a port) is refused the same way
