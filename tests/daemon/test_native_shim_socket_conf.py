"""The daemon's socket named in the network config reaches every call: a runtime's cleanup process
may run with a bare environment (podman's, started by conmon), and its DEL on a custom socket must
not silently run in-process. A real daemon in the node namespace, a real bridge pod; both shims."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from daemon_util import bridge_conf, host_veths, native_bin_dir

from cnienv import NodeDaemon
from nsutil import Netns, NetnsFactory
from podnet.daemon import protocol as p

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return native_bin_dir(tmp_path_factory.mktemp("cni") / "bin")


def served(daemon: NodeDaemon, command: str) -> list[dict[str, Any]]:
    return daemon.requests(command)


@pytest.mark.parametrize("shim", ["native", "python"])
def test_del_with_a_bare_environment_reaches_the_daemon_on_the_configs_socket(
        node: Netns, netns: NetnsFactory, tmp_path: Path, bin_dir: Path, shim: str) -> None:
    pod = netns("pod")
    custom = tmp_path / "custom" / "podnet.sock"
    daemon = NodeDaemon(node, custom, tmp_path / "daemon.log").start()
    try:
        conf = bridge_conf("sockconf", "br-sockc", "10.94.2.0/24", tmp_path / "ipam",
                           **{p.SOCKET_KEY: str(custom)})
        ids = {"CNI_CONTAINERID": "bare1", "CNI_IFNAME": "eth0", "CNI_PATH": str(bin_dir),
               "PODNET_LOCK_DIR": str(tmp_path)}
        # ADD as a runtime calls it, with its environment (and no PODNET_SOCKET either).
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "PODNET_"))}
        env.update(ids, CNI_COMMAND="ADD", CNI_NETNS=pod.path, PODNET_SHIM=shim)
        add = node.run([str(bin_dir / "podnet-bridge")], input=json.dumps(conf), env=env, check=False)
        assert add.returncode == 0, add.stdout + add.stderr
        # DEL as podman's cleanup process calls it: nothing in the environment but the CNI variables.
        # PODNET_LOCK_DIR is a test knob (no runtime sets it): kept so the locks stay in this test's
        # temporary directory, never the machine's /run/podnet.
        bare = {**ids, "CNI_COMMAND": "DEL", "CNI_NETNS": pod.path, "PODNET_SHIM": shim,
                "PODNET_LOCK_DIR": os.environ["PODNET_LOCK_DIR"]}
        delete = node.run([str(bin_dir / "podnet-bridge")], input=json.dumps(conf), env=bare, check=False)
        assert delete.returncode == 0, delete.stdout + delete.stderr
        assert [r["exit"] for r in served(daemon, "ADD")] == [0]
        assert [r["exit"] for r in served(daemon, "DEL")] == [0], daemon.log_text()
        assert host_veths(node) == []
    finally:
        assert daemon.stop() == 0
