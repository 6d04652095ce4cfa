"""The service table of ``podnet status``: for every service port in every family, each address the
proxy answers on (the ClusterIP, each ExternalIP, the NodePort) and what it does with a new
connection there: DNAT to one of its endpoints, ``reject`` (no usable endpoint anywhere) or
``drop`` (endpoints exist, but none here that a Local traffic policy may use).

Every row is read off the :class:`~podnet.agent.services.plan.PortPlan` the compiler builds its
maps from, key by key, and endpoints are never picked here: given the same objects, the table and
the compiled maps cannot disagree. (The agent builds it from the store's latest objects, which a
sync may not have committed yet.) ``podnet policy explain`` answers for one address in depth;
this is the node-wide overview.

Rows are plain JSON values (the agent's socket carries them); :func:`format_row` is their one-line
form for the terminal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from podnet.agent.model import EndpointSlice, Service, TrafficPolicy
from podnet.agent.services.endpoints import Target, index_slices
from podnet.agent.services.plan import PortPlan, proxied, service_plans

# An answer of the agent's socket is one line of at most 1 MiB (agent_notify.MAX_LINE): the table
# is cut well below it, by rows and by bytes, and each list of endpoints is cut to a few.
MAX_ROWS = 1000
MAX_BYTES = 512 * 1024
MAX_LISTED = 16
VERDICTS = ("dnat", "reject", "drop")


@dataclass(frozen=True)
class Table:
    rows: list[dict[str, Any]]
    truncated: int  # rows left out (limits reached)


def service_table(services: Iterable[Service], slices: Iterable[EndpointSlice], node_name: str, *,
                  max_rows: int = MAX_ROWS, max_bytes: int = MAX_BYTES,
                  max_listed: int = MAX_LISTED) -> Table:
    """The rows, sorted by service, port name, protocol and family. Only the services that make
    it into the table are planned: the ones after the cut are counted, not planned."""
    ordered = sorted((s for s in services if proxied(s)), key=lambda s: s.key)
    counts = [len(s.ports) * len(s.cluster_ips) for s in ordered]  # rows each, as service_plans makes
    # Services up to the one that reaches max_rows: only their slices are indexed, only they are planned.
    shown = next((i + 1 for i, total in enumerate(accumulate(counts)) if total >= max_rows), len(ordered))
    keys = {s.key for s in ordered[:shown]}
    index = index_slices(s for s in slices if (s.namespace, s.service) in keys)
    rows: list[dict[str, Any]] = []
    size, truncated, full = 0, sum(counts[shown:]), False
    for service, count in zip(ordered[:shown], counts, strict=False):
        if full:  # a limit was reached: the rest are counted
            truncated += count
            continue
        made = sorted((port_row(p, max_listed) for p in service_plans(service, index, node_name)),
                      key=_row_order)
        for i, row in enumerate(made):
            size += len(json.dumps(row))
            if len(rows) >= max_rows or size > max_bytes:
                full, truncated = True, truncated + len(made) - i
                break
            rows.append(row)
    return Table(rows, truncated)


def _row_order(row: dict[str, Any]) -> tuple[str, str, int]:
    return (row["port"], row["protocol"], row["family"])


def port_row(p: PortPlan, max_listed: int = MAX_LISTED) -> dict[str, Any]:
    """One service port in one family, as the plan maps its keys."""
    addresses = [entry for _, entry in sorted(_addresses(p), key=lambda pair: pair[0])]
    found = {a["verdict"] for a in addresses}
    cluster = p.policy_chains.get(p.base, ())
    local = p.policy_chains.get(f"{p.base}-local", ())
    service = p.service
    return {
        "service": f"{service.namespace}/{service.name}",
        "port": p.port.name,
        "protocol": p.port.protocol.value,
        "family": p.family,
        "addresses": addresses,
        # One verdict for the whole port, or "partial": some addresses DNAT, others drop (a Local
        # policy on one path, the Cluster policy on the other); each address says its own.
        "verdict": found.pop() if len(found) == 1 else "partial",
        "cluster": [endpoint_text(t) for t in cluster[:max_listed]],
        "cluster_total": len(cluster),
        "local": [endpoint_text(t) for t in local[:max_listed]],
        "local_total": len(local),
        "affinity_seconds": service.session_affinity_seconds,
        "internal_traffic_policy": service.internal_traffic_policy.value,
        "external_traffic_policy": service.external_traffic_policy.value,
    }


def _addresses(p: PortPlan) -> Iterator[tuple[tuple[int, int], dict[str, Any]]]:
    """(order, entry) for every key the plan puts in a map: the ClusterIP, the ExternalIPs in the
    Service's order, the NodePort."""
    keyed = [*((k, "dnat", c) for k, c in p.vips.items()),
             *((k, v, None) for k, v in p.no_endpoint.items()),
             *((k, "dnat", c) for k, c in p.nodeports.items()),
             *((k, v, None) for k, v in p.no_endpoint_nodeports.items())]
    externals = [str(ip) for ip in p.service.external_ips]
    for key, verdict, chain in keyed:
        parts = key.split(" . ")  # "address . proto . port" or, for a NodePort, "proto . port"
        port = int(parts[-1])
        if len(parts) == 2:
            order, kind, text = (2, 0), "NodePort", f"node:{port}"
        else:
            host = parts[0]
            external = host in externals and host != str(p.cluster_ip)
            order = (1, externals.index(host)) if external else (0, 0)
            kind = "ExternalIP" if external else "ClusterIP"
            text = f"[{host}]:{port}" if p.family == 6 else f"{host}:{port}"
        yield order, _entry(p, text, kind, verdict, chain)


