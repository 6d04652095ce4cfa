"""What differs between the kernel's table and what the writer applied: chains present, their rules
(by handle, see :mod:`podnet.dataplane.writer`), base chain policies, sets present and their
elements and values (compared in canonical form, :mod:`podnet.dataplane.normalize`) — except the
elements of dynamic sets, which the packet path fills."""

from __future__ import annotations

from podnet.dataplane import normalize
from podnet.dataplane.image import Image
from podnet.kernel.nft import TableState


def drift(kernel: TableState | None, image: Image, handles: dict[str, list[int]]) -> list[str]:
    """What differs between the kernel's table and the applied image (empty: nothing)."""
    if kernel is None:
        return ["the table is missing"]
    return _chain_drift(kernel, image, handles) + _set_drift(kernel, image)


def _chain_drift(kernel: TableState, image: Image, handles: dict[str, list[int]]) -> list[str]:
    out = []
    if set(kernel.chains) != set(image.chains):
        out.append(f"chains {sorted(set(kernel.chains) ^ set(image.chains))} added or deleted")
    for name in sorted(set(kernel.chains) & set(image.chains)):
        if name in handles:
            if kernel.handles(name) != handles[name]:
                out.append(f"rules of chain {name} changed")
        elif len(kernel.chains[name]) != len(image.rules.get(name, ())):
            out.append(f"chain {name} has {len(kernel.chains[name])} rules, "
                       f"not {len(image.rules.get(name, ()))}")
        policy = image.chains[name].policy
        spec = kernel.chain_states[name].spec if name in kernel.chain_states else {}
        if policy is not None and spec.get("policy", policy) != policy:
            out.append(f"chain {name}: policy {spec['policy']}, not {policy}")
    return out


def _set_drift(kernel: TableState, image: Image) -> list[str]:
    out = []
    if set(kernel.sets) != set(image.sets):
        out.append(f"sets {sorted(set(kernel.sets) ^ set(image.sets))} added or deleted")
    for name in sorted(set(kernel.sets) & set(image.sets)):
        decl = image.sets[name]
        if "dynamic" in decl.flags:  # packets add to it (ClientIP affinity): its elements are not ours
            continue
        want = image.elements.get(name, {})
        have = {e.key: e.value for e in kernel.sets[name].elements}
        if want == have:
            continue
        # Only the items that differ as text are put in canonical form (most of a big set is
        # listed exactly as it was written).
        only_want = dict(want.items() - have.items())
        only_have = dict(have.items() - want.items())
        if normalize.elements(only_want, decl.type, decl.value_type) != normalize.elements(
                only_have, decl.type, decl.value_type):
            out.append(f"set {name}: {len(only_want)} element(s) missing or changed, {len(only_have)} "
                       f"extra or changed")
    return out
