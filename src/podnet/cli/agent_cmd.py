"""``podnet agent``, ``podnet status`` and ``podnet policy explain``."""

from __future__ import annotations

import argparse
import ipaddress
import json
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from podnet.cli.daemon_cmd import parse_addr, seconds

if TYPE_CHECKING:
    from podnet.agent.nodeconf import NodeConfigOptions
    from podnet.agent.routes import RoutingOptions

AGENT_SOCKET = "/run/podnet/agent.sock"
DAEMON_SOCKET = "/run/podnet/podnet.sock"
CNI_CONF_DIR = "/etc/cni/net.d"

SERVICE_ROWS = 50

AGENT_HELP = """\
Run the node agent: read Namespaces, Pods and NetworkPolicies from a manifest directory (the
default that needs no cluster) and/or the Kubernetes API, and enforce NetworkPolicy for this
node's pods in nftables table 'inet podnet'. Nothing is programmed before every source has
listed everything once. The table outlives the agent: stopping it never opens isolated pods, and
the next agent adopts the table in one transaction.

With --pod-cidr, an address of the node's pod ranges carries no forwarded traffic until the agent
has classified it: a pod's CNI ADD asks the agent (its socket) and waits for it, bounded. While the
agent is down, new pods stay unreachable (fail closed); running pods keep their rules.
"""


def register(sub: Any) -> None:
    p = sub.add_parser("agent", help="run the node agent (NetworkPolicy)", description=AGENT_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifests", metavar="DIR",
                   help="a directory of YAML/JSON objects, followed as it changes")
    p.add_argument("--kubeconfig", metavar="PATH", help="read the Kubernetes API with this kubeconfig")
    p.add_argument("--in-cluster", action="store_true",
                   help="read the Kubernetes API with the pod's service account")
    p.add_argument("--node-name", help="this node's name (default: the hostname)")
    p.add_argument("--pod-cidr", action="append", default=[], metavar="CIDR", type=_network,
                   help="this node's pod range; repeat for more (enables isolation from the first packet)")
    p.add_argument("--socket", default=AGENT_SOCKET, help=f"the agent's unix socket (default {AGENT_SOCKET})")
    _cni_config_arguments(p)
    _routing_arguments(p)
    _egress_arguments(p)
    p.add_argument("--verify-period", type=seconds, default=60.0,
                   help="seconds between checks of the kernel's table against the agent's (default 60)")
    p.add_argument("--metrics-addr", metavar="HOST:PORT", help="serve Prometheus metrics here (default: off)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    p.set_defaults(func=run_agent)

    s = sub.add_parser("status", help="the agent's and the daemon's state")
    s.add_argument("--socket", default=AGENT_SOCKET, help=f"the agent's socket (default {AGENT_SOCKET})")
    s.add_argument("--daemon-socket", default=DAEMON_SOCKET,
                   help=f"the daemon's socket (default {DAEMON_SOCKET})")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--services", type=_count, default=SERVICE_ROWS, metavar="N",
                   help=f"print at most N service ports, one line each (default {SERVICE_ROWS}; 0: none)")
    s.set_defaults(func=run_status)

    pol = sub.add_parser("policy", help="NetworkPolicy tools")
    psub = pol.add_subparsers(dest="policy_command", metavar="COMMAND")
    e = psub.add_parser("explain", help="which policies and rules decide SRC -> DST PORT/PROTO",
                        description="SRC and DST are pods (NAMESPACE/NAME) or IP addresses; PORT/PROTO "
                                    "like 80/TCP. Answered by the running agent from its model.")
    e.add_argument("src")
    e.add_argument("dst")
    e.add_argument("port", metavar="PORT/PROTO")
    e.add_argument("--socket", default=AGENT_SOCKET, help=f"the agent's socket (default {AGENT_SOCKET})")
    e.set_defaults(func=run_explain)
    pol.set_defaults(func=lambda ns: (pol.print_help(), 2)[1])


