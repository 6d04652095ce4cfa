"""The order of the writer's incremental transaction against the real kernel (libnftables in a
throw-away namespace): every sequence of contributions below must commit incrementally, with no
commit refused and no rebuild after the first.

The kernel refuses (EBUSY) to delete a chain while a rule or a verdict-map element still jumps or
goes to it, and a set while a rule still looks it up. Within one owner's contribution a reference
and what it names come and go together; across owners they need not: the policy controller hands
the writer one part per policy and then the shared part (the isolation chains that jump to the
policy chains), and a commit by another controller on the same writer can come between them. Then
a policy chain is gone from the union while an isolation chain that stays still jumps to it.

Each case commits after every single contribution, so it also commits the union in each of those
in-between states.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from ipaddress import ip_address

import pytest

from nsutil import Netns
from podnet.agent.model import Direction, LabelSelector, Namespace, NetworkPolicy, Peer, Pod, PolicyPort, Rule
from podnet.agent.policy import PolicyInputs
from podnet.agent.policy.compile import PolicyCompiler
from podnet.dataplane.contribution import Chain, Contribution, Set
from podnet.dataplane.writer import TableWriter
from podnet.kernel.nft import LibNftables

pytestmark = pytest.mark.root
TABLE = "podnet-order"
Step = tuple[str, Contribution | None]  # owner, its contribution (None: withdrawn)

BASE = Chain("ingress", type="filter", hook="forward", priority=0, policy="accept",
             rules=("ct state established,related accept", "ip daddr vmap @pods"))
PODS = Set("pods", ("ipv4_addr",), value_type="verdict")


@pytest.fixture
def nft(node: Netns) -> Iterator[LibNftables]:
    with LibNftables(netns=node.path) as lib:
        yield lib


def kernel_chains(nft: LibNftables) -> set[str]:
    state = nft.list_table("inet", TABLE, elements=False)
    return set() if state is None else set(state.chains)


def run(nft: LibNftables, steps: Sequence[Step]) -> TableWriter:
    """Each step contributed and committed; every commit must be applied, none rebuilt."""
    w = TableWriter(nft, "inet", TABLE)
    for number, (owner, contribution) in enumerate(steps):
        if contribution is None:
            w.withdraw(owner)
        else:
            w.contribute(owner, contribution)
        w.commit()
        assert (w.metrics.failed_commits, w.metrics.full_resyncs) == (0, 1), \
            f"step {number} ({owner}): {w.metrics.last_error}"
    assert w.verify() == 0, w.metrics.last_error
    return w


def settled(nft: LibNftables, w: TableWriter) -> None:
    """The union is whole again: the kernel holds exactly its chains (nothing kept for a reference)."""
    assert kernel_chains(nft) == set(w.desired().chains)
    assert w.verify() == 0


# -- hand-made parts shaped like compiled policy ---------------------------------------------------

def policy_part(name: str, peers: Sequence[str] = ("10.1.0.1",), port: int = 80) -> Contribution:
    """A policy's own chain and the sets its rules look up."""
    rule = f"ip saddr @peers-{name} meta l4proto . th dport @ports-{port} accept"
    return Contribution(
        chains=(Chain(f"pol-{name}", rules=(rule,)),),
        sets=(Set(f"peers-{name}", ("ipv4_addr",)), Set(f"ports-{port}", ("inet_proto", "inet_service"))),
        elements={f"peers-{name}": dict.fromkeys(peers), f"ports-{port}": {f"tcp . {port}": None}},
    )


def isolation(group: str, policies: Sequence[str]) -> Chain:
    jumps = [f"jump pol-{p}" for p in policies]
    return Chain(f"iso-{group}", rules=("ct state invalid drop", *jumps, "drop"))


def shared(groups: Mapping[str, Sequence[str]], pods: Mapping[str, str]) -> Contribution:
    """The base chain, the verdict map (pod address -> its isolation chain) and the isolation chains."""
    chains = [BASE, *(isolation(g, ps) for g, ps in sorted(groups.items()))]
    return Contribution(tuple(chains), (PODS,), {"pods": {ip: f"goto iso-{g}" for ip, g in pods.items()}})


def joined(*parts: Contribution) -> Contribution:
    elements: dict[str, Mapping[str, str | None]] = {}
    for part in parts:
        elements.update(part.elements)
    return Contribution(tuple(c for p in parts for c in p.chains), tuple(s for p in parts for s in p.sets),
                        elements)


A_AND_B = shared({"ab": ["a", "b"]}, {"10.0.0.1": "ab"})
START: list[Step] = [("pol/a", policy_part("a")), ("pol/b", policy_part("b", port=81)), ("shared", A_AND_B)]


