"""PolicyCompiler between snapshots: after any change, its parts equal a fresh compile's, and what
update() returns is exactly the owners whose part changed (so the writer's union ends up the same)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podnet.agent.model import Namespace, NetworkPolicy, Pod
from podnet.agent.policy import PolicyInputs
from podnet.agent.policy.compile import SHARED_OWNER, PolicyCompiler, policy_owner
from podnet.agent.policy.names import peer_set
from podnet.dataplane.contribution import EMPTY
from podnet.dataplane.union import Union

from .test_compile_oracle import NODE, namespaces, pods, policies
from .world import ns, peer, pod, policy, port, rule, sel

World = tuple[dict[str, Namespace], list[Pod], list[NetworkPolicy]]


def fresh(inputs: PolicyInputs) -> dict[str, object]:
    compiler = PolicyCompiler()
    compiler.update(inputs)
    return dict(compiler.parts)


@st.composite
def mixed(draw: st.DrawFn, a: World, b: World) -> World:
    """Each namespace, pod and policy from one world or the other (unchanged ones are shared)."""
    spaces = {n: draw(st.sampled_from([a[0][n], b[0][n]])) for n in a[0]}
    pod_list = [draw(st.sampled_from([x, y])) for x, y in zip(a[1], b[1], strict=True)]
    by_key = {p.key: p for p in a[2]} | {p.key: p for p in b[2]}
    return spaces, pod_list, [p for p in by_key.values() if draw(st.booleans())]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.tuples(namespaces, pods(), policies()), st.tuples(namespaces, pods(), policies()), st.data())
def test_after_any_change_the_parts_are_a_fresh_compile(first: World, second: World,
                                                        data: st.DataObject) -> None:
    compiler = PolicyCompiler()
    before = dict(compiler.update(PolicyInputs.of(*first, NODE)))
    assert before == compiler.parts
    for _ in range(3):
        world = data.draw(mixed(first, second))
        inputs = PolicyInputs.of(*world, NODE)
        old = dict(compiler.parts)
        changes = compiler.update(inputs)
        assert compiler.parts == fresh(inputs)
        union = Union()  # every part is one the writer takes, and all of them together too
        for owner, part in compiler.parts.items():
            union.replace(owner, part)
        owners = old.keys() | compiler.parts.keys()
        assert set(changes) == {o for o in owners if old.get(o, EMPTY) != compiler.parts.get(o, EMPTY)}
        assert compiler.update(inputs) == {}  # the same snapshot again changes nothing


def test_one_pod_relabeled_recompiles_only_the_policies_it_touches() -> None:
    spaces = {n.name: n for n in (ns("x"), ns("y"))}
    pod_list = [pod("x", f"p{i}", f"10.0.0.{i + 1}", app=f"app{i}") for i in range(20)]
    peers = [rule(peer(sel({"app": f"app{(i + 1) % 20}"})), ports=[port(80)]) for i in range(20)]
    pols = [policy("x", f"pol{i}", sel({"app": f"app{i}"}), ingress=[peers[i]]) for i in range(20)]
    pols.append(policy("y", "other", sel(), ingress=[rule(peer(sel()))]))
    compiler = PolicyCompiler()
    compiler.update(PolicyInputs.of(spaces, pod_list, pols, NODE))
    moved = replace(pod_list[3], labels={"app": "app7"})
    changes = compiler.update(PolicyInputs.of(spaces, [*pod_list[:3], moved, *pod_list[4:]], pols, NODE))
    # p3 left pol3 (selected) and pol2's peers, joined pol6's peers and pol7 (whose part holds no
    # selected pod: no named port), and its verdict moved (the shared part).
    assert set(changes) == {SHARED_OWNER, *(policy_owner(("x", f"pol{i}")) for i in (2, 3, 6))}
    assert changes[policy_owner(("x", "pol3"))] == EMPTY  # it selects no pod any more
    pol6 = changes[policy_owner(("x", "pol6"))]
    assert "10.0.0.4" in pol6.elements[peer_set("x", peers[6].peers, 4)]