def _cni_config_arguments(p: argparse.ArgumentParser) -> None:
    # Off unless asked for: an agent started by hand on a dev box must not write into the machine's
    # /etc/cni/net.d (its runtime would start using podnet's network), so the default directory
    # needs --write-cni-config and any other directory is asked for by naming it.
    g = p.add_argument_group("this node's CNI config (off by default)")
    g.add_argument("--write-cni-config", action="store_true",
                   help=f"write the node's network config into {CNI_CONF_DIR} once its Node has a pod CIDR")
    g.add_argument("--cni-conf-dir", metavar="DIR",
                   help=f"write it into DIR instead (implies --write-cni-config; default {CNI_CONF_DIR})")
    g.add_argument("--cni-network", choices=["bridge", "routed"],
                   help="podnet-bridge (a bridge per node) or podnet-routed (a veth per pod; default bridge)")
    g.add_argument("--cni-bridge", metavar="NAME", help="the bridge's name (default podnet0)")
    g.add_argument("--cni-data-dir", metavar="DIR", type=_absolute,
                   help="host-local's dataDir in the config (default its own, /var/lib/cni/networks)")


def _cni_config(ns: argparse.Namespace) -> NodeConfigOptions | None:
    """The NodeConfig options, None when off; ValueError for a CNI option given while off."""
    from podnet.agent.nodeconf import NodeConfigOptions

    if not (ns.write_cni_config or ns.cni_conf_dir):
        given = [f"--{k.replace('_', '-')}" for k in ("cni_network", "cni_bridge", "cni_data_dir")
                 if getattr(ns, k) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} without --write-cni-config or --cni-conf-dir does nothing")
        return None
    return NodeConfigOptions(conf_dir=ns.cni_conf_dir or CNI_CONF_DIR, mode=ns.cni_network or "bridge",
                             bridge=ns.cni_bridge or "podnet0", data_dir=ns.cni_data_dir)


def _routing_arguments(p: argparse.ArgumentParser) -> None:
    # Off unless asked for, like the CNI config: an agent started by hand must not add routes and a
    # VXLAN device to the machine it runs on. The DaemonSet's settings turn it on.
    g = p.add_argument_group("routes to other nodes' pods (off by default)")
    g.add_argument("--routing", choices=["off", "auto"], default="off",
                   help="auto: route each other node's pod CIDR to it, directly when its InternalIP is "
                        "on-link, else over VXLAN (podnet.vx4/podnet.vx6, UDP 8472); default off")
    g.add_argument("--route-check-period", type=seconds, metavar="SECONDS",
                   help="seconds between checks of podnet's routes, neighbours and forwarding entries "
                        "against the Nodes (default 10)")


def _egress_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pod traffic leaving the cluster")
    g.add_argument("--masquerade", choices=["on", "off"], default="on",
                   help="on (default): traffic from this node's pods to addresses outside every Node's pod "
                        "CIDR, the --cluster-cidr ranges and the Nodes' addresses leaves with the node's "
                        "address; traffic inside the cluster keeps the pod's")
    g.add_argument("--cluster-cidr", action="append", default=[], metavar="CIDR", type=_network,
                   help="a range that is inside the cluster besides the Nodes' pod CIDRs (repeatable)")


def _routing(ns: argparse.Namespace) -> RoutingOptions | None:
    """The routing options, None when off; ValueError for a routing option given while off."""
    from podnet.agent.routes import DEFAULT_CHECK_PERIOD, RoutingOptions

    if ns.routing == "off":
        if ns.route_check_period is not None:
            raise ValueError("--route-check-period without --routing auto does nothing")
        return None
    return RoutingOptions(check_period=DEFAULT_CHECK_PERIOD if ns.route_check_period is None
                          else ns.route_check_period)


def _absolute(text: str) -> str:
    if not text.startswith("/"):
        raise argparse.ArgumentTypeError(f"{text!r}: must be an absolute path")
    return text


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number, 0 or more")
    return value


