"""A new connection's first packet is DNATed whatever the writer commits meanwhile.

nf_tables applies a transaction atomically for the ruleset, not for a packet that is inside the
table while it commits: the packet runs the rules of the generation it entered with, but looks sets
and maps up in the generation current at each lookup (see :mod:`podnet.dataplane.phases`). When one
of web's endpoints leaves its slice, web's addresses go to the shared entry chains for two endpoints
(made in that same change when no other service has two) and their keys leave slot map 2; when it
comes back, the same the other way round. Committed as one transaction, a SYN that straddles the
commit could follow the new map element into a chain whose rules it sees as empty, or the old one
into a chain or a slot whose lookups are gone: the SYN leaves the NAT chain untranslated, the node
has no route to the ExternalIP and answers ICMP net unreachable. That is the shared-set race test's
rare ``ENETUNREACH`` (its commit log put both failures of a 10,000-sync run inside such a commit).

Here the proxy's real loop (:class:`ServiceSync` on a real :class:`TableWriter`) moves web's third
endpoint out and back as fast as it syncs, while a client pod sends SYNs from fresh source ports
(``synflood.py``: each one a new conntrack flow, so each one meets the NAT chains), thousands a
second. A SYN the node routes untranslated is counted by the node's ``IpExt InNoRoutes`` (nothing
else in the node's namespace goes anywhere without a route; the flood's source ports are below the
ephemeral ones, so it never meets a real connection). With one transaction per change, a few SYNs
in a few hundred commits at about 20,000 SYNs a second were lost, each inside a commit (ICMP
captured at the node against the writer's step times); with make, switch, break none may be.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import ip_network
from pathlib import Path

import pytest

from nsutil import Netns, namespaces
from podnet.agent.model import EndpointSlice, Service
from podnet.agent.objects import Kind
from podnet.agent.service_sync import ServiceSync
from podnet.agent.store import Event, EventType, Store
from podnet.dataplane.contribution import Chain, Contribution, Set
from podnet.dataplane.phases import phases
from podnet.dataplane.writer import TableWriter
from podnet.kernel.nft import FakeNft, LibNftables, NftError, Transaction

from . import bridged
from .bridged import CLIENT, ENDPOINTS, PROBE
from .world import endpoint, service, slice_, tcp

HERE = Path(__file__).parent
FLOOD = str(HERE / "synflood.py")
NODE = "node-1"
EXTERNAL_IP = "192.0.2.10"
POD_RANGE = ip_network("10.244.0.0/24")
SECONDS = 7.0  # of SYNs: one transaction per change lost 1 to 11 in 10 s (about 250 commits)


@dataclass
class World:
    node: Netns
    client: Netns


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with namespaces() as make:
        wired = bridged.wire(make)
        yield World(wired.node, wired.client)


def web_slice(with_p2: bool, name: str = "web") -> EndpointSlice:
    eps = tuple(endpoint(a) for n, a in ENDPOINTS.items() if with_p2 or n != "p2")
    return slice_(name, *eps, name=f"{name}-4")


def objects() -> list[Service | EndpointSlice]:
    """web (with the ExternalIP) and another service, both on the three endpoints: the shared chains
    for three endpoints stay, those for two come and go with web's third endpoint."""
    return [service("web", "10.96.0.10", tcp("http", 80), external_ips=(EXTERNAL_IP,)),
            web_slice(True),
            service("other", "10.96.0.11", tcp("http", 80)), web_slice(True, name="other")]


def untranslated(node: Netns) -> int:
    """Packets the node had to route and found no route for (IpExt InNoRoutes)."""
    head, values = [line.split() for line in node.sh("cat /proc/net/netstat").splitlines()
                    if line.startswith("IpExt:")]
    return int(values[head.index("InNoRoutes")])


