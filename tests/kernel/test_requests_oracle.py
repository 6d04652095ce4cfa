"""podnet's request encoders against pyroute2, the test-only oracle: for the same call, the same
message type, flags and body, byte for byte (the header's sequence number aside).

pyroute2 is driven for real and its bytes captured on their way to the kernel, inside a
throw-away namespace (the kernel's answer does not matter: this one refuses the VLAN requests).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pyroute2 import IPRoute

from nsutil import Netns
from podnet.kernel import requests, socket_in_netns
from podnet.kernel.wire import NLMSG_HDR, messages

pytestmark = pytest.mark.root


class Capturing(socket.socket):
    """A netlink socket that keeps a copy of every request it sends."""

    sent: list[bytes]

    def send(self, data: Any, *args: Any) -> int:
        self.sent.append(bytes(data))
        return super().send(data, *args)

    def sendto(self, data: Any, *args: Any) -> int:
        self.sent.append(bytes(data))
        return super().sendto(data, *args)


@pytest.fixture
def pyroute2_sends(node: Netns) -> Iterator[Callable[[Callable[[Any], object]], bytes]]:
    """``pyroute2_sends(lambda ipr: ipr.link(...))``: the one message pyroute2 sent for the call."""
    raw = socket_in_netns(node.name, socket.AF_NETLINK, socket.SOCK_DGRAM, 0)
    sock = Capturing(socket.AF_NETLINK, socket.SOCK_DGRAM, 0, fileno=os.dup(raw.fileno()))
    raw.close()
    sock.sent = []
    ipr = IPRoute(use_socket=sock, groups=0)

    def capture(call: Callable[[Any], object]) -> bytes:
        sock.sent.clear()
        with contextlib.suppress(Exception):  # the kernel's answer is not the point
            call(ipr)
        assert len(sock.sent) == 1, [m.hex() for m in sock.sent]
        return sock.sent[0]

    try:
        yield capture
    finally:
        ipr.close()
        sock.close()


def same(ours: requests.Request, theirs: bytes) -> None:
    hdr = next(messages(theirs))
    assert (ours.msg_type, ours.flags) == (hdr.type, hdr.flags)
    assert ours.body.hex() == theirs[NLMSG_HDR.size:].hex()


def test_bridge_created_with_vlan_filtering(pyroute2_sends: Callable[..., bytes]) -> None:
    sent = pyroute2_sends(lambda ipr: ipr.link("add", ifname="brv", kind="bridge", br_vlan_filtering=1,
                                               address="02:00:00:00:00:01", mtu=1400))
    same(requests.add_bridge("brv", mac="02:00:00:00:00:01", mtu=1400, vlan_filtering=True), sent)


@pytest.mark.parametrize("on", [True, False])
def test_bridge_vlan_filtering_switched(pyroute2_sends: Callable[..., bytes], on: bool) -> None:
    sent = pyroute2_sends(lambda ipr: ipr.link("set", index=7, kind="bridge", br_vlan_filtering=int(on)))
    same(requests.set_bridge_vlan_filtering(7, on), sent)


@pytest.mark.parametrize(("pvid", "untagged"), [(True, True), (False, False), (True, False)])
def test_bridge_vlan_added_to_a_port(pyroute2_sends: Callable[..., bytes], pvid: bool,
                                     untagged: bool) -> None:
    flags = [f for f, on in (("pvid", pvid), ("untagged", untagged)) if on]
    sent = pyroute2_sends(lambda ipr: ipr.vlan_filter("add", index=9, vlan_info={"vid": 100, "flags": flags}))
    same(requests.bridge_vlan(9, 100, pvid=pvid, untagged=untagged), sent)


def test_bridge_vlan_removed_from_a_port(pyroute2_sends: Callable[..., bytes]) -> None:
    sent = pyroute2_sends(lambda ipr: ipr.vlan_filter("del", index=9, vlan_info={"vid": 1}))
    same(requests.bridge_vlan(9, 1, delete=True), sent)


def test_plain_bridge_matches_too(pyroute2_sends: Callable[..., bytes]) -> None:
    same(requests.add_bridge("brp", mtu=1500),
         pyroute2_sends(lambda ipr: ipr.link("add", ifname="brp", kind="bridge", mtu=1500)))
