"""The node's own network namespace is never a pod's (containernetworking/plugins issue 714).

Each plugin runs inside a "node" namespace this test made, with ``CNI_NETNS`` naming that same node
namespace three ways: ``/proc/self/ns/net``, ``/proc/<pid>/ns/net`` of another process in the node,
and the node's bind-mounted name under /run/netns. ADD and CHECK are refused (code 4, naming the
path) before anything is made; DEL succeeds without touching the node as if it were the pod, and
still removes what an ADD made on the host side. The ``node`` tests run in-process and through a
daemon (tests/plugins/conftest.py); the ``skel.run`` tests call the skel in a process in the node.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from cnienv import REPO
from nsutil import Netns, NetnsFactory

pytestmark = pytest.mark.root

VENV_BIN = REPO / ".venv" / "bin"
REFS = ("self", "pid", "name")
SUBNET = "10.97.0.0/24"


def _ref(node: Netns, how: str) -> str:
    if how == "self":
        return "/proc/self/ns/net"
    if how == "pid":
        holder = node.popen(["sleep", "600"])
        return f"/proc/{holder.pid}/ns/net"
    return node.path


def _env(command: str, netns: str, cid: str = "own1", ifname: str = "eth0") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}  # keeps PODNET_SOCKET
    env.update(CNI_COMMAND=command, CNI_CONTAINERID=cid, CNI_IFNAME=ifname, CNI_PATH=str(VENV_BIN))
    if netns:
        env["CNI_NETNS"] = netns
    return env


def _run(node: Netns, plugin: str, command: str, conf: dict[str, Any], netns: str,
         **kw: str) -> tuple[int, Any]:
    proc = node.run([str(VENV_BIN / plugin)], check=False, input=json.dumps(conf),
                    env=_env(command, netns, **kw), timeout=60)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc.returncode, (json.loads(proc.stdout) if proc.stdout.strip() else None)


def _lo_up(ns: Netns) -> bool:
    return "UP" in json.loads(ns.run(["ip", "-j", "link", "show", "lo"]).stdout)[0]["flags"]


def _node_state(ns: Netns) -> tuple[list[str], list[str], list[str]]:
    """(links, global addresses, routes) of a namespace."""
    links = sorted(x["ifname"] for x in json.loads(ns.run(["ip", "-j", "link", "show"]).stdout))
    addrs = sorted(f"{a['local']}/{a['prefixlen']}"
                   for x in json.loads(ns.run(["ip", "-j", "addr", "show"]).stdout)
                   for a in x.get("addr_info", []) if a.get("scope") == "global")
    routes = [json.dumps(r, sort_keys=True) for fam in ("-4", "-6")
              for r in json.loads(ns.run(["ip", "-j", fam, "route", "show", "table", "all"]).stdout or "[]")
              if r.get("table") != "local" and not r.get("dst", "").startswith(("fe80:", "ff00:"))]
    return links, addrs, routes


def _bridge(ipam_dir: Path) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "ownbr", "type": "podnet-bridge", "bridge": "br-own",
            "isDefaultGateway": True, "ipMasq": False,
            "ipam": {"type": "podnet-host-local", "dataDir": str(ipam_dir), "ranges": [[{"subnet": SUBNET}]]}}


def _routed(ipam_dir: Path) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "ownrt", "type": "podnet-routed",
            "ipam": {"type": "podnet-host-local", "dataDir": str(ipam_dir), "ranges": [[{"subnet": SUBNET}]]}}


def _reserved(ipam_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(ipam_dir)) for p in ipam_dir.rglob("*") if p.is_file()
                  and not p.name.startswith(("lock", "last_reserved")))


def _refused(out: Any, path: str) -> None:
    assert out is not None and out["code"] == 4, out
    assert path in out["msg"] and "own network namespace" in out["msg"], out


@pytest.mark.parametrize("how", REFS)
def test_loopback_never_touches_the_node(node: Netns, how: str) -> None:
    ref = _ref(node, how)
    conf = {"cniVersion": "1.1.0", "name": "ownlo", "type": "podnet-loopback"}
    node.run(["ip", "link", "set", "lo", "up"])
    assert _run(node, "podnet-loopback", "DEL", conf, ref, ifname="lo") == (0, None)
    assert _lo_up(node), "loopback DEL set the node's own lo down"
    for command in ("ADD", "CHECK"):
        code, out = _run(node, "podnet-loopback", command, conf, ref, ifname="lo")
        assert code == 1
        _refused(out, ref)
    assert _lo_up(node)


@pytest.mark.parametrize("plugin", ["podnet-bridge", "podnet-routed"])
@pytest.mark.parametrize("how", REFS)
def test_add_into_the_node_is_refused_before_anything_is_made(node: Netns, tmp_path: Path, how: str,
                                                               plugin: str) -> None:
    ref = _ref(node, how)
    ipam_dir = tmp_path / "ipam"
    conf = _bridge(ipam_dir) if plugin == "podnet-bridge" else _routed(ipam_dir)
    before = _node_state(node)
    code, out = _run(node, plugin, "ADD", conf, ref)
    assert code == 1
    _refused(out, ref)
    assert _node_state(node) == before  # no bridge, veth, address or (default) route
    assert _reserved(ipam_dir) == []
    # DEL of that attachment succeeds and still leaves the node alone.
    assert _run(node, plugin, "DEL", conf, ref)[0] == 0
    assert _node_state(node) == before


@pytest.mark.parametrize("how", REFS)
def test_del_naming_the_node_still_removes_the_host_side(node: Netns, netns: NetnsFactory, tmp_path: Path,
                                                         how: str) -> None:
    """A runtime whose pod namespace path now resolves to the node (a reused PID, a bind mount
    replaced) must still be able to DEL: the host end and the IP go, the node is not the pod."""
    ref = _ref(node, how)
    ipam_dir = tmp_path / "ipam"
    conf = _bridge(ipam_dir)
    before = _node_state(node)
    pod = netns("pod")
    code, out = _run(node, "podnet-bridge", "ADD", conf, pod.path, cid="real1")
    assert code == 0, out
    assert len(_reserved(ipam_dir)) == 1
    code, out = _run(node, "podnet-bridge", "DEL", conf, ref, cid="real1")
    assert code == 0, out
    # The bridge stays (DEL leaves it); the veth and the address are gone.
    assert before[0] == ["lo"] and _node_state(node)[0] == ["br-own", "lo"]
    assert _reserved(ipam_dir) == []
    assert _node_state(pod)[0] == ["lo"]
    assert _lo_up(node)


_SKEL_SCRIPT = r"""
import io, json, sys, threading
from podnet.cni import skel
from podnet.daemon import registry
from podnet.kernel.netns import entered

