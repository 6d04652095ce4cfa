"""podnet-routed refuses bad input with the right CNI code and a message naming the culprit, and a
refused or failed ADD leaves nothing half-built (no veth, no host route, no IP reservation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from routed_util import (
    add_ok,
    assert_nothing_left,
    host_local,
    host_pod_routes,
    host_veths,
    ip_files,
    plain,
    routed_conf,
    run_plugin,
    with_prev,
)

from nsutil import Netns, NetnsFactory

pytestmark = pytest.mark.root

NET = "routed-bad"


def _fails(node: Netns, conf: dict[str, Any], pod: Netns | None, code: int, *needles: str,
           cid: str = "bad", **kw: Any) -> dict[str, Any]:
    rc, err = run_plugin(node, "ADD", conf, cid, pod, **kw)
    assert rc == 1 and isinstance(err, dict), err
    assert err["code"] == code, err
    text = f"{err['msg']} {err.get('details', '')}"
    for needle in needles:
        assert needle in text, (needle, err)
    return err


def _untouched(node: Netns, data_dir: Path, pod: Netns | None = None) -> None:
    assert_nothing_left(node, data_dir, NET, [pod] if pod is not None else [])


BAD_IPAM: list[tuple[dict[str, Any], int, list[str]]] = [
    ({"ranges": [[{"subnet": "10.92.0.0/33"}]]}, 7, ["10.92.0.0/33"]),
    ({"ranges": [[{"subnet": "10.92.0.0/24", "rangeStart": "10.93.0.5"}]]}, 7, ["10.93.0.5"]),
    ({"ranges": [[{"subnet": "not-a-subnet"}]]}, 7, ["not-a-subnet"]),
]
BAD_PLUGIN: list[tuple[dict[str, Any], int, list[str]]] = [
    ({"ipMasq": True}, 2, ["ipMasq"]),
    ({"ipMasq": "yes"}, 7, ["ipMasq"]),
    ({"mtu": 20}, 7, ["mtu", "20"]),
    ({"mtu": "1500"}, 7, ["mtu"]),
    ({"runtimeConfig": {"mac": "01:00:5e:00:00:01"}}, 7, ["runtimeConfig.mac", "01:00:5e:00:00:01"]),
    ({"runtimeConfig": {"mac": "zz:00:00:00:00:01"}}, 7, ["zz:00:00:00:00:01"]),
    ({"dns": {"nameservers": "10.0.0.1"}}, 7, ["dns"]),
]


def test_invalid_config(node: Netns, netns: NetnsFactory, tmp_path: Path) -> None:
    """Invalid subnets and ranges (IPAM's code 7), then the plugin's own keys."""
    pod = netns("pod")
    for ipam_extra, code, needles in BAD_IPAM:
        conf = routed_conf(NET, {"type": "podnet-host-local", "dataDir": str(tmp_path), **ipam_extra})
        _fails(node, conf, pod, code, *needles)
        _untouched(node, tmp_path, pod)
    for extra, code, needles in BAD_PLUGIN:
        conf = routed_conf(NET, host_local(tmp_path, "10.92.0.0/24"), **extra)
        _fails(node, conf, pod, code, *needles)
        _untouched(node, tmp_path, pod)


def test_bad_mac_in_cni_args_and_missing_ipam(node: Netns, netns: NetnsFactory, tmp_path: Path) -> None:
    pod = netns("pod")
    conf = routed_conf(NET, host_local(tmp_path, "10.92.0.0/24"))
    # CNI_ARGS is the runtime's input: code 4, as in podnet-bridge (one MAC parser for both).
    _fails(node, conf, pod, 4, "CNI_ARGS MAC", "nope", cni_args="MAC=nope")
    _fails(node, {k: v for k, v in conf.items() if k != "ipam"}, pod, 7, "ipam")
    _fails(node, conf, None, 3, "/run/netns/no-such-pod", netns="/run/netns/no-such-pod")
    _untouched(node, tmp_path, pod)


def test_exhausted_range_and_taken_address(node: Netns, netns: NetnsFactory, tmp_path: Path) -> None:
    pods = [netns("pod") for _ in range(3)]
    ipam = host_local(tmp_path, "10.92.0.0/29")
    ipam["ranges"][0][0].update(rangeStart="10.92.0.2", rangeEnd="10.92.0.3")
    conf = routed_conf(NET, ipam, version="1.1.0")
    first = add_ok(node, conf, "p0", pods[0])
    taken = plain(first["ips"][0]["address"])
    # A requested address held by another attachment: named, with its owner.
    _fails(node, conf, pods[1], 999, taken, "p0", cid="p1", cni_args=f"IP={taken}")
    assert list(ip_files(tmp_path, NET).values()) == ["p0"] and len(host_veths(node)) == 1
    add_ok(node, conf, "p1", pods[1])
    # Exhausted: the range set is named; STATUS says so with code 50.
    _fails(node, conf, pods[2], 999, "10.92.0.2-10.92.0.3", cid="p2")
    rc, err = run_plugin(node, "STATUS", conf)
    assert rc == 1 and err["code"] == 50 and "10.92.0.2-10.92.0.3" in err["msg"], err
    assert len(host_veths(node)) == 2 and "eth0" not in pods[2].links()
    assert sorted(ip_files(tmp_path, NET).values()) == ["p0", "p1"]
    for cid, pod in (("p0", pods[0]), ("p1", pods[1])):
        assert run_plugin(node, "DEL", conf, cid, pod)[0] == 0
    assert run_plugin(node, "STATUS", conf)[0] == 0
    _untouched(node, tmp_path)


def test_existing_ifname_is_refused_before_anything_is_reserved(node: Netns, netns: NetnsFactory,
                                                                 tmp_path: Path) -> None:
    pod = netns("pod")
    pod.run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other0"])
    before = pod.run(["ip", "-o", "link", "show", "eth0"]).stdout
    conf = routed_conf(NET, host_local(tmp_path, "10.92.0.0/24"))
    _fails(node, conf, pod, 4, "eth0", "already exists")
    assert pod.run(["ip", "-o", "link", "show", "eth0"]).stdout == before
    assert host_veths(node) == [] and ip_files(tmp_path, NET) == {}
    # The runtime's DEL after the failed ADD must not touch the interface it does not own.
    assert run_plugin(node, "DEL", conf, "bad", pod)[0] == 0
    assert pod.run(["ip", "-o", "link", "show", "eth0"]).stdout == before


def test_failure_after_the_veth_rolls_everything_back(node: Netns, netns: NetnsFactory,
                                                      tmp_path: Path) -> None:
    """A second routed attachment in the same pod fails late (its gateway route already exists):
    the new veth, its host route and its address all go; the first attachment keeps working."""
    pod, peer = netns("pod"), netns("pod")
    conf = routed_conf(NET, host_local(tmp_path, "10.92.0.0/24"))
    first = add_ok(node, conf, "p0", pod)
    other = add_ok(node, conf, "p1", peer)
    err = _fails(node, conf, pod, 999, "169.254.1.1", cid="p0", ifname="eth1")
    assert "eth1" not in pod.links(), err
    assert sorted(ip_files(tmp_path, NET).values()) == ["p0", "p1"]
    assert len(host_veths(node)) == 2 and len(host_pod_routes(node)) == 2
    assert pod.ping(plain(other["ips"][0]["address"]))
    assert run_plugin(node, "CHECK", with_prev(conf, first), "p0", pod)[0] == 0
    for cid, p in (("p0", pod), ("p1", peer)):
        assert run_plugin(node, "DEL", conf, cid, p)[0] == 0
    _untouched(node, tmp_path, pod)


def test_check_without_prev_result_and_del_without_anything(node: Netns, netns: NetnsFactory,
                                                            tmp_path: Path) -> None:
    pod = netns("pod")
    conf = routed_conf(NET, host_local(tmp_path, "10.92.0.0/24"))
    rc, err = run_plugin(node, "CHECK", conf, "nothing", pod)
    assert rc == 1 and err["code"] == 7 and "prevResult" in err["msg"], err
    # DEL of an attachment that never existed, without a namespace: success, nothing created.
    assert run_plugin(node, "DEL", conf, "nothing", netns="")[0] == 0
    _untouched(node, tmp_path, pod)