def _entry(p: PortPlan, text: str, kind: str, verdict: str, chain: str | None) -> dict[str, Any]:
    policy = p.service.internal_traffic_policy if kind == "ClusterIP" else p.service.external_traffic_policy
    out: dict[str, Any] = {"address": text, "kind": kind, "policy": policy.value, "verdict": verdict}
    if chain is not None:
        # External traffic under a Local policy: clients from outside get this node's endpoints
        # (pods and the node itself take the Cluster list, see plan.py).
        local = chain == f"{p.base}-local" or (chain == p.external_chain and p.external_local)
        out["picks_from"] = "local" if local else "cluster"
    return out


def endpoint_text(t: Target) -> str:
    return f"[{t.address}]:{t.port}" if t.address.version == 6 else f"{t.address}:{t.port}"


# ---- the terminal's form ----

SHOWN_ENDPOINTS = 8


def format_row(row: dict[str, Any]) -> str:
    """``default/web http tcp  10.96.0.10:80, node:30080 -> 10.244.0.2:8080 (local: ...)``; the
    addresses that do something else (a drop under a Local policy) follow after ``;``."""
    head = f"{row['service']} {row['port'] or '-'} {row['protocol'].lower()}"
    if row["family"] == 6:
        head += " ipv6"
    groups: list[str] = []
    for verdict in VERDICTS:
        mine = [a for a in row["addresses"] if a["verdict"] == verdict]
        if mine:
            shown = ", ".join(_shown_address(a) for a in mine)
            groups.append(f"{shown} -> {_destination(row, verdict, mine)}")
    line = f"{head}  " + "; ".join(groups)
    if row["affinity_seconds"]:
        line += f"  [ClientIP affinity {row['affinity_seconds']}s]"
    return line


def _shown_address(a: dict[str, Any]) -> str:
    text: str = a["address"]
    return f"{text} (Local)" if a["policy"] == TrafficPolicy.LOCAL.value and a["verdict"] == "dnat" else text


def _destination(row: dict[str, Any], verdict: str, addresses: list[dict[str, Any]]) -> str:
    if verdict == "reject":
        return "reject (no endpoints)"
    if verdict == "drop":
        return "drop (endpoints elsewhere, none here for the Local policy)"
    local = _endpoints(row, "local")
    if not row["cluster_total"]:
        return f"local: {local}"  # only the Local list is compiled (internal Local, no external path)
    cluster = _endpoints(row, "cluster")
    return f"{cluster} (local: {local})" if any(a["picks_from"] == "local" for a in addresses) else cluster


def _endpoints(row: dict[str, Any], which: str) -> str:
    listed: list[str] = row[which][:SHOWN_ENDPOINTS]
    more = row[f"{which}_total"] - len(listed)
    return ", ".join(listed) + (f", +{more} more" if more > 0 else "") if listed else "none"
