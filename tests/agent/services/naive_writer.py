"""A deliberately naive table writer: the negative control of the shared-set race test. Never use it
anywhere else.

It is kube-router's shape before and between its fixes (issues 1081 and 1732): each controller
holds its own writer, and so its own picture of the table. That picture is the kernel's sets and
maps as they were read at some earlier point (the first sync, then every ``refresh_every`` syncs,
like a periodic full resync), with the controller's own contributions put in. Each sync restores
the kernel from the picture in one transaction: the controller's own chains rewritten, its own sets
refilled from its contributions, and every other set of the table refilled from the copy, as
``ipset restore`` of a whole ``ipset save`` does. Whatever another controller added since the copy
was taken (an ExternalIP in the shared ``service-ips4`` set, its ``svc-ips4`` verdict) is removed
again by this controller's next sync.

It offers what the sync loops use of :class:`podnet.dataplane.writer.TableWriter` (``contribute``,
``holding``, ``withdraw``, ``owners``, ``commit``, ``maybe_verify``, ``verify_period``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from podnet.dataplane.contribution import EMPTY, Contribution
from podnet.dataplane.diff import add_chain, add_set
from podnet.dataplane.image import Image
from podnet.dataplane.union import Union
from podnet.dataplane.writer import CommitResult
from podnet.kernel.nft import LibNftables, TableState, Transaction


class NaiveWriter:
    def __init__(self, nft: LibNftables, family: str, table: str, *, refresh_every: int = 200) -> None:
        self.nft, self.family, self.table = nft, family, table
        self.refresh_every = refresh_every
        self.verify_period = 3600.0
        self.commits = 0
        self.copies = 0  # how many times the picture was taken from the kernel
        self._lock = threading.RLock()
        self._union = Union()
        self._applied = Image()  # the own part written last time
        self._copy: dict[str, dict[str, str | None]] = {}  # set -> elements, as read back then
        self._maps: set[str] = set()  # which of them are maps

    def contribute(self, owner: str, c: Contribution) -> None:
        with self._lock:
            self._union.replace(owner, c)

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        with self._lock:
            yield

    def withdraw(self, owner: str) -> None:
        with self._lock:
            self._union.replace(owner, EMPTY)

    def owners(self) -> list[str]:
        with self._lock:
            return sorted(self._union.contributions)

    def maybe_verify(self, now: float | None = None) -> int:
        return 0  # a naive writer trusts its own picture

    def commit(self) -> CommitResult:
        with self._lock:
            if self.commits % self.refresh_every == 0:
                state = self.nft.list_table(self.family, self.table)  # type: ignore[arg-type]
                self._copy = _sets_of(state)
                self._maps = {n for n, s in (state.sets if state else {}).items() if s.value_type}
                self.copies += 1
            mine = Image.of(self._union)
            tx = self._restore(mine)
            self.nft.run(self._script(tx, mine))
            self._applied = mine
            # The picture now holds what this controller just wrote: its own view of the table.
            self._copy.update({name: dict(elements) for name, elements in mine.elements.items()})
            self.commits += 1
            return CommitResult(True, False, len(tx.ops), 0.0)

    def _script(self, tx: Transaction, mine: Image) -> str:
        """The transaction as nft text, maps flushed as maps (``flush set`` refuses a map)."""
        maps = {n for n, d in mine.sets.items() if d.value_type is not None} | self._maps
        flush = f"flush set {self.family} {self.table} "
        lines = [f"flush map {self.family} {self.table} {line[len(flush):]}"
                 if line.startswith(flush) and line[len(flush):] in maps else line
                 for line in tx.render().splitlines()]
        return "".join(f"{line}\n" for line in lines)

    def _restore(self, mine: Image) -> Transaction:
        old = self._applied
        tx = Transaction(self.family, self.table).add_table()  # type: ignore[arg-type]
        for name in mine.chains:
            add_chain(tx, mine.chains[name])
        for name in old.chains:
            tx.flush_chain(name)
        redeclared = [n for n in old.sets if n not in mine.sets or old.sets[n] != mine.sets[n]]
        for name in redeclared:
            tx.delete_set(name)
        for name in [n for n in old.chains if n not in mine.chains]:
            tx.delete_chain(name)
        for name, decl in mine.sets.items():
            add_set(tx, decl)
            if name not in redeclared and name in old.sets:
                tx.flush_set(name)
            tx.add_elements(name, mine.elements.get(name, {}).items())
        # Everyone else's sets, refilled from the copy taken earlier.
        for name, elements in self._copy.items():
            if name not in mine.sets and name not in old.sets:
                tx.flush_set(name)
                tx.add_elements(name, elements.items())
        for name, rules in mine.rules.items():
            for rule in rules:
                tx.add_rule(name, rule)
        return tx


def _sets_of(state: TableState | None) -> dict[str, dict[str, str | None]]:
    if state is None:
        return {}
    return {name: {e.key: e.value for e in s.elements} for name, s in state.sets.items()
            if "dynamic" not in s.flags}

