"""GC's ``cni.dev/valid-attachments``: the one definition of "this attachment must be kept".

Every plugin and IPAM asks :meth:`ValidAttachments.keeps` instead of building its own set, so a
veth, an nftables element and an IP reservation of the same attachment are always judged alike. An
entry without ``ifname`` (or with an empty one) keeps *every* interface of its container: a
runtime that lists a sandbox without naming interfaces must never lose one of them, and if the
veth plugin kept the pod's interface while IPAM released its address, the next ADD would hand the
same address to a second pod.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ValidAttachments:
    exact: frozenset[tuple[str, str]] = frozenset()  # (containerID, ifname)
    whole: frozenset[str] = frozenset()  # containers listed without an ifname

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]]) -> ValidAttachments:
        """From (containerID, ifname) pairs; an empty ifname stands for the whole container."""
        exact, whole = set(), set()
        for container_id, ifname in pairs:
            if ifname:
                exact.add((container_id, ifname))
            else:
                whole.add(container_id)
        return cls(frozenset(exact), frozenset(whole))

    def keeps(self, container_id: str, ifname: str | None) -> bool:
        """``ifname`` None: a record that names the container only (legacy host-local files); it
        is kept when any interface of that container is."""
        if not container_id:
            return False  # an unreadable owner: nobody can claim it
        if container_id in self.whole:
            return True
        if ifname is None:
            return any(cid == container_id for cid, _ in self.exact)
        return (container_id, ifname) in self.exact

    def containers(self) -> frozenset[str]:
        return self.whole | {cid for cid, _ in self.exact}
