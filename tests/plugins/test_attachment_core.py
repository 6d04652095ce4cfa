"""The attachment core's logic without root: rollback (undo on failure only, failures reported on
the skel's stream, never on sys.stderr, never hiding the ADD's own error) and GC's keep decisions
for veth names and nftables owners (whole containers, cut aliases, other networks)."""

from __future__ import annotations

import io

import pytest

from podnet.cni import skel
from podnet.cni.attachments import ValidAttachments
from podnet.cni.errors import CNIError
from podnet.kernel.model import Link
from podnet.plugins import attachment
from podnet.plugins.identity import attachment_alias, host_veth_name, owner


def _args(stream: io.StringIO) -> skel.CmdArgs:
    return skel.CmdArgs(command="ADD", container_id="cid", netns="", ifname="eth0", args=[], path=[],
                        stdin_data=b"", conf={"name": "net"}, cni_version="1.0.0", stderr=stream)


def test_rollback_reports_on_the_skels_stream(capsys: pytest.CaptureFixture[str]) -> None:
    stream, done = io.StringIO(), []

    def broken() -> None:
        raise OSError("device busy")

    with pytest.raises(CNIError, match="the ADD's own error"), \
            attachment.rollback(_args(stream), "podnet-test") as undo:
        undo.push("first step", done.append, "first")
        undo.push("second step", broken)
        undo.push("third step", done.append, "third")
        raise CNIError("the ADD's own error")
    assert done == ["third", "first"]  # newest first, and a failing step does not stop the others
    assert stream.getvalue() == "podnet-test: rollback: second step failed: device busy\n"
    assert capsys.readouterr().err == ""


def test_no_rollback_on_success() -> None:
    done: list[str] = []
    with attachment.rollback(_args(io.StringIO()), "podnet-test") as undo:
        undo.push("step", done.append, "undone")
    assert done == []


def _veth(network: str, cid: str, ifname: str, alias: bool = True) -> Link:
    return Link(index=1, name=host_veth_name(network, cid, ifname), kind="veth", flags=0, mtu=1500, mac=None,
                master=None, peer_index=None, link_netnsid=None, operstate=0, slave_kind=None,
                vlan_filtering=None, alias=attachment_alias(network, cid, ifname) if alias else None)


def test_gc_keeps_whole_containers_by_recomputed_names() -> None:
    long_cid = "L" * 255  # its alias is cut: only the recomputed name identifies it
    veths = [_veth("net", long_cid, "eth0"), _veth("net", long_cid, "net1"), _veth("net", "gone", "eth0"),
             _veth("net", "exact", "eth0"), _veth("net", "exact", "eth1"),
             _veth("net", "noalias", "eth0", alias=False)]
    valid = ValidAttachments.of([(long_cid, ""), ("exact", "eth0"), ("noalias", "")])
    kept = attachment.Kept.of("net", valid, veths)
    assert {v.name for v in veths if v.name in kept.names} == {
        veths[0].name, veths[1].name, veths[3].name, veths[5].name}


def test_gc_owner_decisions() -> None:
    long_cid = "L" * 200  # a hashed owner string
    valid = ValidAttachments.of([(long_cid, ""), ("exact", "eth0"), ("whole", "")])
    kept = attachment.Kept.of("net", valid, [_veth("net", long_cid, "eth0")])
    assert not kept.stale_owner(owner("net", long_cid, "eth0"))
    assert kept.stale_owner(owner("net", "L" * 201, "eth0"))
    assert not kept.stale_owner(owner("net", "exact", "eth0"))
    assert kept.stale_owner(owner("net", "exact", "eth1"))
    assert not kept.stale_owner(owner("net", "whole", "anything"))
    assert not kept.stale_owner(owner("other", "gone", "eth0"))  # another network's
    assert kept.stale_owner(owner("net", "gone", "eth0"))
