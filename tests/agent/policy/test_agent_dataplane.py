"""The real agent's dataplane in the e2e cluster (nine pods on podnet-bridge and podnet-routed, one
``podnet agent`` in the node namespace with ``--pod-cidr`` and a one-second verify period):

* isolation from the first packet: a new pod a policy selects is never reached before its rules
  are in (a continuous probe runs across its ADD), while the peer the policy allows reaches it;
* a pod the manifests do not list stays held back, and is reachable once listed;
* the agent down: the table stays, isolated pods stay isolated, a new pod's ADD succeeds but holds
  it back; a restarted agent adopts the table with no window (sampled throughout) and admits it;
* drift: an element deleted by hand with ``nft`` is put back within a verify period;
* an invalid policy: reported, its pods fail closed, the others keep working;
* ``podnet policy explain`` against the running agent agrees with the semantics.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from nsutil import Netns, NetnsFactory, namespaces
from podnet.agent.policy import allowed

from .agentproc import PODNET
from .cluster import (
    BLOCKED_TIMEOUT,
    CLUSTER_FILE,
    RETRY_TIMEOUT,
    Cell,
    Cluster,
    PodNs,
    Reach,
    addresses,
    build,
    check,
    cni_add,
    cni_del,
    model_pod,
    start_server,
    wait_server,
)
from .world import EGR, ING, TCP, peer, policy, rule, sel

pytestmark = pytest.mark.root

BURST = Path(__file__).with_name("burst.py")
TABLE = ("inet", "podnet")
INGRESS_MAP = "ingress-ip4"
NEW_MAC = "02:00:0a:64:00:32"


@dataclass
class World:
    cluster: Cluster
    factory: NetnsFactory


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with namespaces() as factory:
        cluster = build(factory, tmp_path_factory.mktemp("agent-dataplane"))
        try:
            yield World(cluster, factory)
        finally:
            cluster.agent.stop()


@pytest.fixture
def cluster(world: World) -> Cluster:
    c = world.cluster
    if not c.agent.running:  # a test that failed while it was stopped
        c.agent.start()
    c.reset()
    c.apply([])
    return c


# -- helpers ---------------------------------------------------------------------------------------

def expect(cluster: Cluster, cells: Mapping[Cell, bool]) -> None:
    """These cells probed (TCP 80, IPv4); a cell expected reachable gets one slower second try."""
    got = cluster.probe(cells, 80, TCP, 4, BLOCKED_TIMEOUT)
    again = [c for c in cells if cells[c] and not got[c]]
    if again:
        got.update(cluster.probe(again, 80, TCP, 4, RETRY_TIMEOUT))
    assert got == dict(cells), f"probed {got}, expected {dict(cells)}"


@contextmanager
def new_pod(world: World, key: str, labels: dict[str, str], index: int) -> Iterator[PodNs]:
    """A bridge pod beyond the nine, its server running but not yet wired (the test ADDs it);
    on the way out it leaves the manifests, is deleted (CNI DEL) and its server ended."""
    c = world.cluster
    ip4, ip6 = addresses("bridge", index)
    pod = PodNs(key, world.factory(key.replace("/", "")), ip4, ip6, False, labels)
    start_server(pod)
    wait_server(pod)
    try:
        yield pod
    finally:
        c.pods.pop(key, None)
        c.model.pop(key, None)
        if c.agent.running:
            c.apply()
        cni_del(c.node, pod.netns, "bridge", (ip4, ip6), key, c.agent.socket)
        assert pod.proc is not None
        pod.proc.kill()  # by its PID; the namespace goes with the module
        pod.proc.wait(10)


def add(cluster: Cluster, pod: PodNs, mac: str = "", socket: str | None = None) -> str:
    cluster.pods[pod.key] = pod
    return cni_add(cluster.node, pod.netns, "bridge", (pod.ip4, pod.ip6), pod.key,
                   socket or cluster.agent.socket, mac)


def map_elements(node: Netns, name: str = INGRESS_MAP) -> str:
    return node.run(["nft", "list", "map", *TABLE, name]).stdout


def burst(src: PodNs, dst: PodNs) -> subprocess.Popen[str]:
    proc: subprocess.Popen[str] = src.netns.popen(  # type: ignore[assignment]
        [sys.executable, str(BURST), str(dst.ip4), "80"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
    return proc


def burst_result(proc: subprocess.Popen[str]) -> tuple[int, int, float]:
    out, _ = proc.communicate(timeout=10)
    tries, reached, first = out.split()
    return int(tries), int(reached), float(first)


def pod_is(name: str) -> dict[str, str]:
    return {"pod": name}


# -- isolation from the first packet ---------------------------------------------------------------

@pytest.mark.parametrize("told", [True, False], ids=["ADD-tells-the-agent", "status-tells-the-agent"])
def test_a_new_pod_is_isolated_from_the_first_packet(world: World, cluster: Cluster, told: bool) -> None:
    """Told: the ADD names the pod to the agent, which classifies it before the ADD returns. Not
    told (a plugin without the agent's socket): the agent learns the address from the pod's status
    half a second later; until then the pod range's hold keeps it unreachable (without
    ``--pod-cidr`` the probe gets through in that half second)."""
    only_a = policy("x", "only-x-a-to-new", sel({"app": "new"}), ingress=[rule(peer(sel(pod_is("a"))))])
    cluster.apply([only_a])
    with new_pod(world, "x/new", {"pod": "new", "app": "new"}, 40) as new, pinned(cluster, new):
        # Listed before its ADD, as kubelet's pod object is before its sandbox, but without an
        # address yet.
        cluster.model[new.key] = model_pod(new.key, new.labels)
        cluster.apply()
        denied, control = burst(cluster.pods["x/b"], new), burst(cluster.pods["x/a"], new)
        time.sleep(0.2)  # both probing before the pod has an address
        socket = cluster.agent.socket if told else str(cluster.workdir / "not-told.sock")
        said = add(cluster, new, NEW_MAC, socket)
        time.sleep(0.5)
        cluster.model[new.key] = model_pod(new.key, new.labels, (new.ip4, new.ip6))  # status catches up
        cluster.apply()
        time.sleep(0.5)
        (tries, reached, _), (c_tries, c_reached, c_first) = burst_result(denied), burst_result(control)
        print(f"\nx/b -> x/new: {reached} of {tries} reached; x/a -> x/new: {c_reached} of {c_tries}, "
              f"first after {c_first:.3f} s")
        assert "held back" not in said, said
        assert tries >= 30 and reached == 0, f"x/b reached the new pod {reached} times of {tries}"
        assert c_reached > 0, "the allowed peer never reached the new pod: the probe proves nothing"
        check(cluster, 80, TCP)


@contextmanager
def pinned(cluster: Cluster, new: PodNs) -> Iterator[None]:
    """x/a and x/b know the new pod's MAC before it exists (permanent neighbour entries), so their
    first SYN after its veth comes up goes out at once, not after an ARP retry a second later."""
    for src in ("x/a", "x/b"):
        cluster.pods[src].netns.run(["ip", "neigh", "replace", str(new.ip4), "lladdr", NEW_MAC,
                                     "dev", "eth0", "nud", "permanent"])
    try:
        yield
    finally:
        for src in ("x/a", "x/b"):
            cluster.pods[src].netns.run(["ip", "neigh", "del", str(new.ip4), "dev", "eth0"], check=False)


def test_a_pod_the_manifests_do_not_list_is_held_back_until_listed(world: World, cluster: Cluster) -> None:
    with new_pod(world, "y/unlisted", {"pod": "unlisted"}, 41) as new:
        said = add(cluster, new)
        assert "held back" in said and "y/unlisted" in said, said
        expect(cluster, {("y/a", new.key): False, (new.key, "y/a"): False, ("y/a", "y/b"): True})
        cluster.model[new.key] = model_pod(new.key, new.labels, (new.ip4, new.ip6))
        cluster.apply()
        expect(cluster, {("y/a", new.key): True, (new.key, "y/a"): True, ("x/a", new.key): True})


# -- the agent down and back ---------------------------------------------------------------------

def sampler(node: Netns, out: Path) -> subprocess.Popen[bytes]:
    """``nft list map`` over and over, each sample followed by a separator line."""
    script = f"while :; do nft list map {' '.join(TABLE)} {INGRESS_MAP} 2>&1; echo ====; done"
    with open(out, "wb") as fh:
        return node.popen(["sh", "-c", script], stdout=fh, stderr=subprocess.STDOUT)


def test_agent_down_keeps_isolation_and_a_restart_adopts_the_table(world: World, cluster: Cluster) -> None:
    cluster.apply([policy("x", "deny-ingress", sel(), types=[ING])])
    isolated = str(cluster.pods["x/a"].ip4)
    cells = {("y/a", "x/a"): False, ("y/a", "y/b"): True, ("x/a", "y/a"): True}
    expect(cluster, cells)
    before = map_elements(cluster.node)
    assert isolated in before

    cluster.agent.stop()
    assert map_elements(cluster.node) == before, "stopping the agent changed its table"
    expect(cluster, cells)
    with new_pod(world, "y/late", {"pod": "late"}, 42) as late:
        cluster.model[late.key] = model_pod(late.key, late.labels, (late.ip4, late.ip6))
        cluster.manifests.write(CLUSTER_FILE, cluster.objects())  # read by the next agent
        said = add(cluster, late)
        assert "held back" in said and "y/late" in said, said
        expect(cluster, {("y/a", late.key): False, (late.key, "y/a"): False})

        samples_file = cluster.workdir / "samples.txt"
        sampling = sampler(cluster.node, samples_file)
        try:
            time.sleep(0.1)
            cluster.agent.start()
            time.sleep(0.2)
        finally:
            sampling.terminate()  # by its PID
            sampling.wait(10)
        samples = [s for s in samples_file.read_text().split("====\n") if s.strip()]
        missing = [s for s in samples if isolated not in s]
        print(f"\n{len(samples)} samples of {INGRESS_MAP} across the restart")
        assert len(samples) >= 10, samples
        assert not missing, f"{len(missing)} of {len(samples)} samples lack {isolated}: {missing[0]}"
        status = cluster.agent.status()
        assert status["table"]["failed_commits"] == 0, status
        expect(cluster, {("y/a", late.key): True, (late.key, "y/a"): True, **cells})


# -- drift -----------------------------------------------------------------------------------------

def test_an_element_deleted_by_hand_is_repaired_within_a_verify_period(cluster: Cluster) -> None:
    cluster.apply([policy("x", "deny-ingress", sel(), types=[ING])])
    victim = str(cluster.pods["x/b"].ip4)
    repairs = cluster.agent.status()["table"]["drift_repairs"]
    cluster.node.run(["nft", "delete", "element", *TABLE, INGRESS_MAP, f"{{ {victim} }}"])
    deleted = time.monotonic()
    assert victim not in map_elements(cluster.node)
    period = cluster.agent.verify_period
    while victim not in map_elements(cluster.node):
        # The verify runs once a period; the sync loop looks at most every period too.
        assert time.monotonic() - deleted < 2 * period + 1.0, "the deleted element was not put back"
        time.sleep(0.05)
    took = time.monotonic() - deleted
    print(f"\nrepaired after {took:.2f} s (verify period {period} s)")
    shown = cluster.node.run([str(PODNET), "status", "--json", "--socket", cluster.agent.socket,
                              "--daemon-socket", str(cluster.workdir / "no-daemon.sock")], check=False)
    table = json.loads(shown.stdout)["agent"]["table"]
    assert table["drift_repairs"] >= repairs + 1, table
    expect(cluster, {("y/a", "x/b"): False, ("x/b", "y/a"): True})


# -- an invalid policy -----------------------------------------------------------------------------

def test_an_invalid_policy_is_reported_and_fails_closed(cluster: Cluster) -> None:
    broken = policy("x", "broken", sel(pod_is("a")), ingress=[rule()], error="written invalid")
    cluster.apply([broken, policy("y", "deny-ingress", sel(), types=[ING])])
    status = cluster.agent.status()
    assert "endPort" in status["invalid_policies"].get("x/broken", ""), status["invalid_policies"]
    assert "x/broken" not in str(status["invalid_policies"].keys() - {"x/broken"})
    assert "broken" in cluster.agent.log_text(400) and "endPort" in cluster.agent.log_text(400)
    text = cluster.node.run([str(PODNET), "status", "--socket", cluster.agent.socket], check=False).stdout
    assert "invalid policy x/broken" in text, text
    check(cluster, 80, TCP, Reach(cluster.pods).ingress("x/a", False).egress("x/a", False).peer(to="y/*"))


# -- podnet policy explain -------------------------------------------------------------------------

@pytest.mark.parametrize(("src", "dst"), [("x/b", "x/a"), ("x/c", "x/a"), ("x/a", "y/c")])
def test_explain_from_the_running_agent_agrees_with_semantics(cluster: Cluster, src: str, dst: str) -> None:
    cluster.apply([policy("x", "x-a-allows-x-b", sel(pod_is("a")), ingress=[rule(peer(sel(pod_is("b"))))],
                          egress=[rule(peer(sel(pod_is("b"))))], types=[ING, EGR])])
    want = allowed(cluster.inputs(), cluster.model[src], cluster.model[dst], 80, TCP)
    done = cluster.node.run([str(PODNET), "policy", "explain", src, dst, "80/TCP",
                             "--socket", cluster.agent.socket], check=False)
    assert done.returncode == 0, done.stderr
    print(f"\n{done.stdout}")
    head = done.stdout.splitlines()[0]
    assert head.startswith(f"{src} ({cluster.pods[src].ip4}) -> {dst}"), head
    assert head.endswith("ALLOWED" if want else "DENIED"), (want, done.stdout)
    assert "x/x-a-allows-x-b" in done.stdout
    expect(cluster, {(src, dst): want})
