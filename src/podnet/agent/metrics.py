"""The agent's Prometheus metrics: sync latency by kind (full / incremental) observed as syncs
happen; objects, commits, failures and drift repairs read from the agent when scraped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class _StatusCollector(Collector):
    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        s = self.status()
        objects = GaugeMetricFamily("podnet_agent_objects", "Objects in the agent's model", labels=["kind"])
        for kind, n in sorted(s["objects"].items()):
            objects.add_metric([kind], n)
        yield objects
        yield GaugeMetricFamily("podnet_agent_synced", "1 once every source completed its first list",
                                value=int(s["synced"]))
        table = s["table"]
        for name, key, text in (
                ("podnet_dataplane_commits", "commits", "Transactions the policy table's writer applied"),
                ("podnet_dataplane_commit_failures", "failed_commits", "Commits the kernel refused"),
                ("podnet_dataplane_full_resyncs", "full_resyncs", "Whole-table rebuilds"),
                ("podnet_dataplane_drift_repairs", "drift_repairs",
                 "Differences found between the kernel's table and the union, repaired")):
            yield CounterMetricFamily(name, text, value=table[key])
        yield CounterMetricFamily("podnet_agent_sync_failures", "Policy syncs that failed",
                                  value=s["policy_sync"]["failed"])


class AgentMetrics:
    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry()
        self.sync_seconds = Histogram("podnet_agent_sync_seconds", "Sync latency (snapshot, compile, commit) "
                                      "by controller and kind", ["controller", "kind"], buckets=BUCKETS,
                                      registry=self.registry)
        self.registry.register(_StatusCollector(status))

    def observe(self, full: bool, seconds: float) -> None:
        self.sync_seconds.labels("policy", "full" if full else "incremental").observe(seconds)

    def observe_services(self, full: bool, seconds: float) -> None:
        self.sync_seconds.labels("services", "full" if full else "incremental").observe(seconds)

    def observe_egress(self, full: bool, seconds: float) -> None:
        self.sync_seconds.labels("egress", "full" if full else "incremental").observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
