"""``podnet agent``: sources -> store -> policy sync -> the policy table's writer, plus the agent's
socket (admission, status, explain) and metrics.

The agent runs in the node's network namespace (the host's, on a real node). Its table outlives it:
stopping the agent leaves every pod's isolation in force, and the next agent adopts the table in
one transaction (see :mod:`podnet.dataplane.writer`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from podnet.agent import admission_rules, tables
from podnet.agent.admission import AdmissionServer, parse_admit
from podnet.agent.egress import OWNER as EGRESS_OWNER
from podnet.agent.egress import EgressSync
from podnet.agent.loop import SyncLoop
from podnet.agent.model import IPNetwork
from podnet.agent.nodeconf import NodeConfig, NodeConfigOptions
from podnet.agent.policy.explain import ExplainError, explain, parse_port
from podnet.agent.policy.inputs import PolicyInputs
from podnet.agent.routes import RouteSync, RoutingOptions
from podnet.agent.service_sync import ServiceSync, conntrack_cleaner
from podnet.agent.services import OWNER as SERVICES_OWNER
from podnet.agent.services.explain import explain_service
from podnet.agent.services.status import service_table
from podnet.agent.store import Store
from podnet.agent.sync import POLICY_OWNER as SHARED_POLICY_OWNER
from podnet.agent.sync import PolicySync
from podnet.dataplane.backends import Nft, backend
from podnet.dataplane.writer import TableWriter
from podnet.kernel.errors import KernelError
from podnet.kernel.sysctl import read_sysctl, write_sysctl

log = logging.getLogger(__name__)
POLICY_TABLE = tables.TABLE  # every agent controller writes this one table
DEFAULT_SOCKET = "/run/podnet/agent.sock"


class Source(Protocol):
    def start(self) -> None: ...

    def stop(self, timeout: float = 5.0) -> None: ...

    def status(self) -> Any: ...


@dataclass
class AgentConfig:
    node_name: str | None = None
    manifests: str | None = None
    kubeconfig: str | None = None
    in_cluster: bool = False
    pod_ranges: Sequence[IPNetwork] = ()
    socket_path: str = DEFAULT_SOCKET
    verify_period: float = 60.0
    admit_timeout: float = 1.5
    cni_config: NodeConfigOptions | None = None  # write this node's CNI config (off: None)
    routing: RoutingOptions | None = None  # route other nodes' pod CIDRs (off: None)
    masquerade: bool = True  # pod traffic leaving the cluster goes out with the node's address
    cluster_cidrs: Sequence[IPNetwork] = ()  # inside the cluster besides the Nodes' pod CIDRs
    sources: list[Source] = field(default_factory=list)  # made by build_sources unless given


class Agent:
    def __init__(self, config: AgentConfig, *, nft: Nft | None = None) -> None:
        self.config = config
        self.store = Store(config.node_name)
        self.sources: list[Source] = config.sources or build_sources(config, self.store)
        self.writer = TableWriter(nft or backend(), "inet", POLICY_TABLE, verify_period=config.verify_period)
        # Adopting the table rebuilds it: only from every controller's part, so nothing the
        # previous agent left in force (isolation, service rules) is missing for a moment.
        self.writer.require(SHARED_POLICY_OWNER, admission_rules.OWNER, SERVICES_OWNER)
        self.sync = PolicySync(self.store, self.writer, pod_ranges=config.pod_ranges)
        self.services = ServiceSync(self.store, self.writer, pod_ranges=config.pod_ranges,
                                    clean=conntrack_cleaner() if nft is None else None)
        self.nodeconf = NodeConfig(self.store, config.cni_config) if config.cni_config else None
        self.routes = RouteSync(self.store, config.routing) if config.routing else None
        self.egress = EgressSync(self.store, self.writer, pod_ranges=config.pod_ranges,
                                 cluster_cidrs=config.cluster_cidrs) if config.masquerade else None
        if self.egress is not None:
            self.writer.require(EGRESS_OWNER)
        self.started_at = time.time()
        self.server = AdmissionServer(config.socket_path, {
            "admit": self._admit, "release": self._release, "status": self._status,
            "explain": self._explain})
        self._stopped = threading.Event()
        self._rows_cache: tuple[int, dict[str, Any]] | None = None  # (store generation, service rows)
        self.bridge_filtering = "not checked yet"

    def start(self) -> None:
        """Start everything, or (on an error: a missing manifest directory, a socket path that
        cannot be bound) stop what was started and raise."""
        self.bridge_filtering = ensure_bridge_filtering()
        if self.bridge_filtering != "on":
            log.error("pods on one bridge are not filtered by policy: %s", self.bridge_filtering)
        try:
            self.sync.start()
            self.services.start()
            if self.nodeconf is not None:
                self.nodeconf.start()
            if self.routes is not None:
                self.routes.start()
            if self.egress is not None:
                self.egress.start()
            for source in self.sources:
                source.start()
            self.server.start()
        except BaseException:
            self.stop()
            raise
        log.info("agent started on node %s", self.store.node_name)

    def stop(self) -> None:
        self.server.stop()
        for source in self.sources:
            source.stop()
        self.sync.stop()
        self.services.stop()
        if self.nodeconf is not None:
            self.nodeconf.stop()
        if self.routes is not None:
            self.routes.stop()
        if self.egress is not None:
            self.egress.stop()
        self._stopped.set()

    # ---- socket handlers ----

    def _admit(self, request: dict[str, Any]) -> dict[str, Any]:
        pod = parse_admit(request)
        classified = self.sync.admit(pod, self.config.admit_timeout)
        return {"ok": True, "classified": classified}

    def _release(self, request: dict[str, Any]) -> dict[str, Any]:
        cid = request.get("containerID")
        if isinstance(cid, str) and cid:
            self.sync.release(cid)
        return {"ok": True}

    def _explain(self, request: dict[str, Any]) -> dict[str, Any]:
        src, dst, port = (request.get(k) for k in ("src", "dst", "port"))
        if not (isinstance(src, str) and isinstance(dst, str) and isinstance(port, str)):
            return {"ok": False, "error": "bad request: src, dst and port are required strings"}
        snap = self.store.snapshot()
        inputs = PolicyInputs.of(snap.namespaces, snap.pods.values(), snap.policies.values(),
                                 self.store.node_name)
        try:
            number, protocol = parse_port(port)
            # A service address: its endpoints, each with the verdict policy gives after DNAT.
            text = explain_service(snap.services.values(), snap.endpoint_slices.values(),
                                   self.store.node_name, dst, number, protocol,
                                   lambda ip, p: explain(inputs, src, ip, p))
            return {"ok": True, "text": text if text is not None else explain(inputs, src, dst, port)}
        except ExplainError as exc:
            return {"ok": False, "error": str(exc)}

    def _status(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "status": self.status(service_rows=True)}

    def status(self, *, service_rows: bool = False) -> dict[str, Any]:
        """The agent's state; with ``service_rows`` (the socket's answer, not every metrics
        scrape) also each service address and what the proxy does with it."""
        stats, wm = self.sync.stats, self.writer.metrics
        return {
            "node": self.store.node_name,
            "synced": self.store.synced,
            "pending_lists": sorted(f"{s}/{k.name}" for s, k in self.store.pending_lists()),
            "objects": self.store.counts(),
            "generation": self.store.generation,  # the model's; equal to applied: the node is current
            "generation_applied": self._applied(),
            "policy_sync": {"syncs": stats.syncs, "full": stats.full_syncs, "failed": stats.failed_syncs,
                            "last_seconds": round(stats.last_sync_seconds, 6),
                            "last_at": stats.last_sync_at, "last_error": stats.last_error},
            "table": {"name": f"inet {POLICY_TABLE}", "commits": wm.commits,
                      "failed_commits": wm.failed_commits,
                      "full_resyncs": wm.full_resyncs, "drift_repairs": wm.drift_repairs,
                      "verifies": wm.verifies, "last_error": wm.last_error},
            "invalid_policies": self._invalid_policies(),
            "services": {"proxied": self.services.stats.services, "endpoints": self.services.stats.endpoints,
                         "syncs": self.services.stats.syncs, "failed": self.services.stats.failed_syncs,
                         "last_seconds": round(self.services.stats.last_sync_seconds, 6),
                         "last_error": self.services.stats.last_error,
                         "udp_flows_cleared": self.services.stats.udp_flows_cleared,
                         **(self._service_rows() if service_rows else {})},
            "pod_ranges": [str(r) for r in self.sync.ranges],  # --pod-cidr, else its Node's
            "bridge_filtering": self.bridge_filtering,
            "cni_config": self.nodeconf.status() if self.nodeconf is not None else None,
            "routing": self.routes.status() if self.routes is not None else None,
            "egress_masquerade": self.egress.status() if self.egress is not None else None,
            "crashes": self._crashes(),
            "sources": {type(s).__name__: s.status() for s in self.sources},
            "uptime_seconds": round(time.time() - self.started_at, 1),
        }

    def _loops(self) -> list[SyncLoop]:
        return [loop for loop in (self.sync, self.services, self.nodeconf, self.routes, self.egress)
                if loop is not None]

    def _crashes(self) -> dict[str, int]:
        """Controller steps that raised (a bug: logged with its traceback, the step retried)."""
        return {loop.thread_name: loop.crashes for loop in self._loops() if loop.crashes}

    def _applied(self) -> int:
        """The store generation every controller has put in force (each counts as current when
        no change to what it acts on came after its last sync): equal to ``generation`` when the
        kernel holds the whole model."""
        return min(loop.current_up_to() for loop in self._loops())

    def _service_rows(self) -> dict[str, Any]:
        """From the store the proxy compiles (its current model: while a sync is under way the
        kernel may still lag it, as ``generation`` does ``generation_applied``)."""
        cached = self._rows_cache
        if cached is not None and cached[0] == self.store.generation:  # the same model, the same rows
            return cached[1]
        snap = self.store.snapshot()
        table = service_table(snap.services.values(), snap.endpoint_slices.values(), self.store.node_name)
        rows = {"table": table.rows, "table_truncated": table.truncated}
        self._rows_cache = (snap.generation, rows)
        return rows

    def _invalid_policies(self) -> dict[str, str]:
        """Each fails closed for the pods it selects; the others keep working."""
        return {f"{ns}/{name}": p.error for (ns, name), p in sorted(self.store.policies().items())
                if p.error is not None}


BRIDGE_FILTER_KEYS = ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables")


def ensure_bridge_filtering() -> str:
    """Policy sees traffic between two pods on one bridge only through br_netfilter (see
    ``agent/policy/compile.py``): both sysctls of this namespace on. "on", or why not."""
    try:
        for key in BRIDGE_FILTER_KEYS:
            if read_sysctl(key) != "1":
                write_sysctl(key, 1)
    except KernelError as exc:
        return f"unavailable ({exc}); load br_netfilter"
    return "on"


def build_sources(config: AgentConfig, store: Store) -> list[Source]:
    """Every source is made (and so registered with the store) before any starts."""
    sources: list[Source] = []
    if config.manifests:
        from podnet.agent.sources.manifests import ManifestSource

        sources.append(ManifestSource(store, config.manifests))
    if config.kubeconfig or config.in_cluster:
        from podnet.agent.sources.kube import KubeSource, load_config

        sources.append(KubeSource(store, load_config(config.kubeconfig)))
    if not sources:
        raise ValueError("no source: give --manifests DIR, --kubeconfig PATH or --in-cluster")
    return sources
