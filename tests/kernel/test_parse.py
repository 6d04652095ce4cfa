"""Decoder unit tests on rtnetlink replies captured from a real kernel (no root needed)."""

from __future__ import annotations

import errno
import socket
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from podnet.kernel import model, wire

CAPTURE = Path(__file__).with_name("rtnl_capture.txt")
PARSERS: dict[str, Any] = {
    "link": model.parse_link,
    "addr": model.parse_address,
    "route": model.parse_route,
    "neigh": model.parse_neighbour,
    "rule": model.parse_rule,
}

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="capture is little-endian")


def captured(kind: str) -> list[bytes]:
    out = []
    for line in CAPTURE.read_text().splitlines():
        if line and not line.startswith("#") and line.split()[0] == kind:
            out.append(bytes.fromhex(line.split()[1]))
    return out


def decode(kind: str) -> list[Any]:
    """Decode like the dump path does: header walk, then the type's parser on the payload."""
    items = []
    for buf in captured(kind):
        (hdr,) = list(wire.messages(buf))
        item = PARSERS[kind](buf, hdr.start, hdr.end)
        if item is not None:
            items.append(item)
    return items


def by(items: list[Any], **match: Any) -> Any:
    found = [x for x in items if all(getattr(x, k) == v for k, v in match.items())]
    assert len(found) == 1, f"{match}: {found}"
    return found[0]


def test_links() -> None:
    links = decode("link")
    assert [link.name for link in links] == ["lo", "eth0", "hveth", "br0"]
    lo = by(links, name="lo")
    assert lo.index == 1 and lo.kind is None and lo.mtu == 65536 and lo.up
    hveth = by(links, name="hveth")
    assert hveth.kind == "veth" and hveth.mac == "02:11:22:33:44:55" and hveth.mtu == 1450
    assert hveth.alias == "pod x" and hveth.master == 4 and hveth.slave_kind == "bridge"
    assert hveth.peer_index == 2 and hveth.link_netnsid is None and hveth.up
    eth0 = by(links, name="eth0")
    assert eth0.peer_index == 3 and not eth0.up
    br0 = by(links, name="br0")
    assert br0.kind == "bridge" and br0.vlan_filtering is False and br0.master is None


def test_addresses() -> None:
    addrs = decode("addr")
    assert [a.cidr for a in addrs] == ["127.0.0.1/8", "10.9.0.1/32", "10.1.0.1/24", "::1/128", "fd00:1::1/64"]
    lo4 = by(addrs, address="127.0.0.1")
    assert lo4.scope == model.RT_SCOPE_HOST and lo4.label == "lo" and lo4.index == 1
    ptp = by(addrs, address="10.9.0.1")
    assert ptp.peer == "10.9.0.2" and ptp.label == "eth0"
    v6 = by(addrs, address="fd00:1::1")
    assert v6.family == socket.AF_INET6 and v6.flags & model.IFA_F_NODAD and v6.flags & model.IFA_F_PERMANENT
    assert str(v6.interface.network) == "fd00:1::/64"


def test_routes() -> None:
    routes = decode("route")
    default = by(routes, dst=None)
    assert default.table == 100 and default.gateway == "169.254.1.1" and default.onlink
    assert default.destination == "0.0.0.0/0" and default.oif == 4
    via = by(routes, dst="10.2.0.0")
    assert via.gateway == "10.1.0.254" and via.priority == 77 and via.table == model.RT_TABLE_MAIN
    connected = by(routes, dst="10.1.0.0", table=model.RT_TABLE_MAIN)
    assert connected.scope == model.RT_SCOPE_LINK and connected.prefsrc == "10.1.0.1"
    assert connected.gateway is None
    ecmp = by(routes, dst="10.3.0.0")
    hops = [(h.gateway, h.oif, h.weight) for h in ecmp.multipath]
    assert hops == [("10.1.0.253", 4, 2), ("10.1.0.252", 4, 1)]
    assert {r.table for r in routes} == {100, model.RT_TABLE_MAIN, model.RT_TABLE_LOCAL}


def test_neighbours() -> None:
    neigh = by(decode("neigh"), dst="10.1.0.9")
    assert neigh.lladdr == "02:aa:bb:cc:dd:ee" and neigh.permanent and neigh.index == 4


