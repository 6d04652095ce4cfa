"""This node's CNI network config, written from its Node's pod CIDR(s) (flannel's and kube-router's job).

Once the Node object of this node has ``spec.podCIDR(s)``, the conflist ``<conf dir>/10-podnet.conflist``
gets one host-local range set per pod CIDR (IPv4, IPv6 or both) for ``podnet-bridge`` or
``podnet-routed``. Until then there is no file, so the container runtime reports the network not
ready and no pod gets an address from a range the cluster did not give this node. The file is written
whole (temporary name, rename) and only when its content changes.

Decisions (and why):
  * Nothing happens before every source has listed everything once: a Node missing from a half-listed
    cluster is not a Node without a pod CIDR.
  * A Node without a pod CIDR (not assigned yet, deleted, briefly gone while a manifest file is
    rewritten) removes nothing. A config a previous run wrote keeps its range: a node's pod CIDR is
    set once and never changes in Kubernetes, so the range in the file can only turn wrong by the Node
    getting another CIDR, and that goes through the check below; removing the file would only stop
    new pods on a working node during a gap in what the agent sees.
  * A changed CIDR is refused while any address of the old ranges that the new ones do not cover is
    in use: a pod of this node (not finished, not host-network) has it, or a host-local reservation
    under the old config's ``dataDir`` holds it. The old file stays, the error names both CIDRs, is
    logged once, counted and shown in status, and the change is retried (pods leaving retry at once,
    reservations are looked at again every ``retry_seconds``). With nothing in use it is rewritten.
  * A range that overlaps another network's in the conf dir is refused the way ``podnet install``
    refuses it; one that host-local itself would refuse is never written.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from podnet.agent.loop import SyncLoop
from podnet.agent.model import IPAddress, IPNetwork
from podnet.agent.objects import Kind
from podnet.agent.store import Change, Store
from podnet.cni.args import validate_ifname
from podnet.cni.errors import CNIError
from podnet.cni.jsonio import load_json
from podnet.ipam.config import load_host_local, store_location
from podnet.ipam.dir_index import ip_from_name
from podnet.runtime import netconf_write as nw

log = logging.getLogger(__name__)
DEFAULT_CONF_DIR = "/etc/cni/net.d"
MODES = tuple(nw.PLUGIN_TYPES)
_HOST_LOCAL = ("podnet-host-local", "host-local")
_SHOWN = 5  # addresses named in a refusal


@dataclass(frozen=True)
class NodeConfigOptions:
    conf_dir: str = DEFAULT_CONF_DIR
    mode: str = "bridge"  # bridge | routed
    bridge: str = "podnet0"
    data_dir: str | None = None  # host-local's dataDir (None: its default)
    network: str = "podnet"
    conf_name: str = nw.CONF_NAME


class Refused(Exception):
    """The config is not written; the message says why. ``retry``: looking again may help."""

    def __init__(self, message: str, *, retry: bool, state: str = "failed") -> None:
        super().__init__(message)
        self.retry, self.state = retry, state


class NodeConfig(SyncLoop):
    thread_name = "podnet-cni-config"

    def __init__(self, store: Store, options: NodeConfigOptions, *, retry_seconds: float = 5.0) -> None:
        if options.mode not in MODES:
            raise ValueError(f"unknown CNI network {options.mode!r}: choose {' or '.join(MODES)}")
        if options.mode == "bridge":
            try:  # said now, not by every pod's ADD failing later
                validate_ifname(options.bridge)
            except CNIError as exc:
                raise ValueError(f"bridge name {options.bridge!r}: {exc.msg}") from None
        super().__init__(store, retry_seconds=retry_seconds)
        self.options = options
        self.path = os.path.join(options.conf_dir, options.conf_name)
        self.state = "waiting for the sources"
        self.error: str | None = None
        self.file_cidrs: list[str] = []
        self.node_cidrs: list[str] = []
        self.written_at: float | None = None
        self.writes = 0
        self.refusals = 0
        self._unsubscribe = store.subscribe(self._on_change)
        store.on_synced(self._wake)

    def _on_change(self, change: Change) -> None:
        if change.kind is Kind.NODE and change.key == self.store.node_name:
            self.request()
        elif change.kind is Kind.POD and self.state == "refused":
            self.request()  # a pod leaving may be what the refused change waits for

    def _wake(self) -> None:
        self.request()

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        self._unsubscribe()

    def status(self) -> dict[str, Any]:
        return {"path": self.path, "network": self.options.mode, "state": self.state,
                "pod_cidrs": self.file_cidrs, "node_pod_cidrs": self.node_cidrs,
                "written_at": self.written_at, "error": self.error, "writes": self.writes,
                "refusals": self.refusals}

    # ---- the sync ----

    def sync_once(self) -> bool:
        node = self.store.node(self.store.node_name)
        cidrs: tuple[IPNetwork, ...] = node.pod_cidrs if node is not None else ()
        self.node_cidrs = [str(c) for c in cidrs]
        try:
            current = self._read()
            self.file_cidrs = [str(s) for s in _subnets(current)]
            if not cidrs:
                self.state, self.error = "waiting for the Node's pod CIDR", None
                return True
            self._write(cidrs, current)
        except Refused as exc:
            self._refuse(str(exc), exc.state)
            return not exc.retry
        except OSError as exc:
            self._refuse(f"cannot write {self.path}: {exc.strerror or exc}", "failed")
            return False
        self.state, self.error = "current", None
        return True

    def _write(self, cidrs: Sequence[IPNetwork], current: bytes | None) -> None:
        o = self.options
        net = nw.PodNetwork(subnets=list(cidrs), mode=o.mode, name=o.network, bridge=o.bridge,
                            data_dir=o.data_dir)
        conf = nw.conflist(net)
        _check_ipam(conf, cidrs)
        data = nw.encode(conf)
        if data == current:
            if self.written_at is None:
                self.written_at = os.stat(self.path).st_mtime
            return
        if current is not None:
            self._check_unused(current, cidrs)
        try:
            nw.check_overlaps(data, o.conf_dir, self.path, "the node's pod CIDR cannot be used on this node")
        except nw.OverlapError as exc:
            raise Refused(str(exc), retry=True) from None
        os.makedirs(o.conf_dir, mode=0o755, exist_ok=True)
        state = nw.write_if_changed(self.path, data, 0o644)
        self.written_at, self.writes = time.time(), self.writes + 1
        self.file_cidrs = [str(c) for c in cidrs]
        log.info("%s %s for node %s: pod CIDR %s (%s)", state, self.path, self.store.node_name,
                 ", ".join(map(str, cidrs)), o.mode)

    def _check_unused(self, current: bytes, cidrs: Sequence[IPNetwork]) -> None:
        """Refused while an address of the old ranges that the new ones lose is in use."""
        old = _subnets(current)
        dropped = [s for s in old if s not in cidrs]
        if not dropped:
            return

        def lost(ip: IPAddress) -> bool:
            return any(ip in s for s in dropped) and not any(ip in c for c in cidrs)

        pods = [f"pod {p.namespace}/{p.name} {ip}" for p in self.store.local_pods()
                if not p.terminal and not p.host_network for ip in p.ips if lost(ip)]
        held = [f"reservation {where}" for ip, where in _reservations(current) if lost(ip)]
        in_use = pods + held
        if in_use:
            more = len(in_use) - _SHOWN
            shown = ", ".join(in_use[:_SHOWN]) + (f" and {more} more" if more > 0 else "")
            raise Refused(
                f"pod CIDR of node {self.store.node_name} changed from {', '.join(map(str, old))} to "
                f"{', '.join(map(str, cidrs))}, but addresses of the old range are in use ({shown}); "
                f"keeping {self.path} as it is until they are gone", retry=True, state="refused")

    def _refuse(self, message: str, state: str) -> None:
        if message != self.error:
            log.error("CNI config not written: %s", message)
            if state == "refused":
                self.refusals += 1
        self.state, self.error = state, message

    def _read(self) -> bytes | None:
        try:
            with open(self.path, "rb") as f:
                return f.read(nw.MAX_CONF + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            # Unreadable: whether a range of it is in use is unknown, so it is not replaced.
            raise Refused(f"cannot read {self.path}: {exc.strerror or exc}", retry=True) from None


def _parsed(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return load_json(data, "the current network config")
    except CNIError:
        return None  # garbage in podnet's own file: nothing there can be in use through it


def _subnets(data: bytes | None) -> list[nw.Subnet]:
    return list(dict.fromkeys(nw.subnets_of(_parsed(data))))


def _plugins(conf: Any) -> Iterable[dict[str, Any]]:
    if not isinstance(conf, dict):
        return []
    plugins = conf.get("plugins")
    if isinstance(plugins, list):
        return [{**p, "name": conf.get("name"), "cniVersion": conf.get("cniVersion")}
                for p in plugins if isinstance(p, dict)]
    return [conf]  # a single-plugin .conf


def _reservations(current: bytes) -> list[tuple[IPAddress, str]]:
    """Addresses host-local reserved under the current config (``<dataDir>/<network>/<ip>``)."""
    found: list[tuple[IPAddress, str]] = []
    for plugin in _plugins(_parsed(current)):
        ipam = plugin.get("ipam")
        if not isinstance(ipam, dict) or ipam.get("type") not in _HOST_LOCAL:
            continue
        try:
            data_dir, network = store_location(plugin)
            directory = os.path.join(data_dir, network)
            names = sorted(os.listdir(directory))
        except (CNIError, FileNotFoundError):
            continue
        except OSError as exc:
            # Unreadable: what it holds is unknown, so it may hold anything.
            raise Refused(f"cannot list IPAM reservations in {data_dir}: {exc.strerror or exc}",
                          retry=True) from None
        for name in names:
            ip = ip_from_name(name)
            if ip is not None:
                found.append((ip, os.path.join(directory, name)))
    return found


def _check_ipam(conf: dict[str, Any], cidrs: Sequence[IPNetwork]) -> None:
    """The config host-local would refuse is never written (a pod CIDR it cannot number)."""
    for plugin in _plugins(conf):
        try:
            load_host_local(plugin, [], str(conf["cniVersion"]))
        except CNIError as exc:
            raise Refused(f"pod CIDR {', '.join(map(str, cidrs))} cannot be a host-local range: {exc}",
                          retry=False) from None
