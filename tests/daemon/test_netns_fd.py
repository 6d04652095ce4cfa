"""The pod's namespace reaches the daemon as a file descriptor, never as a path the daemon resolves.

A caller in another mount namespace than the daemon's (podman; a daemon in a container) names
its pod by a path only it can see. Here the caller runs in a private mount namespace where the
pod's namespace is bind-mounted on a tmpfs the daemon cannot see: ADD, CHECK and DEL through the
daemon must act on that pod, and the result's ``sandbox`` stays the caller's path. Both shims.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from daemon_util import bridge_conf, host_veths, native_bin_dir

from cnienv import NodeDaemon
from nsutil import Netns, NetnsFactory

pytestmark = pytest.mark.root

SHIMS = ("native", "python")
# The caller's private view: a tmpfs on HIDDEN (invisible to the daemon), the pod's namespace
# bind-mounted at HIDDEN/ns, then the plugin run in the node's network namespace.
PRIVATE = ('mount -t tmpfs podnet-test "$1" && touch "$1/ns" && mount --bind "$2" "$1/ns" && shift 2 '
           '&& exec "$@"')


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return native_bin_dir(tmp_path_factory.mktemp("cni") / "bin")


@pytest.fixture
def daemon(node: Netns, tmp_path: Path) -> Any:
    d = NodeDaemon(node, tmp_path / "podnet.sock", tmp_path / "daemon.log").start()
    yield d
    d.kill()


def private_call(node: Netns, pod: Netns, hidden: Path, plugin: Path, env: dict[str, str],
                 conf: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", PRIVATE, "sh", str(hidden), pod.path,
            *node.exec_argv([str(plugin)])]
    proc = subprocess.run(argv, input=json.dumps(conf), env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def env_for(daemon: NodeDaemon, bin_dir: Path, shim: str, command: str, netns: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "PODNET_"))}
    env.update(PODNET_SOCKET=str(daemon.socket), PODNET_SHIM=shim, PODNET_LOCK_DIR=str(daemon.socket.parent),
               CNI_COMMAND=command, CNI_CONTAINERID="mntns1", CNI_IFNAME="eth0", CNI_PATH=str(bin_dir))
    if netns:
        env["CNI_NETNS"] = netns
    return env


def served(daemon: NodeDaemon, command: str) -> list[dict[str, Any]]:
    return daemon.requests(command)


@pytest.mark.parametrize("shim", SHIMS)
def test_add_check_del_from_another_mount_namespace_go_through_the_daemon(
        node: Netns, netns: NetnsFactory, tmp_path: Path, bin_dir: Path, daemon: NodeDaemon,
        shim: str) -> None:
    pod = netns("pod")
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    seen_by_caller = str(hidden / "ns")
    conf = bridge_conf("mntns", "br-mnt", "10.94.0.0/24", tmp_path / "ipam")
    plugin = bin_dir / "podnet-bridge"

    add = private_call(node, pod, hidden, plugin, env_for(daemon, bin_dir, shim, "ADD", seen_by_caller), conf)
    assert add.returncode == 0, add.stdout + add.stderr
    result = json.loads(add.stdout)
    assert [i.get("sandbox") for i in result["interfaces"] if i["name"] == "eth0"] == [seen_by_caller]
    assert "eth0" in pod.links()
    assert [r["exit"] for r in served(daemon, "ADD")] == [0]  # the daemon did it, not a fallback

    check = private_call(node, pod, hidden, plugin, env_for(daemon, bin_dir, shim, "CHECK", seen_by_caller),
                         {**conf, "prevResult": result})
    assert check.returncode == 0, check.stdout + check.stderr
    assert [r["exit"] for r in served(daemon, "CHECK")] == [0]

    delete = private_call(node, pod, hidden, plugin, env_for(daemon, bin_dir, shim, "DEL", seen_by_caller),
                          conf)
    assert delete.returncode == 0, delete.stdout + delete.stderr
    assert [r["exit"] for r in served(daemon, "DEL")] == [0]
    assert "eth0" not in pod.links() and host_veths(node) == []


@pytest.mark.parametrize("shim", SHIMS)
def test_del_with_the_netns_gone_goes_through_the_daemon_without_one(
        node: Netns, netns: NetnsFactory, tmp_path: Path, bin_dir: Path, daemon: NodeDaemon,
        shim: str) -> None:
    pod = netns("pod")
    conf = bridge_conf("gone", "br-gone", "10.94.1.0/24", tmp_path / "ipam")
    plugin = bin_dir / "podnet-bridge"
    add = node.run([str(plugin)], input=json.dumps(conf), env=env_for(daemon, bin_dir, shim, "ADD", pod.path),
                   check=False)
    assert add.returncode == 0, add.stdout + add.stderr
    gone = str(tmp_path / "no-such-netns")
    delete = node.run([str(plugin)], input=json.dumps(conf), env=env_for(daemon, bin_dir, shim, "DEL", gone),
                      check=False)
    assert delete.returncode == 0, delete.stdout + delete.stderr
    assert [r["exit"] for r in served(daemon, "DEL")] == [0]
    assert host_veths(node) == [] and not list((tmp_path / "ipam" / "gone").glob("10.*"))


# A raw client in the node's namespace: one request (CHECK of podnet-loopback) with the given fds.
RAW_CLIENT = r"""
import array, json, os, socket, sys
from podnet.daemon import protocol as p
sock_path, netns, kinds, scratch = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4]
fds = []
for kind in filter(None, kinds):
    if kind == "fifo":
        os.mkfifo(scratch + "/fifo")  # never under /run/netns: `ip` opens every file there
        fds.append(os.open(scratch + "/fifo", os.O_RDWR))
    elif kind == "file":
        fds.append(os.open(sys.executable, os.O_RDONLY))
    else:
        fds.append(os.open(netns, os.O_RDONLY))