plugin = registry.load("podnet-loopback")
conf = json.dumps({"cniVersion": "1.1.0", "name": "ownlo", "type": "podnet-loopback"}).encode()

def call(command, netns):
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "own1", "CNI_IFNAME": "lo", "CNI_PATH": "/nowhere",
           "CNI_NETNS": netns}
    out = io.StringIO()
    code = skel.run(plugin, env=env, stdin=io.BytesIO(conf), stdout=out, stderr=io.StringIO())
    return [code, json.loads(out.getvalue()) if out.getvalue().strip() else None]

results = {}
for ref in sys.argv[2:]:
    results["main " + ref] = [call(c, ref) for c in ("DEL", "ADD", "CHECK")]

def in_other():
    # A worker thread inside another namespace: its own namespace and the process's are both refused.
    with entered(sys.argv[1]):
        for ref in ("/proc/thread-self/ns/net", "/proc/self/ns/net"):
            results["thread " + ref] = [call(c, ref) for c in ("DEL", "ADD", "CHECK")]

t = threading.Thread(target=in_other)
t.start()
t.join()
print(json.dumps(results))
"""


@pytest.mark.inprocess_only
def test_skel_refuses_the_callers_namespace_in_thread_and_process(node: Netns, netns: NetnsFactory) -> None:
    other = netns("other")
    refs = [_ref(node, how) for how in REFS]
    proc = node.run([sys.executable, "-c", _SKEL_SCRIPT, other.path, *refs], check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    for key, (dele, add, check) in results.items():
        assert dele == [0, None], key
        path = key.split(" ", 1)[1]
        for code, out in (add, check):
            assert code == 1, key
            _refused(out, path)
    assert _lo_up(node) and _lo_up(other)


def test_a_pod_namespace_is_still_served(node: Netns, netns: NetnsFactory) -> None:
    """The negative control: the same calls on a namespace that is not the caller's work."""
    pod = netns("pod")
    conf = {"cniVersion": "1.1.0", "name": "ownlo", "type": "podnet-loopback"}
    assert _run(node, "podnet-loopback", "ADD", conf, pod.path, ifname="lo")[0] == 0
    assert _run(node, "podnet-loopback", "DEL", conf, pod.path, ifname="lo") == (0, None)
    assert not _lo_up(pod)