def test_rules() -> None:
    rules = decode("rule")
    assert [r.priority for r in rules] == [0, 100, 101, 32766, 32767]
    src = by(rules, priority=100)
    assert src.src == "10.1.0.0" and src.src_len == 24 and src.table == 100
    mark = by(rules, priority=101)
    assert mark.fwmark == 0x10 and mark.fwmask == 0xFF and mark.iifname == "br0" and not mark.invert


def test_messages_walks_a_packed_buffer() -> None:
    bufs = captured("addr")
    # The kernel pads each message to 4 bytes inside a receive buffer.
    packed = b"".join(b + b"\0" * (wire.align(len(b)) - len(b)) for b in bufs)
    hdrs = list(wire.messages(packed))
    assert len(hdrs) == len(bufs)
    assert all(h.type == model.RTM_NEWADDR and h.flags & wire.NLM_F_MULTI for h in hdrs)


def test_truncated_buffer_is_an_error() -> None:
    buf = captured("link")[0]
    with pytest.raises(wire.WireError):
        list(wire.messages(buf[:-8]))


def test_bad_attribute_length_is_an_error() -> None:
    with pytest.raises(wire.WireError):
        wire.attrs(b"\x02\x00\x01\x00", 0, 4)


def test_unknown_families_are_skipped() -> None:
    ipmr = model.RTMSG.pack(128, 0, 0, 0, 254, 0, 0, 1, 0)  # RTNL_FAMILY_IPMR route
    assert model.parse_route(ipmr, 0, len(ipmr)) is None
    bridge_fdb = model.NDMSG.pack(socket.AF_BRIDGE, 3, 0x80, 0, 0)
    assert model.parse_neighbour(bridge_fdb, 0, len(bridge_fdb)) is None


def test_done_with_dump_intr_and_error_payloads() -> None:
    done = wire.message(wire.NLMSG_DONE, wire.NLM_F_MULTI | wire.NLM_F_DUMP_INTR, 7, struct.pack("=i", 0))
    (hdr,) = list(wire.messages(done))
    assert hdr.flags & wire.NLM_F_DUMP_INTR and hdr.seq == 7
    assert wire.error_of(done, hdr) == (0, "")
    failed = wire.message(wire.NLMSG_DONE, wire.NLM_F_MULTI, 7, struct.pack("=i", -errno.EINTR))
    assert wire.error_of(failed, next(wire.messages(failed)))[0] == errno.EINTR


def test_error_with_extended_ack_message() -> None:
    # NETLINK_CAP_ACK: only the request header is echoed (NLM_F_CAPPED), then the TLVs.
    echoed = wire.NLMSG_HDR.pack(28, model.RTM_GETNEIGH, 0x301, 7, 0)
    body = struct.pack("=i", -errno.EINVAL) + echoed + wire.attr(wire.NLMSGERR_ATTR_MSG, b"Invalid values\0")
    msg = wire.message(wire.NLMSG_ERROR, wire.NLM_F_CAPPED | wire.NLM_F_ACK_TLVS, 7, body)
    assert wire.error_of(msg, next(wire.messages(msg))) == (errno.EINVAL, "Invalid values")


def test_error_echoing_the_whole_request() -> None:
    request = wire.message(model.RTM_GETADDR, 0x301, 7, model.address_request())
    body = struct.pack("=i", -errno.EPERM) + request + wire.attr(wire.NLMSGERR_ATTR_MSG, b"nope\0")
    msg = wire.message(wire.NLMSG_ERROR, wire.NLM_F_ACK_TLVS, 7, body)
    assert wire.error_of(msg, next(wire.messages(msg))) == (errno.EPERM, "nope")


def test_request_bodies_have_only_filterable_fields() -> None:
    assert model.address_request(socket.AF_INET, 5) == model.IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, 5)
    neigh = model.neighbour_request(socket.AF_INET, 5)
    assert neigh[: model.NDMSG.size] == model.NDMSG.pack(socket.AF_INET, 0, 0, 0, 0)
    assert wire.attrs(neigh, model.NDMSG.size, len(neigh))[model.NDA_IFINDEX] == (5).to_bytes(4, "little")
    link = model.link_request(name="eth0")
    assert wire.cstr(wire.attrs(link, model.IFINFOMSG.size, len(link))[model.IFLA_IFNAME]) == "eth0"