def test_a_policy_withdrawn_before_the_isolation_chain_that_jumps_to_it(nft: LibNftables) -> None:
    """The failure seen under policy churn: the policy's part goes first, a commit comes, then the
    shared part without the jump. The chain stays (emptied) while the jump stays, then goes."""
    w = run(nft, [*START, ("pol/a", None)])
    listed = nft.list_table("inet", TABLE, elements=False)
    assert listed is not None and listed.chains["pol-a"] == [] and "peers-a" not in listed.sets
    assert "jump pol-a" in nft.run(f"list chain inet {TABLE} iso-ab")
    w.contribute("shared", shared({"b": ["b"]}, {"10.0.0.1": "b"}))
    w.commit()
    assert w.metrics.failed_commits == 0 and w.metrics.full_resyncs == 1
    settled(nft, w)
    assert "pol-a" not in kernel_chains(nft)


def test_a_withdrawn_chain_stays_while_a_map_element_goes_to_it(nft: LibNftables) -> None:
    """The shared map still sends a pod to a chain whose owner is gone; the element goes later, in a
    commit of elements only, and the chain with it."""
    group = Contribution((isolation("g", ["a"]),))
    w = run(nft, [*START[:1], ("group", group), ("shared", shared({}, {})), ("map", Contribution(
        (), (PODS,), {"pods": {"10.0.0.9": "goto iso-g"}})), ("group", None)])
    assert "iso-g" in kernel_chains(nft)
    w.contribute("map", Contribution((), (PODS,), {"pods": {}}))
    w.commit()
    assert w.metrics.failed_commits == 0 and w.metrics.full_resyncs == 1
    settled(nft, w)
    assert "iso-g" not in kernel_chains(nft) and "pol-a" in kernel_chains(nft)


def test_a_rewritten_chain_that_still_jumps_to_a_withdrawn_chain(nft: LibNftables) -> None:
    """The chain that jumps is rewritten in the same commit (a rule added) and keeps the jump."""
    w = run(nft, [*START, ("pol/b", None),
                  ("shared", shared({"ab": ["a", "b", "a"]}, {"10.0.0.1": "ab"})),
                  ("shared", shared({"a": ["a"]}, {"10.0.0.1": "a"}))])
    settled(nft, w)
    assert "pol-b" not in kernel_chains(nft)


def test_a_withdrawn_chain_declared_again_while_still_jumped_to(nft: LibNftables) -> None:
    w = run(nft, [*START, ("pol/a", None), ("pol/a", policy_part("a", peers=("10.1.0.7",)))])
    settled(nft, w)
    listed = nft.list_table("inet", TABLE)
    assert listed is not None and len(listed.chains["pol-a"]) == 1
    assert [e.key for e in listed.elements("peers-a")] == ["10.1.0.7"]


def test_two_chains_jump_to_a_withdrawn_chain_and_leave_one_by_one(nft: LibNftables) -> None:
    two = shared({"ab": ["a", "b"], "a": ["a"]}, {"10.0.0.1": "ab", "10.0.0.2": "a"})
    w = run(nft, [*START, ("shared", two), ("pol/a", None),
                  ("shared", shared({"b": ["b"], "a": ["a"]}, {"10.0.0.1": "b", "10.0.0.2": "a"}))])
    assert "pol-a" in kernel_chains(nft)  # iso-a still jumps to it
    w.contribute("shared", shared({"b": ["b"]}, {"10.0.0.1": "b"}))
    w.commit()
    assert w.metrics.failed_commits == 0 and w.metrics.full_resyncs == 1
    settled(nft, w)


@pytest.mark.parametrize("steps", [
    # A whole isolation group goes with its pod's element, in one commit.
    [*START, ("shared", shared({"a": ["a"]}, {"10.0.0.1": "a"})), ("shared", shared({}, {}))],
    # The pod's element changes value (goto iso-ab -> goto iso-b) and iso-ab goes.
    [*START, ("shared", shared({"b": ["b"]}, {"10.0.0.1": "b"}))],
    # A policy goes after the group that jumped to it; the port set another policy shares stays.
    [*START, ("pol/c", policy_part("c", port=81)), ("shared", shared({"c": ["c"]}, {"10.0.0.1": "c"})),
     ("pol/b", None), ("pol/a", None)],
    # One owner's chain, the chain jumping to it and the element going there, all gone in one commit.
    [("combo", joined(policy_part("x"), shared({"x": ["x"]}, {"10.0.0.5": "x"}))), ("combo", None)],
    # A set re-declared (interval) while a chain of another owner, not rewritten, looks it up.
    [("sets", Contribution((), (Set("shared-peers", ("ipv4_addr",)),), {"shared-peers": {"10.2.0.1": None}})),
     ("reader", Contribution((Chain("reader", rules=("ip saddr @shared-peers accept",)),))),
     ("sets", Contribution((), (Set("shared-peers", ("ipv4_addr",), flags=("interval",)),),
                           {"shared-peers": {"10.2.0.0/24": None}}))],
], ids=["group-gone", "value-moves", "shared-set-stays", "all-in-one-owner", "set-redeclared"])
def test_consistent_changes_commit_incrementally(nft: LibNftables, steps: list[Step]) -> None:
    settled(nft, run(nft, steps))