def run_agent(ns: argparse.Namespace) -> int:
    from podnet.agent.runner import Agent, AgentConfig
    from podnet.daemon.logs import JsonLog, route_stdlib_logging

    route_stdlib_logging(JsonLog(sys.stderr, ns.log_level))  # JSON lines, like the daemon's
    try:
        config = AgentConfig(node_name=ns.node_name, manifests=ns.manifests, kubeconfig=ns.kubeconfig,
                             in_cluster=ns.in_cluster, pod_ranges=tuple(ns.pod_cidr), socket_path=ns.socket,
                             verify_period=ns.verify_period, cni_config=_cni_config(ns),
                             routing=_routing(ns), masquerade=ns.masquerade == "on",
                             cluster_cidrs=tuple(ns.cluster_cidr))
        agent = Agent(config)
    except Exception as exc:  # a bad source or config: said in one line, never a traceback
        print(f"podnet agent: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    metrics_server = None
    if ns.metrics_addr:
        from podnet.agent.metrics import AgentMetrics

        metrics = AgentMetrics(agent.status)
        agent.sync.observe = metrics.observe
        agent.services.observe = metrics.observe_services
        if agent.egress is not None:
            agent.egress.observe = metrics.observe_egress
        from podnet.daemon.metrics_http import MetricsServer

        try:
            host, port = parse_addr(ns.metrics_addr)
            metrics_server = MetricsServer(metrics.render, host, port).start()
        except (ValueError, OSError) as exc:
            print(f"podnet agent: --metrics-addr {ns.metrics_addr}: {exc}", file=sys.stderr)
            return 2
    try:
        agent.start()
    except Exception as exc:
        print(f"podnet agent: {exc}", file=sys.stderr)
        if metrics_server is not None:
            metrics_server.shutdown()
        return 2
    try:
        stop.wait()
    finally:
        agent.stop()
        if metrics_server is not None:
            metrics_server.shutdown()
    return 0


def _ask(path: str, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    from podnet.plugins.agent_notify import ask

    return ask(path, request, timeout)


def run_status(ns: argparse.Namespace) -> int:
    out: dict[str, Any] = {"agent": None, "daemon": daemon_status(ns.daemon_socket)}
    try:
        answer = _ask(ns.socket, {"op": "status"})
        out["agent"] = answer.get("status") if answer.get("ok") else {"error": answer.get("error")}
    except (OSError, ValueError) as exc:
        out["agent"] = {"error": f"no agent at {ns.socket}: {exc}"}
    if ns.json:
        print(json.dumps(out, indent=1, sort_keys=True))
    else:
        print(_status_text(out, ns.services))
    # Either may run alone (a node without the agent; the agent without the daemon).
    return 1 if "error" in (out["agent"] or {}) and "error" in out["daemon"] else 0


def daemon_status(path: str, timeout: float = 5.0) -> dict[str, Any]:
    """The daemon's own totals (its status request), or why there are none."""
    import socket

    from podnet.daemon import protocol as p

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(p.encode_request(p.STATUS_REQUEST.encode(), b"", []))
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        size = p.parse_header(data[:p.HEADER_SIZE], p.RESPONSE_MAGIC, p.MAX_RESPONSE_BODY)
        kind, _, out, err = p.decode_response(data[p.HEADER_SIZE:p.HEADER_SIZE + size])
    except (OSError, p.ProtocolError) as exc:
        return {"error": f"no daemon at {path}: {exc}"}
    if kind != p.KIND_RAN:
        return {"error": f"the daemon refused: {err.decode(errors='replace')}"}
    answer = json.loads(out)
    return answer if isinstance(answer, dict) else {"error": "unreadable answer"}


def _status_text(out: dict[str, Any], service_rows: int = SERVICE_ROWS) -> str:
    d = out["daemon"]
    if "error" in d:
        lines = [f"daemon: {d['error']}"]
    else:
        requests = ", ".join(f"{n} {k}" for k, n in d["requests"].items()) or "none"
        refused = ", ".join(f"{n} {k}" for k, n in d["refused"].items()) or "none"
        lines = [f"daemon: pid {d['pid']} at {d['socket']}, up {d['uptime_seconds']:.0f} s, "
                 f"{d['in_flight']} in flight",
                 f"  requests: {requests}", f"  refused: {refused}; last error: {d['last_error'] or 'none'}"]
    a = out["agent"] or {}
    if "error" in a:
        return "\n".join([*lines, f"agent: {a['error']}"])
    sync, table = a["policy_sync"], a["table"]
    objects = ", ".join(f"{n} {k}" for k, n in sorted(a["objects"].items()))
    state = "synced" if a["synced"] else "waiting for " + ", ".join(a["pending_lists"])
    lines += [f"agent: node {a['node']}, {state}",
              f"  objects: {objects}",
              f"  policy syncs: {sync['syncs']} ({sync['full']} full, {sync['failed']} failed), last "
              f"{sync['last_seconds'] * 1000:.1f} ms; last error: {sync['last_error'] or 'none'}",
              f"  table {table['name']}: {table['commits']} commits, {table['failed_commits']} failed, "
              f"{table['drift_repairs']} drift repairs; last error: {table['last_error'] or 'none'}",
              f"  pod ranges held back until classified: {', '.join(a['pod_ranges']) or 'none'}",
              f"  bridged pods filtered (br_netfilter): {a['bridge_filtering']}",
              f"  services: {a['services']['proxied']} proxied, {a['services']['endpoints']} endpoints, "
              f"{a['services']['syncs']} syncs ({a['services']['failed']} failed); last error: "
              f"{a['services']['last_error'] or 'none'}"]
    lines += _service_lines(a["services"], service_rows)
    lines += _cni_config_lines(a.get("cni_config"))
    lines += _routing_lines(a.get("routing"))
    lines += [f"  {name}: {n} step(s) raised (a bug; see the log), retried"
              for name, n in sorted((a.get("crashes") or {}).items())]
    lines += [f"  invalid policy {key} (its pods fail closed): {error}"
              for key, error in a["invalid_policies"].items()]
    return "\n".join(lines)


def _cni_config_lines(conf: dict[str, Any] | None) -> list[str]:
    if not conf:
        return []
    ranges = ", ".join(conf.get("pod_cidrs") or []) or "none yet"
    return [f"  cni config {conf['path']}: {conf['state']}, ranges {ranges}; last error: "
            f"{conf.get('error') or 'none'}"]


def _routing_lines(routing: dict[str, Any] | None) -> list[str]:
    if not routing:
        return []
    lines = [f"  routing: {len(routing['peers'])} peer(s), {routing['routes']} route(s), {routing['syncs']} "
             f"syncs ({routing['failed']} failed), {routing['repairs']} repairs; last error: "
             f"{routing['last_error'] or 'none'}"]
    lines += [f"    device {d['name']}: local {d['local']}, VNI {d['vni']}, port {d['port']}, "
              f"{d['peers']} peer(s)" for d in routing["devices"]]
    lines += [f"    peer {p['name']}: {', '.join([p['mode'], *p['pod_cidrs']])}; {p['state']}"
              for p in routing["peers"]]
    return lines


def _service_lines(services: dict[str, Any], limit: int) -> list[str]:
    """One line per service port (an agent without the table answers without it: nothing)."""
    from podnet.agent.services.status import format_row

    rows: list[dict[str, Any]] = services.get("table") or []
    lines = [f"    {format_row(row)}" for row in rows[:limit]]
    cut, left_out = len(rows) - len(lines), int(services.get("table_truncated") or 0)
    if cut or left_out:
        why = [*([f"--services {len(rows)} shows {cut} of them"] if cut else []),
               *([f"{left_out} beyond the agent's answer"] if left_out else [])]
        lines.append(f"    ... {cut + left_out} more service port(s) ({'; '.join(why)})")
    return lines


def run_explain(ns: argparse.Namespace) -> int:
    try:
        answer = _ask(ns.socket, {"op": "explain", "src": ns.src, "dst": ns.dst, "port": ns.port})
    except (OSError, ValueError) as exc:
        print(f"podnet policy explain: no agent at {ns.socket}: {exc}", file=sys.stderr)
        return 1
    if not answer.get("ok"):
        print(f"podnet policy explain: {answer.get('error')}", file=sys.stderr)
        return 2
    print(answer["text"])
    return 0
