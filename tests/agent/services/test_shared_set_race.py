"""The seed failure of kube-router (issues 1081 and 1732) as a test that can fail: two controllers
sharing a set, one of them losing the other's entry.

A node namespace with a bridge, three endpoint pods of Service ``web`` (ClusterIP 10.96.0.10) and a
client pod. The policy controller (:class:`PolicySync`) and the service proxy (:class:`ServiceSync`)
run their real loops, each on its own thread woken by its own store changes, on ONE real
:class:`TableWriter` (libnftables in the node namespace). The Service gains an ExternalIP once both
have synced (kube-router's order: the proxy had set up its set, the policy controller had taken
its copy, then the ExternalIP came); then a churn thread relabels, adds and removes pods, adds and
removes policies and moves an endpoint in and out of the slice, until the two controllers have
synced ``SYNCS`` times in total. Meanwhile a sampler reads the kernel's ``service-ips4`` set in a
tight loop (its own libnftables context) and the client pod connects to the ExternalIP every few
milliseconds. The ExternalIP must be in every sample and every connection must be answered.

The same scenario with :class:`naive_writer.NaiveWriter` (each controller restores the table's sets
from its own earlier copy) must lose the ExternalIP: the test shows the sample that lacks it.

``PODNET_RACE_SYNCS`` sets the number of syncs (default 2,000; see ``SYNCS``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest

from nsutil import Netns, namespaces
from podnet.agent.model import Endpoint, EndpointPort, EndpointSlice, Namespace, Pod, Service
from podnet.agent.objects import Kind
from podnet.agent.service_sync import ServiceSync
from podnet.agent.store import Event, EventType, Store
from podnet.agent.sync import PolicySync
from podnet.dataplane.writer import TableWriter
from podnet.kernel.nft import LibNftables, NftError

from ..policy.world import ING, peer, policy, port, rule, sel
from . import bridged
from .bridged import CLIENT, ENDPOINTS, PROBE
from .naive_writer import NaiveWriter
from .world import service, tcp

pytestmark = pytest.mark.root

HERE = Path(__file__).parent
LOOP = str(HERE / "trafficloop.py")
NODE = "node-1"
NS = "default"
CLUSTER_IP, EXTERNAL_IP, OTHER_IP = "10.96.0.10", "192.0.2.10", "192.0.2.11"
POD_RANGE = ip_network("10.244.0.0/24")
# The loops make about 100 syncs a second on a busy two-core machine, so 10,000 take ~100 s, more
# than the suite's budget allows this test: the default is 2,000; PODNET_RACE_SYNCS=10000 runs all.
SYNCS = int(os.environ.get("PODNET_RACE_SYNCS", "2000"))
TIME_LIMIT = max(60.0, SYNCS / 40)  # seconds for the one writer's run: the syncs must fit in it


# -- the world ---------------------------------------------------------------------------------------

@dataclass
class Node:
    node: Netns
    client: Netns


@pytest.fixture(scope="module")
def wired() -> Iterator[Node]:
    with namespaces() as make:
        made = bridged.wire(make)
        yield Node(made.node, made.client)


def web(external: bool) -> Service:
    return service("web", CLUSTER_IP, tcp("http", 80), ns=NS, external_ips=(EXTERNAL_IP,) if external else ())


def other(external: bool) -> Service:
    """A second service, whose ExternalIP comes and goes in the shared set all through the run."""
    ips = (OTHER_IP,) if external else ()
    return service("other", "10.96.0.11", tcp("http", 80), ns=NS, external_ips=ips)


def web_slice(with_p2: bool = True, name: str = "web") -> EndpointSlice:
    names = [n for n in ENDPOINTS if with_p2 or n != "p2"]
    eps = tuple(Endpoint((ip_address(ENDPOINTS[n]),), node_name=NODE) for n in names)
    return EndpointSlice(NS, f"{name}-4", name, "IPv4", eps, (EndpointPort("http", 8080),))


def pod(name: str, address: str, **labels: str) -> Pod:
    return Pod(NS, name, labels=labels, ips=(ip_address(address),), node_name=NODE)


def first_objects() -> list[Any]:
    """Endpoints isolated by a default deny and opened to the client on 8080 by a second policy."""
    return [Namespace(NS, {"kubernetes.io/metadata.name": NS}),
            *(pod(n, a, app="web", rev="0") for n, a in ENDPOINTS.items()),
            pod(CLIENT[0], CLIENT[1], role="client"),
            policy(NS, "default-deny", sel(), types=[ING]),
            policy(NS, "web-from-client", sel({"app": "web"}),
                   ingress=[rule(peer(sel({"role": "client"})), ports=[port(8080)])]),
            web(external=False), web_slice(), other(external=False), web_slice(name="other")]


def put(store: Store, obj: Any) -> None:
    store.apply(Event(EventType.MODIFIED, obj), "test")


def delete(store: Store, obj: Any) -> None:
    store.apply(Event(EventType.DELETED, obj), "test")


class Churn:
    """Pod and policy churn for the policy controller; for the proxy, another service's ExternalIP
    in and out of the shared set, and one of web's endpoints out of its slice and back (which
    rewrites a rule, so less often). None of it changes whether the client may reach web."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.step = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="churn", daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.once()
            time.sleep(0.001)

    def once(self) -> None:
        i = self.step = self.step + 1
        what = i % 4
        if what == 0:  # an endpoint relabelled (its policy stays: app=web)
            name = list(ENDPOINTS)[i // 4 % 3]
            put(self.store, pod(name, ENDPOINTS[name], app="web", rev=str(i)))
        elif what == 1:  # a pod added, or removed again
            j = i // 4 % 40
            phantom = pod(f"ph{j}", f"10.244.0.{100 + j}", app="phantom", n=str(j))
            (delete if self.store.pod(NS, phantom.name) else put)(self.store, phantom)
        elif what == 2:  # a policy added, or removed again
            j = i // 4 % 20
            p = policy(NS, f"churn-{j}", sel({"n": str(j)}),
                       ingress=[rule(peer(sel({"app": "web"})), ports=[port(9000 + j)])])
            (delete if self.store.policy(NS, p.name) else put)(self.store, p)
        if i % 2:  # the other service's ExternalIP in or out of the shared set
            put(self.store, other(external=i % 4 == 1))
        if i % 16 == 2:  # one of web's endpoints out of its slice, or back
            put(self.store, web_slice(with_p2=i % 32 == 2))


# -- sampling the kernel and the client --------------------------------------------------------------

@dataclass
class Sample:
    at: float
    elements: list[str]
    policy_syncs: int
    service_syncs: int


@dataclass
class Report:
    samples: int = 0
    lost: list[Sample] = field(default_factory=list)
    syncs: int = 0
    seconds: float = 0.0
    traffic: dict[str, Any] = field(default_factory=dict)
    split: tuple[int, int] = (0, 0)  # (policy, service) syncs
    writer: str = ""  # the one writer's metrics (full rebuilds and drift repairs happened when)


def elements_of(nft: LibNftables, set_name: str) -> list[str]:
    """The set's elements, read with one libnftables command. Text, not JSON: libnftables 1.0.6
    aborted the process (json.c set_dtype_json assertion) listing a set in JSON under churn."""
    text = nft.run(f"list set inet podnet {set_name}")
    _, found, rest = text.partition("elements = {")
    return [e.strip() for e in rest.partition("}")[0].split(",") if e.strip()] if found else []


def read_set(nft: LibNftables) -> list[str]:
    return elements_of(nft, "service-ips4")


class Sampler:
    def __init__(self, node: Netns, counts: Callable[[], tuple[int, int]]) -> None:
        self.nft = LibNftables(netns=node.path)
        self.counts = counts
        self.report = Report()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self.start = time.monotonic()

    def _run(self) -> None:
        while not self.stop.is_set():
            elements = read_set(self.nft)
            self.report.samples += 1
            if EXTERNAL_IP not in elements:
                self.report.lost.append(Sample(round(time.monotonic() - self.start, 4), elements,
                                               *self.counts()))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.nft.close()


# -- the scenario ------------------------------------------------------------------------------------

Writers = tuple[Any, Any, Callable[[], None]]  # the policy controller's, the proxy's, close


def real_writers(node: Netns) -> Writers:
    nft = LibNftables(netns=node.path)
    writer = TableWriter(nft, "inet", "podnet", verify_period=0.5)
    return writer, writer, nft.close


def naive_writers(node: Netns) -> Writers:
    a, b = LibNftables(netns=node.path), LibNftables(netns=node.path)

    def close() -> None:
        a.close()
        b.close()
    return NaiveWriter(a, "inet", "podnet"), NaiveWriter(b, "inet", "podnet"), close


def wait_for(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def scenario(wired: Node, writers: Writers, syncs: int, time_limit: float,
             enough: Callable[[Report], bool] = lambda r: False) -> Report:
    policy_writer, service_writer, close = writers
    store = Store(NODE)
    store.register_source("test")
    for kind in Kind:
        store.replace(kind, "test", [o for o in first_objects() if _kind(o) is kind])
    services = ServiceSync(store, service_writer, pod_ranges=[POD_RANGE], retry_seconds=0.02)
    policies = PolicySync(store, policy_writer, pod_ranges=[POD_RANGE])
    churn = Churn(store)
    sampler: Sampler | None = None
    traffic: subprocess.Popen[bytes] | None = None
    try:
        # The proxy's table first, then the policy controller's first sync (its copy, if it keeps one).
        services.start()
        wait_for(lambda: services.stats.syncs >= 1, "the first service sync")
        policies.start()
        wait_for(lambda: policies.stats.syncs >= 1, "the first policy sync")
        put(store, web(external=True))
        sampler = Sampler(wired.node, lambda: (policies.stats.syncs, services.stats.syncs))
        wait_for(lambda: EXTERNAL_IP in read_set(sampler.nft), "the ExternalIP in service-ips4")
        traffic = wired.client.popen([sys.executable, LOOP, EXTERNAL_IP, "80"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert traffic.stdout is not None and traffic.stdout.readline().strip() == b"ready"
        base = policies.stats.syncs + services.stats.syncs
        start = time.monotonic()
        sampler.thread.start()
        churn.thread.start()
        report = sampler.report
        while (report.syncs < syncs and time.monotonic() - start < time_limit) and not enough(report):
            time.sleep(0.05)
            report.syncs = policies.stats.syncs + services.stats.syncs - base
        report.seconds = round(time.monotonic() - start, 2)
        report.split = (policies.stats.syncs, services.stats.syncs)
        if isinstance(policy_writer, TableWriter):
            report.writer = str(policy_writer.metrics)
        churn.stop.set()
        churn.thread.join(10)
        report.traffic = _finish(traffic)
        traffic = None
        return report
    finally:
        churn.stop.set()
        if traffic is not None:
            traffic.kill()
        if sampler is not None:
            sampler.close()
        policies.stop()
        services.stop()
        close()
        wired.node.run(["nft", "delete", "table", "inet", "podnet"], check=False)


def _finish(traffic: subprocess.Popen[bytes]) -> dict[str, Any]:
    out, _ = traffic.communicate(b"", timeout=20)
    result: dict[str, Any] = json.loads(out.decode().splitlines()[-1])
    return result


def _kind(obj: object) -> Kind:
    return {Namespace: Kind.NAMESPACE, Pod: Kind.POD, Service: Kind.SERVICE,
            EndpointSlice: Kind.ENDPOINT_SLICE}.get(type(obj), Kind.NETWORK_POLICY)


def test_one_writer_never_loses_the_external_ip(wired: Node) -> None:
    report = scenario(wired, real_writers(wired.node), SYNCS, TIME_LIMIT)
    print(f"\none writer: {report.syncs} syncs (policy, service: {report.split}) in {report.seconds}s, "
          f"{report.samples} samples, {len(report.lost)} without the ExternalIP; traffic {report.traffic}; "
          f"writer {report.writer}")
    assert not report.lost, f"the ExternalIP was missing: {report.lost[:3]}"
    assert report.syncs >= SYNCS, f"only {report.syncs} syncs in {TIME_LIMIT}s (PODNET_RACE_SYNCS={SYNCS})"
    assert report.samples > 100, report.samples
    assert report.traffic["failed"] == 0, report.traffic
    assert report.traffic["ok"] > 100, report.traffic


def test_naive_writers_lose_the_external_ip(wired: Node) -> None:
    """The negative control: the same scenario, each controller restoring from its own copy."""
    report = scenario(wired, naive_writers(wired.node), SYNCS, 20.0,
                      enough=lambda r: len(r.lost) >= 5 and r.syncs >= 100)
    print(f"\nnaive writers: {report.syncs} syncs in {report.seconds}s, {report.samples} samples, "
          f"{len(report.lost)} without the ExternalIP, first: {report.lost[:1]}; traffic {report.traffic}")
    assert report.lost, "the naive writers kept the ExternalIP: this test could not fail"
    first = report.lost[0]
    assert EXTERNAL_IP not in first.elements and CLUSTER_IP in first.elements, first



def known_pods(nft: LibNftables) -> list[str]:
    return elements_of(nft, "known-pods4")


def both_in(nft: LibNftables) -> bool:
    try:
        return EXTERNAL_IP in read_set(nft) and ENDPOINTS["p0"] in known_pods(nft)
    except NftError:
        return False  # not made yet


def test_an_element_deleted_by_hand_is_repaired_and_no_contribution_is_lost(wired: Node) -> None:
    """An outside writer deletes the proxy's ExternalIP and one of policy's known pods from the
    table: verify (run by the policy loop every 0.2 s) puts both back, both controllers keep
    syncing meanwhile, and neither's contribution ever loses them."""
    nft, reader = LibNftables(netns=wired.node.path), LibNftables(netns=wired.node.path)
    writer = TableWriter(nft, "inet", "podnet", verify_period=0.2)
    store = Store(NODE)
    store.register_source("test")
    for kind in Kind:
        store.replace(kind, "test", [o for o in first_objects() if _kind(o) is kind])
    put(store, web(external=True))
    services = ServiceSync(store, writer, pod_ranges=[POD_RANGE], retry_seconds=0.02)
    policies = PolicySync(store, writer, pod_ranges=[POD_RANGE])
    try:
        services.start()
        policies.start()
        wait_for(lambda: both_in(reader), "a table")
        repairs = writer.metrics.drift_repairs
        for set_name, element in (("service-ips4", EXTERNAL_IP), ("known-pods4", ENDPOINTS["p0"])):
            wired.node.run(["nft", "delete", "element", "inet", "podnet", set_name, f"{{ {element} }}"])
        # Both controllers sync on: an incremental commit neither re-adds nor forgets the elements.
        put(store, other(external=True))
        put(store, pod("p1", ENDPOINTS["p1"], app="web", rev="hand"))
        wait_for(lambda: both_in(reader) and writer.metrics.drift_repairs > repairs,
                 "verify to repair the table", timeout=5)
        desired = writer.desired().elements
        assert EXTERNAL_IP in desired["service-ips4"] and OTHER_IP in desired["service-ips4"], desired
        assert ENDPOINTS["p0"] in desired["known-pods4"], desired
        got = json.loads(wired.client.run([sys.executable, PROBE, "tcp", EXTERNAL_IP, "80", "5"]).stdout)
        assert set(got) <= set(ENDPOINTS) and len(got) == 5, got
    finally:
        policies.stop()
        services.stop()
        nft.close()
        reader.close()
        wired.node.run(["nft", "delete", "table", "inet", "podnet"], check=False)