# -- the real policy compiler ----------------------------------------------------------------------

NS = "default"
NODE = "node-1"
NAMESPACES = {NS: Namespace(NS, {"kubernetes.io/metadata.name": NS})}


def sel(**labels: str) -> LabelSelector:
    return LabelSelector(tuple(sorted(labels.items())))


def pod(name: str, address: str, **labels: str) -> Pod:
    return Pod(NS, name, labels=labels, ips=(ip_address(address),), node_name=NODE)


def deny_all() -> NetworkPolicy:
    return NetworkPolicy(NS, "default-deny", sel(), frozenset({Direction.INGRESS}))


def allow(name: str, selected: LabelSelector, port: int, egress: bool = False) -> NetworkPolicy:
    rules = (Rule((Peer(pod_selector=sel(app="web")),), (PolicyPort(port=port),)),)
    directions = {Direction.INGRESS, *([Direction.EGRESS] if egress else [])}
    return NetworkPolicy(NS, name, selected, frozenset(directions), rules, rules if egress else ())


def sync(compiler: PolicyCompiler, w: TableWriter, pods: Mapping[str, Pod],
         policies: Mapping[str, NetworkPolicy]) -> None:
    """One policy sync as the agent's loop does it (every changed owner, the shared part last), with a
    commit after each contribution: where another controller's commit may come."""
    changes = compiler.update(PolicyInputs.of(NAMESPACES, pods.values(), policies.values(), NODE))
    for owner, part in changes.items():
        w.contribute(owner, part)
        w.commit()
        assert w.metrics.failed_commits == 0, f"{owner}: {w.metrics.last_error}"


def test_a_policy_removed_while_its_pod_stays_compiled(nft: LibNftables) -> None:
    """The smallest sequence of the real compiler that was refused: a pod isolated by a deny-all and
    by one policy with rules; the policy is deleted."""
    w, compiler = TableWriter(nft, "inet", TABLE), PolicyCompiler()
    pods = {"ph0": pod("ph0", "10.244.0.100", n="0")}
    policies = {"default-deny": deny_all(), "p0": allow("p0", sel(n="0"), 9000)}
    sync(compiler, w, pods, policies)
    del policies["p0"]
    sync(compiler, w, pods, policies)
    assert (w.metrics.failed_commits, w.metrics.full_resyncs) == (0, 1), w.metrics.last_error
    settled(nft, w)


@pytest.mark.parametrize("seed", [1, 2])
def test_random_policy_churn_commits_incrementally(nft: LibNftables, seed: int) -> None:
    """Pods added, removed and relabelled, policies added, changed and removed, with a commit after
    each owner's part: no commit refused, no rebuild after the first, and after each whole sync the
    kernel holds exactly the union's chains."""
    rng = random.Random(seed)
    w, compiler = TableWriter(nft, "inet", TABLE), PolicyCompiler()
    pods: dict[str, Pod] = {}
    policies: dict[str, NetworkPolicy] = {"default-deny": deny_all()}
    for step in range(150):
        what = rng.randrange(4)
        i = rng.randrange(6)
        if what == 0:
            key = f"p{i}"
            if key in pods and rng.random() < 0.5:
                del pods[key]
            else:
                labels = {"app": rng.choice(["web", "db"]), "n": str(rng.randrange(4))}
                pods[key] = replace(pod(key, f"10.244.0.{10 + i}"), labels=labels)
        elif what == 1 and pods:
            key = rng.choice(sorted(pods))
            pods[key] = replace(pods[key], labels={**pods[key].labels, "n": str(rng.randrange(4))})
        elif what == 2:
            name = f"churn-{i % 4}"
            if name in policies:
                del policies[name]
            else:
                port = 9000 + rng.randrange(3)
                policies[name] = allow(name, sel(n=str(i % 4)), port, egress=rng.random() < 0.3)
        else:
            selected = sel(app=rng.choice(["web", "db"]))
            policies["web"] = allow("web", selected, 8080, egress=rng.random() < 0.5)
            if rng.random() < 0.3:
                del policies["web"]
        sync(compiler, w, pods, policies)
        if step % 30 == 29:
            settled(nft, w)
    assert (w.metrics.failed_commits, w.metrics.full_resyncs) == (0, 1), w.metrics.last_error
    settled(nft, w)
