"""The write requests podnet encodes itself, decoded back field by field (no kernel needed): the same
attributes pyroute2 sends for the same calls, so the kernel ends up in the same state."""

from __future__ import annotations

import socket
import sys

from podnet.kernel import model, requests
from podnet.kernel.wire import NLM_F_ACK, NLM_F_REQUEST, attr_list, attrs, cstr

ORDER = sys.byteorder


def u32(data: bytes) -> int:
    return int.from_bytes(data[:4], ORDER)


def test_veth_pair_with_peer_in_another_namespace() -> None:
    req = requests.add_veth("pnab12", "eth0", mac="02:00:00:00:00:01", peer_mac="02:00:00:00:00:02",
                            peer_netns_fd=7, mtu=1450)
    assert req.msg_type == model.RTM_NEWLINK and req.flags == requests.CREATE
    assert req.flags & NLM_F_REQUEST and req.flags & NLM_F_ACK
    top = attrs(req.body, model.IFINFOMSG.size, len(req.body))
    assert cstr(top[model.IFLA_IFNAME]) == "pnab12" and u32(top[model.IFLA_MTU]) == 1450
    assert top[model.IFLA_ADDRESS].hex(":") == "02:00:00:00:00:01"
    info = attrs(top[model.IFLA_LINKINFO], 0, len(top[model.IFLA_LINKINFO]))
    assert cstr(info[model.IFLA_INFO_KIND]) == "veth"
    data = info[model.IFLA_INFO_DATA]
    peer = attrs(data, 0, len(data))[requests.VETH_INFO_PEER]
    assert peer[:model.IFINFOMSG.size] == bytes(model.IFINFOMSG.size)
    peer_attrs = attrs(peer, model.IFINFOMSG.size, len(peer))
    assert cstr(peer_attrs[model.IFLA_IFNAME]) == "eth0" and u32(peer_attrs[requests.IFLA_NET_NS_FD]) == 7
    assert peer_attrs[model.IFLA_ADDRESS].hex(":") == "02:00:00:00:00:02"
    assert u32(peer_attrs[model.IFLA_MTU]) == 1450


def test_set_link_changes_only_what_is_given() -> None:
    req = requests.set_link(9, flags=0, change=model.IFF_UP, master=0, name="pndel0")
    family, _type, index, flags, change = model.IFINFOMSG.unpack_from(req.body, 0)
    assert (family, index, flags, change) == (0, 9, 0, model.IFF_UP) and req.flags == requests.SET
    got = attrs(req.body, model.IFINFOMSG.size, len(req.body))
    assert sorted(got) == [model.IFLA_IFNAME, model.IFLA_MASTER] and u32(got[model.IFLA_MASTER]) == 0


def test_addresses_v4_carry_local_and_v6_does_not() -> None:
    v4 = requests.address(3, "10.1.0.5", 24, scope=253)
    assert model.IFADDRMSG.unpack_from(v4.body, 0) == (socket.AF_INET, 24, 0, 253, 3)
    got = attrs(v4.body, model.IFADDRMSG.size, len(v4.body))
    assert got[model.IFA_ADDRESS] == got[model.IFA_LOCAL] == socket.inet_aton("10.1.0.5")
    v6 = requests.address(3, "fd00::5", 64, flags=model.IFA_F_NODAD)
    got6 = attrs(v6.body, model.IFADDRMSG.size, len(v6.body))
    assert model.IFA_LOCAL not in got6 and u32(got6[model.IFA_FLAGS]) == model.IFA_F_NODAD
    gone = requests.address(3, "10.1.0.5", 24, delete=True)
    assert gone.msg_type == requests.RTM_DELADDR and gone.flags == requests.SET
    assert model.IFA_FLAGS not in attrs(gone.body, model.IFADDRMSG.size, len(gone.body))


def test_routes_are_static_unicast_and_big_tables_go_in_an_attribute() -> None:
    req = requests.route(socket.AF_INET, "10.6.0.0", 24, gateway="169.254.1.1", oif=4, table=1000, metric=5,
                         onlink=True)
    family, dst_len, _s, _t, table, proto, scope, kind, flags = model.RTMSG.unpack_from(req.body, 0)
    assert (family, dst_len, table, proto, scope, kind) == (socket.AF_INET, 24, 254, 4, 0, 1)
    assert flags == model.RTNH_F_ONLINK and req.flags == requests.CREATE
    got = attr_list(req.body, model.RTMSG.size, len(req.body))
    assert [t for t, _ in got] == [model.RTA_DST, model.RTA_GATEWAY, model.RTA_OIF, model.RTA_TABLE,
                                   model.RTA_PRIORITY]
    assert u32(dict(got)[model.RTA_TABLE]) == 1000
    default = requests.route(socket.AF_INET6, "::", 0, gateway="fe80::1", mode="replace")
    assert default.flags == requests.REPLACE
    assert model.RTA_DST not in attrs(default.body, model.RTMSG.size, len(default.body))
    gone = requests.route(socket.AF_INET, "10.6.0.0", 24, mode="delete")
    assert gone.msg_type == requests.RTM_DELROUTE and model.RTMSG.unpack_from(gone.body, 0)[5:8] == (0, 0, 0)


def test_neighbours_are_permanent() -> None:
    req = requests.neighbour(5, "10.0.0.9", "02:00:00:00:00:09")
    assert req.flags == requests.REPLACE
    assert model.NDMSG.unpack_from(req.body, 0) == (socket.AF_INET, 5, model.NUD_PERMANENT, 0, 0)
    got = attrs(req.body, model.NDMSG.size, len(req.body))
    assert got[model.NDA_LLADDR].hex(":") == "02:00:00:00:00:09"
    assert requests.neighbour(5, "fd00::9").msg_type == requests.RTM_DELNEIGH
