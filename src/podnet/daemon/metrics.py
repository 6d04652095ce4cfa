"""Prometheus metrics for the daemon (only when ``--metrics-addr`` is given).

``Metrics`` is the interface the server calls; ``NoMetrics`` does nothing and costs nothing, and
``PrometheusMetrics`` imports ``prometheus_client`` only when it is made. Besides request counts
and latency histograms per plugin and command, two collectors read state at scrape time:

* netlink dump counters from :data:`podnet.kernel.dump.DUMP_STATS` (attempts, interrupted dumps,
  retries, give-ups);
* addresses in use and capacity per host-local range set, for every network whose host-local
  configuration the daemon has seen (one directory listing per network under the store's lock).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, Protocol

from podnet.daemon.metrics_http import MetricsServer

# Plugin work is milliseconds; the buckets resolve 0.5 ms .. 10 s.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics(Protocol):
    def request(self, plugin: str, command: str, seconds: float, result: str) -> None: ...

    def refused(self, reason: str) -> None: ...

    def in_flight(self, delta: int) -> None: ...

    def saw_ipam(self, conf: dict[str, Any], cni_version: str) -> None: ...


class NoMetrics:
    def request(self, plugin: str, command: str, seconds: float, result: str) -> None:
        pass

    def refused(self, reason: str) -> None:
        pass

    def in_flight(self, delta: int) -> None:
        pass

    def saw_ipam(self, conf: dict[str, Any], cni_version: str) -> None:
        pass


def host_local_section(conf: dict[str, Any]) -> dict[str, Any] | None:
    """The configuration to read host-local ranges from: the plugin's own (podnet-host-local
    called directly) or a main plugin's ``ipam`` section of type podnet-host-local."""
    if conf.get("type") == "podnet-host-local" and isinstance(conf.get("ipam"), dict):
        return conf
    ipam = conf.get("ipam")
    if isinstance(ipam, dict) and ipam.get("type") == "podnet-host-local":
        return conf
    return None


class PrometheusMetrics:
    MAX_NETWORKS = 256  # bound the per-network state a stream of distinct names could grow

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self._latency = Histogram(
            "podnet_daemon_request_duration_seconds", "Time to serve one plugin call, by plugin and command",
            ["plugin", "command"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self._requests = Counter(
            "podnet_daemon_requests", "Plugin calls served, by plugin, command and result (ok/error)",
            ["plugin", "command", "result"], registry=self.registry)
        self._refused = Counter(
            "podnet_daemon_refused_requests", "Requests refused without running anything, by reason",
            ["reason"], registry=self.registry)
        self._in_flight = Gauge("podnet_daemon_requests_in_flight", "Plugin calls being served",
                                registry=self.registry)
        self._ipam_lock = threading.Lock()
        self._ipam: dict[str, tuple[dict[str, Any], str]] = {}
        self.registry.register(_DumpCollector())
        self.registry.register(_IpamCollector(self))

    def request(self, plugin: str, command: str, seconds: float, result: str) -> None:
        self._latency.labels(plugin, command).observe(seconds)
        self._requests.labels(plugin, command, result).inc()

    def refused(self, reason: str) -> None:
        self._refused.labels(reason).inc()

    def in_flight(self, delta: int) -> None:
        self._in_flight.inc(delta)

    def saw_ipam(self, conf: dict[str, Any], cni_version: str) -> None:
        section = host_local_section(conf)
        name = conf.get("name")
        if section is None or not isinstance(name, str):
            return
        with self._ipam_lock:
            if name in self._ipam or len(self._ipam) < self.MAX_NETWORKS:
                self._ipam[name] = (section, cni_version)

    def ipam_networks(self) -> list[tuple[str, dict[str, Any], str]]:
        with self._ipam_lock:
            return [(name, conf, version) for name, (conf, version) in sorted(self._ipam.items())]

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def serve(self, host: str, port: int) -> MetricsServer:
        """Serve ``/metrics`` from one thread with bounded connections (see metrics_http)."""
        return MetricsServer(self.render, host, port).start()


class _DumpCollector:
    _NAMES = {
        "dumps": "netlink dumps that returned a consistent snapshot",
        "attempts": "netlink dump requests sent to the kernel",
        "interrupted": "netlink dump attempts the kernel flagged as interrupted (NLM_F_DUMP_INTR/EINTR)",
        "retries": "netlink dump attempts repeated after an interruption",
        "gave_up": "netlink dumps whose every attempt was interrupted",
        "inconsistent_returned": "interrupted netlink dumps returned anyway (best effort asked)",
    }

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        from podnet.kernel import DUMP_STATS

        stats = DUMP_STATS.as_dict()
        for key, text in self._NAMES.items():
            yield CounterMetricFamily(f"podnet_netlink_dump_{key}", text, value=stats.get(key, 0))


class _IpamCollector:
    def __init__(self, owner: PrometheusMetrics) -> None:
        self.owner = owner

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from podnet.ipam import allocator
        from podnet.ipam.config import load_host_local
        from podnet.ipam.disk_store import DiskStore

        labels = ["network", "range_set"]
        used = GaugeMetricFamily("podnet_ipam_addresses_in_use",
                                 "Reserved addresses per host-local range set", labels=labels)
        cap = GaugeMetricFamily("podnet_ipam_addresses_capacity",
                                "Allocatable addresses per host-local range set", labels=labels)
        for name, conf, version in self.owner.ipam_networks():
            try:
                hl = load_host_local(conf, [], version)
                store = DiskStore(hl.data_dir, hl.name, create=False)
                if not store.exists():
                    continue
                counts = allocator.usage(store, hl.range_sets)
                for rs, (n_used, n_cap) in zip(hl.range_sets, counts, strict=True):
                    used.add_metric([name, str(rs)], n_used)
                    cap.add_metric([name, str(rs)], n_cap)
            except Exception:
                continue  # a config that no longer loads is not the scrape's problem
        yield used
        yield cap
