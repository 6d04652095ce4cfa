"""The one interface every nftables backend offers (libnftables, ``nft -f``, the fake)."""

from __future__ import annotations

from typing import Protocol

from podnet.kernel.nft.state import TableState
from podnet.kernel.nft.transaction import Family, Transaction


class Nft(Protocol):
    def apply(self, tx: Transaction) -> None:
        """Apply the transaction atomically; raises an :class:`NftError` and changes nothing on failure."""

    def list_table(self, family: Family, table: str, *, elements: bool = True) -> TableState | None:
        """The table's chains, rules and sets with their elements (``elements=False``: without, which
        costs far less on big sets); None when the table does not exist."""

    def has_table(self, family: Family, table: str) -> bool:
        """False only when the table certainly does not exist: a cheap check before a listing."""
