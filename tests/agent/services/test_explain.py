"""``podnet policy explain`` to a service address: the Service, its endpoints as the proxy picks
them, and each endpoint's policy verdict (here a stand-in that names what it was asked)."""

from __future__ import annotations

from podnet.agent.model import Protocol, ServiceType, TrafficPolicy
from podnet.agent.services.explain import explain_service, service_address

from .world import NODE, endpoint, service, slice_, tcp, udp

SERVICES = [
    service("web", "10.96.0.10", tcp("http", 80), udp("dns", 53), external_ips=("192.0.2.10",)),
    service("empty", "10.96.0.12", tcp("http", 80)),
    service("local", "10.96.0.15", tcp("http", 80, 30081), type=ServiceType.NODE_PORT,
            external_ips=("192.0.2.15",), etp=TrafficPolicy.LOCAL),
]
SLICES = [slice_("web", endpoint("10.244.0.10"), endpoint("10.244.0.11"), endpoint("10.244.1.5", "node-2",
                                                                                   ready=False)),
          slice_("empty"), slice_("local", endpoint("10.244.1.9", "node-2"))]


def ask(dst: str, port: int, protocol: Protocol = Protocol.TCP) -> str | None:
    return explain_service(SERVICES, SLICES, NODE, dst, port, protocol, lambda ip, p: f"policy {ip} {p}")


def test_a_cluster_ip_maps_to_its_ready_endpoints_each_explained() -> None:
    text = ask("10.96.0.10", 80)
    assert text is not None
    assert text.splitlines()[0] == "10.96.0.10 is the ClusterIP of Service default/web, port http (80/TCP)"
    assert "2 endpoint(s), picked at random per connection: 10.244.0.10:8080, 10.244.0.11:8080" in text
    assert "    policy 10.244.0.10 8080/TCP" in text and "    policy 10.244.0.11 8080/TCP" in text
    assert "10.244.1.5" not in text  # not ready: never picked


def test_an_external_ip_and_its_port_protocol() -> None:
    text = ask("192.0.2.10", 80)
    assert text is not None and "ExternalIP of Service default/web" in text and "10.244.0.11:8080" in text
    text = ask("192.0.2.10", 80, Protocol.UDP)
    assert text is not None and "has no port 80/UDP (its ports: 80/TCP, 53/UDP)" in text


def test_no_endpoints_is_said_with_the_proxy_verdict() -> None:
    text = ask("10.96.0.12", 80)
    assert text is not None and "no usable endpoint: new connections are rejected at once" in text
    text = ask("192.0.2.15", 80)  # Local external policy, the only endpoint on another node
    assert text is not None and "none on this node that its Local traffic policy may use: dropped" in text
    text = ask("10.96.0.15", 80)  # the ClusterIP keeps the Cluster policy: the remote endpoint
    assert text is not None and "1 endpoint(s)" in text and "10.244.1.9:8080" in text


def test_other_addresses_are_not_a_service_matter() -> None:
    assert ask("10.244.0.10", 80) is None and ask("a/b", 80) is None
    assert service_address(SERVICES, "192.0.2.15") and not service_address(SERVICES, "192.0.2.99")
