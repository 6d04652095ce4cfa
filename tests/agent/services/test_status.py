"""The service table of ``podnet status``: each service address and port, and what the proxy does
with it (DNAT to which endpoints, reject, drop), read off the same plans the compiler uses, and
checked against the compiled maps themselves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from podnet.agent.model import EndpointPort, Protocol, ServiceType, TrafficPolicy
from podnet.agent.services import compile
from podnet.agent.services.names import no_endpoint_map, no_endpoint_nodeport_map, nodeport_map, vip_map
from podnet.agent.services.status import format_row, service_table

from .world import NODE, endpoint, service, slice_, tcp, udp

NODE_PORT = ServiceType.NODE_PORT
LOCAL = TrafficPolicy.LOCAL


def rows(services: list[Any], slices: list[Any], **limits: int) -> list[dict[str, Any]]:
    return service_table(services, slices, NODE, **limits).rows


def one(services: list[Any], slices: list[Any]) -> dict[str, Any]:
    found = rows(services, slices)
    assert len(found) == 1, found
    return found[0]


def verdicts(row: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    return {a["address"]: (a["verdict"], a.get("picks_from")) for a in row["addresses"]}


def test_cluster_policy_every_address_to_every_ready_endpoint() -> None:
    row = one([service("web", "10.96.0.10", tcp("http", 80, 30080), type=NODE_PORT,
                       external_ips=("192.0.2.10", "192.0.2.11"))],
              [slice_("web", endpoint("10.244.1.3", "node-2"), endpoint("10.244.0.2"),
                      endpoint("10.244.0.9", ready=False))])
    assert verdicts(row) == {"10.96.0.10:80": ("dnat", "cluster"), "192.0.2.10:80": ("dnat", "cluster"),
                             "192.0.2.11:80": ("dnat", "cluster"), "node:30080": ("dnat", "cluster")}
    assert [a["kind"] for a in row["addresses"]] == ["ClusterIP", "ExternalIP", "ExternalIP", "NodePort"]
    assert row["cluster"] == ["10.244.0.2:8080", "10.244.1.3:8080"] and row["local"] == []
    assert (row["verdict"], row["service"], row["port"], row["protocol"], row["family"]) == (
        "dnat", "default/web", "http", "TCP", 4)
    assert format_row(row) == ("default/web http tcp  10.96.0.10:80, 192.0.2.10:80, 192.0.2.11:80, node:30080"
                               " -> 10.244.0.2:8080, 10.244.1.3:8080")


def test_external_local_policy_sends_outside_clients_to_this_nodes_endpoints() -> None:
    row = one([service("lb", "10.96.0.15", tcp("http", 80, 30081), type=NODE_PORT,
                       external_ips=("192.0.2.15",), etp=LOCAL)],
              [slice_("lb", endpoint("10.244.0.2"), endpoint("10.244.1.9", "node-2"))])
    assert verdicts(row) == {"10.96.0.15:80": ("dnat", "cluster"), "192.0.2.15:80": ("dnat", "local"),
                             "node:30081": ("dnat", "local")}
    assert row["cluster"] == ["10.244.0.2:8080", "10.244.1.9:8080"] and row["local"] == ["10.244.0.2:8080"]
    assert row["external_traffic_policy"] == "Local" and row["internal_traffic_policy"] == "Cluster"
    assert format_row(row) == ("default/lb http tcp  10.96.0.15:80, 192.0.2.15:80 (Local), node:30081 (Local)"
                               " -> 10.244.0.2:8080, 10.244.1.9:8080 (local: 10.244.0.2:8080)")


def test_local_policy_with_no_endpoint_here_drops_only_its_addresses() -> None:
    row = one([service("lb", "10.96.0.15", tcp("http", 80, 30081), type=NODE_PORT,
                       external_ips=("192.0.2.15",), etp=LOCAL)],
              [slice_("lb", endpoint("10.244.1.9", "node-2"))])
    assert verdicts(row) == {"10.96.0.15:80": ("dnat", "cluster"), "192.0.2.15:80": ("drop", None),
                             "node:30081": ("drop", None)}
    assert row["verdict"] == "partial" and row["local"] == []
    assert format_row(row) == ("default/lb http tcp  10.96.0.15:80 -> 10.244.1.9:8080; 192.0.2.15:80, "
                               "node:30081 -> drop (endpoints elsewhere, none here for the Local policy)")


def test_internal_local_policy_uses_this_nodes_endpoints_or_drops() -> None:
    svc = [service("itp", "10.96.0.16", tcp("http", 80), itp=LOCAL)]
    row = one(svc, [slice_("itp", endpoint("10.244.0.2"), endpoint("10.244.1.9", "node-2"))])
    assert verdicts(row) == {"10.96.0.16:80": ("dnat", "local")}
    assert row["local"] == ["10.244.0.2:8080"] and row["cluster"] == []  # the Cluster list is not compiled
    assert format_row(row) == "default/itp http tcp  10.96.0.16:80 (Local) -> local: 10.244.0.2:8080"
    row = one(svc, [slice_("itp", endpoint("10.244.1.9", "node-2"))])
    assert (row["verdict"], verdicts(row)) == ("drop", {"10.96.0.16:80": ("drop", None)})


def test_no_endpoints_anywhere_rejects_every_address() -> None:
    svc = [service("empty", "10.96.0.12", tcp("http", 80, 30082), type=NODE_PORT,
                   external_ips=("192.0.2.12",), etp=LOCAL)]
    for slices in ([], [slice_("empty")], [slice_("empty", endpoint("10.244.0.2", ready=False))]):
        row = one(svc, slices)
        assert row["verdict"] == "reject" and row["cluster"] == [] and row["local"] == []
        assert {a["verdict"] for a in row["addresses"]} == {"reject"} and len(row["addresses"]) == 3
        assert format_row(row) == ("default/empty http tcp  10.96.0.12:80, 192.0.2.12:80, node:30082 "
                                   "-> reject (no endpoints)")


def test_terminating_endpoints_serve_only_when_nothing_is_ready() -> None:
    svc = [service("roll", "10.96.0.17", tcp("http", 80), external_ips=("192.0.2.17",), etp=LOCAL)]
    draining = endpoint("10.244.0.4", ready=False, serving=True, terminating=True)
    gone = endpoint("10.244.0.5", ready=False, serving=False, terminating=True)
    row = one(svc, [slice_("roll", draining, gone, endpoint("10.244.1.6", "node-2", ready=False,
                                                            serving=True, terminating=True))])
    assert row["cluster"] == ["10.244.0.4:8080", "10.244.1.6:8080"] and row["local"] == ["10.244.0.4:8080"]
    assert row["verdict"] == "dnat"
    row = one(svc, [slice_("roll", draining, endpoint("10.244.1.7", "node-2"))])  # one ready elsewhere
    assert row["cluster"] == ["10.244.1.7:8080"] and row["local"] == ["10.244.0.4:8080"]
    assert one(svc, [slice_("roll", gone)])["verdict"] == "reject"


def test_dual_stack_gives_a_row_per_family_with_its_own_addresses() -> None:
    svc = [service("v6", ("fd00:96::10", "10.96.0.20"), tcp("http", 80, 30083), type=NODE_PORT,
                   external_ips=("192.0.2.20", "2001:db8::20"))]
    slices = [slice_("v6", endpoint("fd00:244::2"), endpoint("fd00:244::1", "node-2"), family=6),
              slice_("v6", endpoint("10.244.0.2"))]
    four, six = rows(svc, slices)
    assert (four["family"], six["family"]) == (4, 6)
    assert [a["address"] for a in six["addresses"]] == ["[fd00:96::10]:80", "[2001:db8::20]:80", "node:30083"]
    assert [a["address"] for a in four["addresses"]] == ["10.96.0.20:80", "192.0.2.20:80", "node:30083"]
    assert six["cluster"] == ["[fd00:244::1]:8080", "[fd00:244::2]:8080"]
    assert four["cluster"] == ["10.244.0.2:8080"]
    assert format_row(six).startswith("default/v6 http tcp ipv6  [fd00:96::10]:80, [2001:db8::20]:80")
    # A family without endpoints rejects in that family only.
    four, six = rows(svc, slices[:1])
    assert (four["verdict"], six["verdict"]) == ("reject", "dnat")


def test_affinity_and_ports_by_name_and_protocol() -> None:
    svc = [service("dns", "10.96.0.53", udp("dns", 53), tcp("dns-tcp", 53), affinity=300)]
    ports = (EndpointPort("dns", 5353, Protocol.UDP), EndpointPort("dns-tcp", 5354, Protocol.TCP))
    udp_row, tcp_row = rows(svc, [slice_("dns", endpoint("10.244.0.2"), ports=ports)])
    assert (udp_row["port"], udp_row["protocol"], udp_row["cluster"]) == ("dns", "UDP", ["10.244.0.2:5353"])
    assert (tcp_row["port"], tcp_row["protocol"]) == ("dns-tcp", "TCP")
    assert tcp_row["cluster"] == ["10.244.0.2:5354"]
    assert udp_row["affinity_seconds"] == 300
    assert format_row(udp_row) == ("default/dns dns udp  10.96.0.53:53 -> 10.244.0.2:5353  "
                                   "[ClientIP affinity 300s]")
    plain = one([service("web", "10.96.0.10", tcp("", 80))], [slice_("web", endpoint("10.244.0.2"),
                                                                    ports=(EndpointPort("", 8080),))])
    assert plain["affinity_seconds"] is None
    assert format_row(plain).startswith("default/web - tcp  10.96.0.10:80")


def test_not_proxied_services_have_no_rows_and_the_order_is_the_same_whatever_came_first() -> None:
    headless = service("headless", "10.96.0.30")
    headless = type(headless)(headless.namespace, headless.name, headless.type, (), (), headless.ports,
                              headless=True)
    broken = type(headless)("default", "broken", error="spec.ports: bad")
    svcs = [service("b", "10.96.0.2"), service("a", "10.96.0.1", tcp("z", 81), tcp("a", 80)),
            service("c", "10.96.0.3", ns="alpha"), headless, broken]
    first = rows(svcs, [])
    assert [(r["service"], r["port"]) for r in first] == [("alpha/c", "http"), ("default/a", "a"),
                                                          ("default/a", "z"), ("default/b", "http")]
    assert rows(list(reversed(svcs)), []) == first


def test_the_answer_is_bounded_and_says_how_much_is_left_out() -> None:
    svcs = [service(f"s{i:02}", f"10.96.0.{i + 1}", tcp("a", 80), tcp("b", 81)) for i in range(30)]
    table = service_table(svcs, [], NODE, max_rows=7)
    assert len(table.rows) == 7 and table.truncated == 53
    assert table.rows[-1]["service"] == "default/s03" and table.rows[-1]["port"] == "a"
    size = len(json.dumps(service_table(svcs, [], NODE).rows[0]))
    table = service_table(svcs, [], NODE, max_bytes=size * 5 + 1)
    assert len(table.rows) == 5 and table.truncated == 55
    many = [endpoint(f"10.244.0.{i}") for i in range(2, 40)]
    row = service_table([service("big", "10.96.1.1")], [slice_("big", *many)], NODE, max_listed=4).rows[0]
    assert row["cluster"] == [f"10.244.0.{i}:8080" for i in range(2, 6)] and row["cluster_total"] == 38
    assert format_row(row).endswith("-> 10.244.0.2:8080, 10.244.0.3:8080, 10.244.0.4:8080, 10.244.0.5:8080, "
                                    "+34 more")


def test_the_table_says_what_the_compiled_maps_hold() -> None:
    """Every key of every dispatch and no-endpoint map, with its verdict, is in the table, and nothing
    else: the table is read off the plans the compiler writes its maps from."""
    svcs = [service("web", ("10.96.0.10", "fd00:96::10"), tcp("http", 80, 30080), udp("dns", 53),
                    type=NODE_PORT, external_ips=("192.0.2.10", "2001:db8::10")),
            service("lb", "10.96.0.15", tcp("http", 80, 30081), type=NODE_PORT, external_ips=("192.0.2.15",),
                    etp=LOCAL),
            service("itp", "10.96.0.16", tcp("http", 80), itp=LOCAL),
            service("empty", "10.96.0.12", tcp("http", 80, 30082), type=NODE_PORT)]
    ports = (EndpointPort("http", 8080), EndpointPort("dns", 5353, Protocol.UDP))
    slices = [slice_("web", endpoint("10.244.0.2"), ports=ports),
              slice_("web", endpoint("fd00:244::2", "node-2"), ports=ports, family=6),
              slice_("lb", endpoint("10.244.1.9", "node-2")), slice_("itp", endpoint("10.244.0.3"))]
    compiled = compile(svcs, slices, node_name=NODE).elements
    want: set[tuple[str, str, str]] = set()
    for f in (4, 6):
        for name in (vip_map(f), nodeport_map(f), no_endpoint_map(f), no_endpoint_nodeport_map(f)):
            # A key DNATs through whatever chain the compiler chose: only "goto" is the table's matter.
            want.update((name, k, str(v).split(" ")[0] if name in (vip_map(f), nodeport_map(f)) else str(v))
                        for k, v in compiled.get(name, {}).items())
    got: set[tuple[str, str, str]] = set()
    for row in rows(svcs, slices):
        for a in row["addresses"]:
            got.add(_map_entry(row, a))
    assert got == want


def _map_entry(row: dict[str, Any], a: dict[str, Any]) -> tuple[str, str, str]:
    f, proto = row["family"], row["protocol"].lower()
    port = a["address"].rsplit(":", 1)[1]
    value = {"dnat": "goto", "reject": "goto services-reject", "drop": "drop"}[a["verdict"]]
    if a["kind"] == "NodePort":
        name = nodeport_map(f) if a["verdict"] == "dnat" else no_endpoint_nodeport_map(f)
        return (name, f"{proto} . {port}", value)
    host = a["address"].rsplit(":", 1)[0].strip("[]")
    return (vip_map(f) if a["verdict"] == "dnat" else no_endpoint_map(f), f"{host} . {proto} . {port}", value)


def test_the_agent_builds_the_rows_once_per_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Status is asked often (tools poll it); the rows are made again only when the model changed."""
    from podnet.agent import runner
    from podnet.agent.objects import Kind
    from podnet.agent.store import Event, EventType
    from podnet.kernel.nft import FakeNft

    class NoSource:
        def start(self) -> None: ...

        def stop(self, timeout: float = 5.0) -> None: ...

        def status(self) -> None: ...

    made: list[int] = []
    real = runner.service_table

    def counting(*args: Any, **kw: Any) -> Any:
        made.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(runner, "service_table", counting)
    agent = runner.Agent(runner.AgentConfig(node_name="n1", socket_path=str(tmp_path / "a.sock"),
                                            sources=[NoSource()]), nft=FakeNft())
    agent.store.register_source("test")
    for kind in Kind:
        agent.store.replace(kind, "test", [])
    first = agent.status(service_rows=True)["services"]["table"]
    assert agent.status(service_rows=True)["services"]["table"] == first and len(made) == 1
    agent.store.apply(Event(EventType.ADDED, service("web", "10.96.0.10")), "test")
    assert len(agent.status(service_rows=True)["services"]["table"]) == 1 and len(made) == 2
