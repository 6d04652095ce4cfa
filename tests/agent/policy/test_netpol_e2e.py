"""NetworkPolicy in real namespaces: the upstream e2e model (kubernetes
test/e2e/network/netpol/network_policy.go), one scenario per upstream case, compiled by
agent.policy.compile, loaded into the node namespace's kernel, probed pod to pod, and compared
cell by cell with agent.policy.semantics (and, for the upstream cases, with upstream's own
hand-written expectation). Every truth table is printed (``pytest -s`` shows them).

x and y pods share one bridge, z pods are routed: the matrix covers bridged, routed and mixed
paths. Upstream's SCTP cases cannot send SCTP here (the kernel has no SCTP module); they are run
with TCP and UDP probes, which is what matters for them: an SCTP rule must load and open nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import ip_network

import pytest

from nsutil import namespaces
from podnet.agent.model import NetworkPolicy, Protocol

from .cluster import Cluster, Reach, build, comparison, table
from .world import EGR, ING, SCTP, TCP, UDP, block, peer, policy, port, rule, sel

pytestmark = pytest.mark.root

NAME = "kubernetes.io/metadata.name"


@pytest.fixture(scope="module")
def world() -> Iterator[Cluster]:
    with namespaces() as factory:
        yield build(factory)


@pytest.fixture
def cluster(world: Cluster) -> Cluster:
    world.reset()
    world.apply([])
    return world


def check(cluster: Cluster, p: int, proto: Protocol, hand: Reach | None = None, family: int = 4) -> None:
    keys = list(cluster.pods)
    want = cluster.oracle(p, proto, family)
    if hand is not None:
        # Upstream ignores loopback (its meaning is undefined there); podnet always allows it.
        off = {c for c in want if c[0] != c[1] and want[c] != hand.cells[c]}
        assert not off, comparison("semantics vs upstream's expectation", want, hand.cells, keys)
    got = cluster.matrix(p, proto, family, want)
    print(f"\n{proto.value}/{p} IPv{family}\n{table(got, keys)}")
    assert got == want, comparison(f"kernel vs semantics, {proto.value}/{p} IPv{family}", got, want, keys)


def reach(cluster: Cluster) -> Reach:
    return Reach(cluster.pods)


def pod_is(name: str) -> dict[str, str]:
    return {"pod": name}


def ns_is(name: str) -> dict[str, str]:
    return {NAME: name}


# -- upstream: NetworkPolicy between server and client (TCP) -----------------------------------------

def test_no_policy_everything_reachable(cluster: Cluster) -> None:
    check(cluster, 80, TCP, reach(cluster))
    check(cluster, 81, UDP, reach(cluster))
    check(cluster, 80, TCP, reach(cluster), family=6)


def test_default_deny_ingress(cluster: Cluster) -> None:
    cluster.apply([policy("x", "deny-ingress", sel(), types=[ING])])
    check(cluster, 80, TCP, reach(cluster).peer(to="x/*"))
    check(cluster, 80, TCP, reach(cluster).peer(to="x/*"), family=6)


def test_default_deny_all(cluster: Cluster) -> None:
    cluster.apply([policy("x", "deny-all", sel(), types=[ING, EGR])])
    check(cluster, 80, TCP, reach(cluster).peer(to="x/*").peer(frm="x/*"))