def wait_for(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def move_endpoint(store: Store, services: ServiceSync, flood: subprocess.Popen[bytes]) -> int:
    """web's third endpoint out of its slice and back, each move once the proxy synced the last,
    until the flood ends; returns the number of moves."""
    moves = 0
    while flood.poll() is None:
        synced = services.stats.syncs
        store.apply(Event(EventType.MODIFIED, web_slice(with_p2=moves % 2 == 1)), "test")
        moves += 1
        wait_for(lambda: services.stats.syncs > synced or flood.poll() is not None, "a sync")  # noqa: B023
    return moves


@pytest.mark.root
def test_no_syn_leaves_untranslated_while_an_endpoint_comes_and_goes(world: World) -> None:
    nft = LibNftables(netns=world.node.path)
    writer = TableWriter(nft, "inet", "podnet", verify_period=3600)
    store = Store(NODE)
    store.register_source("test")
    store.replace(Kind.SERVICE, "test", [o for o in objects() if isinstance(o, Service)])
    store.replace(Kind.ENDPOINT_SLICE, "test", [o for o in objects() if isinstance(o, EndpointSlice)])
    for kind in Kind:
        if kind not in (Kind.SERVICE, Kind.ENDPOINT_SLICE):
            store.replace(kind, "test", [])
    services = ServiceSync(store, writer, pod_ranges=[POD_RANGE], retry_seconds=0.02)
    flood: subprocess.Popen[bytes] | None = None
    try:
        services.start()
        wait_for(lambda: services.stats.syncs >= 1, "the first service sync")
        got = json.loads(world.client.run([sys.executable, PROBE, "tcp", EXTERNAL_IP, "80", "3"]).stdout)
        assert len(got) == 3 and set(got) <= set(ENDPOINTS), got  # web answers before the flood
        before = untranslated(world.node)
        flood = world.client.popen([sys.executable, FLOOD, CLIENT[1], EXTERNAL_IP, "80", str(SECONDS)],
                                   stdout=subprocess.PIPE)
        assert flood.stdout is not None and flood.stdout.readline().strip() == b"ready"
        moves = move_endpoint(store, services, flood)
        sent = int(flood.stdout.read().split()[-1])
        flood = None
        time.sleep(0.2)  # the last SYNs through the node
        lost = untranslated(world.node) - before
        print(f"\n{sent} SYNs, {moves} endpoint moves, {writer.metrics.commits} commits: {lost} untranslated")
        assert sent > 20_000 and moves > 100, (sent, moves)  # enough to lose some in one transaction
        assert services.stats.failed_syncs == 0 and writer.metrics.failed_commits == 0, writer.metrics
        assert lost == 0, f"{lost} of {sent} SYNs left the node untranslated during {moves} endpoint moves"
    finally:
        if flood is not None:
            flood.kill()
            flood.wait(10)
        services.stop()
        nft.close()
        world.node.run(["nft", "delete", "table", "inet", "podnet"], check=False)


# -- the split itself, and a refused step (no kernel) ------------------------------------------------

SLOT = Set("svc-eps4-2", ("ipv4_addr", "inet_proto", "inet_service"), value_type="ipv4_addr . inet_service")
VIPS = Set("svc-ips4", ("ipv4_addr", "inet_proto", "inet_service"), value_type="verdict")
KEY = f"{EXTERNAL_IP} . tcp . 80"


def test_an_endpoint_leaving_is_made_switched_then_broken() -> None:
    """web from three endpoints to two, as the writer's diff orders it in one transaction."""
    tx = (Transaction("inet", "podnet").add_chain("services-4-external-2")
          .flush_chain("services-4-external-3")
          .delete_element(SLOT.name, KEY).delete_element(VIPS.name, KEY)
          .delete_chain("services-4-external-3")
          .add_element(VIPS.name, KEY, value="goto services-4-external-2")
          .add_rule("services-4-external-2", "numgen random mod 2 vmap { 0 : goto eps-0, 1 : goto eps-1 }"))
    make, switch, later = phases(tx, {SLOT.name: SLOT, VIPS.name: VIPS})
    assert [(op.verb, op.name) for op in make.ops] == [
        ("add-chain", "services-4-external-2"), ("add-rule", "services-4-external-2")]
    assert [(op.verb, op.name) for op in switch.ops] == [
        ("delete-element", VIPS.name), ("add-element", VIPS.name)]
    assert [(op.verb, op.name) for op in later.ops] == [
        ("flush-chain", "services-4-external-3"), ("delete-element", SLOT.name),
        ("delete-chain", "services-4-external-3")]


def test_a_change_with_nothing_to_make_or_break_stays_one_transaction() -> None:
    """An endpoint replaced in its slot (a value changed), and set elements in and out: one step."""
    tx = (Transaction("inet", "podnet").delete_element(SLOT.name, KEY)
          .add_element(SLOT.name, KEY, value="10.244.0.13 . 8080")
          .delete_element("service-ips4", "192.0.2.11").add_element("service-ips4", "192.0.2.12"))
    assert phases(tx, {SLOT.name: SLOT, "service-ips4": Set("service-ips4", ("ipv4_addr",))}) == [tx]


def _shape(nft: FakeNft) -> object:
    state = nft.list_table("inet", "t")
    assert state is not None
    elements = {n: sorted((e.key, e.value) for e in s.elements) for n, s in state.sets.items()}
    return dict(state.chains), elements


def test_a_refused_switch_leaves_the_table_as_it_was() -> None:
    """The make step went in, the switch is refused (a rule names a set nobody declares): the table
    is put back as before the commit, and the next commit rebuilds."""
    nft = FakeNft()
    writer = TableWriter(nft, "inet", "t")
    base = Chain("base", type="filter", hook="forward", priority=0, policy="accept",
                 rules=("ip daddr vmap @m1",))
    vmap = Set("m1", ("ipv4_addr",), value_type="verdict")
    writer.contribute("a", Contribution((base, Chain("c1", rules=("accept",))), (vmap,),
                                        {"m1": {"10.0.0.1": "goto c1"}}))
    writer.commit()
    before = _shape(nft)
    writer.contribute("a", Contribution((base, Chain("c1", rules=("ip saddr @nowhere accept",)),
                                         Chain("c2", rules=("drop",))), (vmap,),
                                        {"m1": {"10.0.0.1": "goto c2"}}))
    with pytest.raises(NftError):
        writer.commit()
    assert _shape(nft) == before
    assert writer.metrics.failed_commits >= 1
