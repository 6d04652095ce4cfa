"""What the writer last applied to its table, kept so the next commit sends only the difference and
verify knows what the kernel should hold."""

from __future__ import annotations

from dataclasses import dataclass, field

from podnet.dataplane.contribution import Chain, Set
from podnet.dataplane.union import Union, Value


@dataclass
class Image:
    chains: dict[str, Chain] = field(default_factory=dict)  # declarations, no rules
    rules: dict[str, tuple[str, ...]] = field(default_factory=dict)
    sets: dict[str, Set] = field(default_factory=dict)
    elements: dict[str, dict[str, Value]] = field(default_factory=dict)

    @classmethod
    def of(cls, union: Union) -> Image:
        """The whole desired table. Elements of a set no owner declares are left out until one does."""
        image = cls()
        for name in union.chain_names():
            chain = union.chain(name)
            assert chain is not None
            image.chains[name] = chain
            image.rules[name] = union.rules(name)
        for name in union.set_names():
            decl = union.set(name)
            assert decl is not None
            image.sets[name] = decl
            image.elements[name] = union.elements(name)
        return image

    def element_count(self) -> int:
        return sum(len(e) for e in self.elements.values())

    def rule_count(self) -> int:
        return sum(len(r) for r in self.rules.values())
