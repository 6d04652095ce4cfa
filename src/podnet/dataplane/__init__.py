"""The only code that writes nftables: one :class:`TableWriter` per table, fed contributions by
owner (:mod:`.contribution`), and the owned-element tables of CNI plugins (:mod:`.plugin_elements`)."""

from podnet.dataplane.contribution import Chain, Contribution, ContributionConflict, Elements, Set
from podnet.dataplane.writer import CommitResult, TableWriter, WriterMetrics

__all__ = [
    "Chain",
    "CommitResult",
    "Contribution",
    "ContributionConflict",
    "Elements",
    "Set",
    "TableWriter",
    "WriterMetrics",
]
