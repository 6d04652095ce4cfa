"""The compiled table against the semantics, over random worlds (no root): a Python reading of the
emitted statements (nfteval) must allow exactly what agent.policy.semantics allows, for every pair
of endpoints, both families, TCP/UDP/SCTP, on this node (only local pods are isolated here)."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import ip_address, ip_network

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nsutil import Netns
from nsutil import namespaces as netns_factory
from podnet.agent.model import (
    ContainerPort,
    Direction,
    IPBlock,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    Operator,
    Peer,
    Pod,
    PolicyPort,
    Protocol,
    Requirement,
    Rule,
)
from podnet.agent.policy import PolicyInputs, compile, verdict

from .nfteval import Packet, Table, allows
from .nftload import render

KEYS, VALUES = ("app", "tier"), ("a", "b")
NODE = "n1"

labels = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=2)
requirement = st.builds(Requirement, st.sampled_from(KEYS), st.sampled_from(list(Operator)),
                        st.frozensets(st.sampled_from(VALUES), max_size=2))
selector = st.builds(lambda ml, reqs: LabelSelector(tuple(sorted(ml.items())), tuple(reqs)),
                     st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=1),
                     st.lists(requirement, max_size=1))
BLOCKS = (("10.0.0.0/29", ("10.0.0.2/31",)), ("10.0.0.0/24", ()), ("fd00::/125", ("fd00::4/126",)),
          ("0.0.0.0/0", ("10.0.0.4/30",)), ("::/0", ()))
ip_block = st.sampled_from(BLOCKS).map(
    lambda b: IPBlock(ip_network(b[0]), tuple(ip_network(e) for e in b[1])))
peer = st.one_of(
    st.builds(lambda s: Peer(pod_selector=s), selector),
    st.builds(lambda s: Peer(namespace_selector=s), selector),
    st.builds(lambda p, n: Peer(pod_selector=p, namespace_selector=n), selector, selector),
    st.builds(lambda b: Peer(ip_block=b), ip_block),
)
protocol = st.sampled_from(list(Protocol))
policy_port = st.one_of(
    st.builds(PolicyPort, protocol, st.sampled_from([None, 80, 81, "web", "web", "nope"])),
    st.builds(lambda p: PolicyPort(p, 80, 81), protocol),
)
rule = st.builds(lambda peers, ports: Rule(tuple(peers), tuple(ports)),
                 st.lists(peer, max_size=2), st.lists(policy_port, max_size=2))
directions = st.frozensets(st.sampled_from(list(Direction)), min_size=1)


@st.composite
def policies(draw: st.DrawFn) -> list[NetworkPolicy]:
    out = []
    for i in range(draw(st.integers(1, 3))):
        out.append(NetworkPolicy(
            draw(st.sampled_from(["ns0", "ns1"])), f"p{i}", draw(selector), draw(directions),
            tuple(draw(st.lists(rule, max_size=2))), tuple(draw(st.lists(rule, max_size=2))),
            "invalid" if draw(st.integers(0, 9)) == 0 else None))
    return out


@st.composite
def pods(draw: st.DrawFn) -> list[Pod]:
    out = []
    for i in range(1, 7):
        ports = (ContainerPort("web", draw(st.sampled_from([80, 81])), draw(protocol)),)
        out.append(Pod(draw(st.sampled_from(["ns0", "ns1", "ns2"])), f"pod{i}", labels=draw(labels),
                       ips=(ip_address(f"10.0.0.{i}"), ip_address(f"fd00::{i}")),
                       node_name=draw(st.sampled_from([NODE, NODE, "n2"])), ports=ports))
    return out


namespaces = st.builds(
    lambda a, b, c: {n: Namespace(n, lab) for n, lab in zip(("ns0", "ns1", "ns2"), (a, b, c), strict=True)},
    labels, labels, labels)

OUTSIDE = (ip_address("10.0.0.200"), ip_address("fd00::200"))


def expected(inputs: PolicyInputs, src: Pod | None, dst: Pod | None, family: int, port: int,
             proto: Protocol) -> bool:
    """What this node must decide: the source's egress if it is local, the destination's ingress if
    it is local (the other node decides the rest)."""
    s = src if src is not None else OUTSIDE[family == 6]
    d = dst if dst is not None else OUTSIDE[family == 6]
    v = verdict(inputs, s, d, port, proto, family=family)
    egress = v.egress.allowed or src is None or src.node_name != NODE
    ingress = v.ingress.allowed or dst is None or dst.node_name != NODE
    return egress and ingress


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(namespaces, pods(), policies())
def test_compiled_table_allows_what_the_semantics_allows(
        spaces: dict[str, Namespace], pod_list: list[Pod], policy_list: list[NetworkPolicy]) -> None:
    inputs = PolicyInputs.of(spaces, pod_list, policy_list, NODE)
    table = Table(compile(spaces, pod_list, policy_list, NODE))
    ends: list[Pod | None] = [*pod_list, None]
    for src in ends:
        for dst in ends:
            if src is dst:
                continue
            for family in (4, 6):
                s_ip = src.ips[family == 6] if src else OUTSIDE[family == 6]
                d_ip = dst.ips[family == 6] if dst else OUTSIDE[family == 6]
                for proto in Protocol:
                    for port in (80, 81):
                        want = expected(inputs, src, dst, family, port, proto)
                        got = allows(table, Packet(s_ip, d_ip, proto.value.lower(), port))
                        assert got == want, (src, dst, family, proto, port, policy_list)


@pytest.fixture(scope="module")
def loader() -> Iterator[Netns]:
    with netns_factory() as factory:
        yield factory("node")


@pytest.mark.root
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(namespaces, pods(), policies())
def test_random_tables_load_into_the_kernel(loader: Netns, spaces: dict[str, Namespace], pod_list: list[Pod],
                                            policy_list: list[NetworkPolicy]) -> None:
    script = render(compile(spaces, pod_list, policy_list, NODE))
    loaded = loader.run(["nft", "-f", "-"], input=script, check=False)
    assert loaded.returncode == 0, (loaded.stderr, script)