env = [b"CNI_COMMAND=ADD", b"CNI_CONTAINERID=raw1", b"CNI_IFNAME=lo", b"CNI_PATH=/nowhere",
       b"CNI_NETNS=" + netns.encode()]
conf = json.dumps({"cniVersion": "1.1.0", "name": "raw", "type": "podnet-loopback"}).encode()
frame = p.encode_request(b"podnet-loopback", conf, env)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sock_path)
anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
sent = s.sendmsg([frame], anc)
if sent < len(frame):  # an empty send after the answer came and the daemon closed is EPIPE
    s.sendall(frame[sent:])
buf = b""
while chunk := s.recv(1 << 16):
    buf += chunk
kind, code, out, err = p.decode_response(buf[p.HEADER_SIZE:])
print(json.dumps({"kind": kind.decode(), "code": code, "out": out.decode(), "err": err.decode()}))
"""


@pytest.mark.parametrize(("fds", "answer"), [
    ("", "refused"),  # ADD with a path and no fd: the daemon never looks the path up
    ("fifo", "refused"),  # not a namespace: checked without ever opening it for reading
    ("file", "refused"),
    ("netns,netns", "refused"),  # one fd, no more
    ("netns", "ran"),
])
def test_the_daemon_checks_what_it_is_sent(node: Netns, netns: NetnsFactory, tmp_path: Path,
                                           daemon: NodeDaemon, fds: str, answer: str) -> None:
    pod = netns("pod")
    pod.run(["ip", "link", "set", "lo", "down"])
    proc = node.run([sys.executable, "-c", RAW_CLIENT, str(daemon.socket), pod.path, fds, str(tmp_path)],
                    timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr + daemon.log_text()
    got = json.loads(proc.stdout)
    assert got["kind"] == answer, got
    if answer == "ran":
        assert got["code"] == 0 and json.loads(got["out"])["interfaces"][0]["sandbox"] == pod.path
        assert "UP" in pod.run(["ip", "link", "show", "lo"]).stdout
    else:
        assert "lo" in pod.links() and "LOWER_UP" not in pod.run(["ip", "link", "show", "lo"]).stdout
    assert daemon.proc is not None and daemon.proc.poll() is None


@pytest.mark.parametrize("shim", SHIMS)
def test_a_fifo_as_cni_netns_never_blocks_a_shim(tmp_path: Path, bin_dir: Path, shim: str) -> None:
    fifo = tmp_path / "netns.fifo"
    os.mkfifo(fifo)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "PODNET_"))}
    env.update(PODNET_SOCKET=str(tmp_path / "none.sock"), PODNET_SHIM=shim, PODNET_LOCK_DIR=str(tmp_path),
               CNI_COMMAND="ADD", CNI_CONTAINERID="fifo1", CNI_IFNAME="lo", CNI_PATH=str(bin_dir),
               CNI_NETNS=str(fifo))
    conf = {"cniVersion": "1.1.0", "name": "fifo", "type": "podnet-loopback"}
    proc = subprocess.run([str(bin_dir / "podnet-loopback")], input=json.dumps(conf), env=env,
                          capture_output=True, text=True, timeout=30, check=False)
    err = json.loads(proc.stdout)
    assert proc.returncode == 1 and err["code"] == 3 and "FIFO" in err["msg"], err
