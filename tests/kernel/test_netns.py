"""Namespace handling on the real kernel: open without creating, enter, run, sockets, /proc."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from nsutil import NETNS_DIR, Netns, NetnsFactory, unique_name
from podnet.kernel import (
    InvalidArgument,
    Netlink,
    NetnsHandle,
    NetnsNotFound,
    entered,
    netns_exists,
    random_mac,
    read_sysctl,
    run_in_netns,
    socket_in_netns,
)

pytestmark = pytest.mark.root


def my_netns() -> tuple[int, int]:
    with NetnsHandle.current() as h:
        return h.identity()


def test_open_by_name_and_by_path_is_the_same_namespace(node: Netns) -> None:
    with NetnsHandle.open(node.name) as by_name, NetnsHandle.open(node.path) as by_path:
        assert by_name.identity() == by_path.identity() != my_netns()
        assert by_name.path == node.path


@pytest.mark.parametrize("by_path", [False, True], ids=["name", "path"])
def test_missing_namespace_raises_and_creates_nothing(by_path: bool, node: Netns) -> None:
    name = unique_name("missing")
    ref = f"{NETNS_DIR}/{name}" if by_path else name
    with pytest.raises(NetnsNotFound) as info:
        NetnsHandle.open(ref)
    assert info.value.code == 3
    with pytest.raises(NetnsNotFound):
        Netlink(ref)
    with pytest.raises(NetnsNotFound):
        read_sysctl("net.ipv4.ip_forward", ref)
    with pytest.raises(NetnsNotFound):
        run_in_netns(ref, os.getpid)
    # A veth whose peer namespace is missing: refused before anything is created.
    with Netlink(node.name) as nl, pytest.raises(NetnsNotFound):
        nl.add_veth("vmiss", "eth0", mac=random_mac(), peer_mac=random_mac(), peer_netns=ref)
    assert "vmiss" not in node.links()
    # Nothing was created: not the namespace, not even an empty file (pyroute2's O_CREAT).
    assert not netns_exists(ref)
    assert name not in os.listdir(NETNS_DIR)
    assert not Path(NETNS_DIR, name).exists()


@pytest.mark.parametrize("ref", ["", "a/b", "..", "."])
def test_bad_names_are_refused(ref: str) -> None:
    with pytest.raises(NetnsNotFound):
        NetnsHandle.open(ref)


def test_files_that_are_not_network_namespaces_are_refused(tmp_path: Path) -> None:
    # What a crashed runtime can leave under /run/netns: a plain file, the bind mount gone.
    stale = tmp_path / "stale"
    stale.write_text("")
    with pytest.raises(NetnsNotFound, match="not a namespace"):
        NetnsHandle.open(str(stale))
    with pytest.raises(NetnsNotFound, match="not a network namespace"):
        NetnsHandle.open("/proc/self/ns/uts")


def test_entered_switches_the_calling_thread_and_back(node: Netns) -> None:
    home = my_netns()
    with NetnsHandle.open(node.name) as target:
        with entered(target):
            assert my_netns() == target.identity()
        assert my_netns() == home
        with pytest.raises(RuntimeError), entered(target):
            raise RuntimeError("boom")
        assert my_netns() == home


def test_run_in_netns_never_moves_the_caller(node: Netns) -> None:
    home = my_netns()
    inside = run_in_netns(node.name, my_netns)
    assert inside != home and my_netns() == home
    with pytest.raises(ZeroDivisionError):
        run_in_netns(node.name, lambda: 1 // 0)
    assert my_netns() == home


def test_socket_stays_in_the_namespace_it_was_made_in(node: Netns) -> None:
    node.run(["ip", "addr", "add", "10.77.0.1/32", "dev", "lo"])
    sock = socket_in_netns(node.name, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("10.77.0.1", 0))  # only possible where that address exists
    finally:
        sock.close()
    plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with plain, pytest.raises(OSError):
        plain.bind(("10.77.0.1", 0))


def test_opening_sockets_needs_no_fork(node: Netns) -> None:
    start = time.perf_counter()
    for _ in range(20):
        socket_in_netns(node.name, socket.AF_NETLINK, socket.SOCK_RAW, 0).close()
    per_socket = (time.perf_counter() - start) / 20
    assert per_socket < 0.004, f"{per_socket * 1000:.2f} ms per socket"  # pyroute2's fork: ~8 ms


def test_proc_semantics_for_threads_in_another_namespace(node: Netns) -> None:
    """Documents what netns.py relies on: /proc/sys/net and /proc/thread-self/net follow
    the thread; /proc/self/net follows the main thread; processes inherit the thread's."""
    node.run(["ip", "link", "add", "pnmark0", "type", "veth", "peer", "name", "pnmark1"])
    node.run(["sysctl", "-qw", "net.ipv4.conf.pnmark0.forwarding=1"])

    def look() -> dict[str, object]:
        return {
            "sys": os.path.exists("/proc/sys/net/ipv4/conf/pnmark0"),
            "forwarding": Path("/proc/sys/net/ipv4/conf/pnmark0/forwarding").read_text().strip(),
            "thread-self": "pnmark0" in Path("/proc/thread-self/net/dev").read_text(),
            "self": "pnmark0" in Path("/proc/self/net/dev").read_text(),
            "child": "pnmark0" in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout,
        }

    seen = run_in_netns(node.name, look)
    assert seen == {"sys": True, "forwarding": "1", "thread-self": True, "self": False, "child": True}
    assert not os.path.exists("/proc/sys/net/ipv4/conf/pnmark0")  # the caller still sees its own


def test_a_session_keeps_its_namespace_alive(netns: NetnsFactory) -> None:
    ns = netns("gone")
    nl = Netlink(ns.name)
    try:
        subprocess.run(["ip", "netns", "del", ns.name], check=True)
        assert [link.name for link in nl.links()] == ["lo"]  # still answers: it holds an fd
    finally:
        nl.close()


def test_sysctl_refuses_host_wide_keys_inside_a_namespace(node: Netns) -> None:
    with pytest.raises(InvalidArgument):
        read_sysctl("kernel.hostname", node.name)


def test_handles_from_another_thread(node: Netns) -> None:
    # Handles are plain fds: usable from any thread.
    with NetnsHandle.open(node.name) as h:
        box: list[tuple[int, int]] = []
        t = threading.Thread(target=lambda: box.append(run_in_netns(h, my_netns)))
        t.start()
        t.join()
        assert box == [h.identity()]
