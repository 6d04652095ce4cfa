"""The ``nft`` binary as a backend: ``nft -f -`` for a transaction, ``nft -j list table`` to read.

The fallback when libnftables cannot be loaded; with ``netns`` the binary runs inside that network
namespace (a process started by a thread inside a namespace starts there).
"""

from __future__ import annotations

import subprocess

from podnet.kernel.netns import NetnsRef, run_in_netns
from podnet.kernel.nft.errors import NftNotFound, NftUnavailable, error_from_stderr
from podnet.kernel.nft.netlink import table_exists
from podnet.kernel.nft.state import TableState, parse_table_json
from podnet.kernel.nft.transaction import Family, Transaction, check_family, check_name


class NftExec:
    """The real ``nft`` binary; with ``netns``, run inside that network namespace."""

    def __init__(self, binary: str = "nft", *, netns: NetnsRef | None = None, timeout: float = 30.0) -> None:
        self.binary = binary
        self.netns = netns
        self.timeout = timeout

    def _run(self, argv: list[str], stdin: str | None, what: str) -> str:
        def go() -> subprocess.CompletedProcess[str]:
            return subprocess.run([self.binary, *argv], input=stdin, capture_output=True, text=True,
                                  timeout=self.timeout, check=False)
        try:
            proc = go() if self.netns is None else run_in_netns(self.netns, go)
        except FileNotFoundError:
            raise NftUnavailable(f"{what}: the nft command was not found",
                                 f"looked for {self.binary!r} (Debian package nftables)") from None
        except subprocess.TimeoutExpired:
            raise NftUnavailable(f"{what}: nft did not finish in {self.timeout:g}s") from None
        if proc.returncode != 0:
            raise error_from_stderr(what, proc.stderr)
        return proc.stdout

    def apply(self, tx: Transaction) -> None:
        if tx:
            self._run(["-f", "-"], tx.render(), f"nft -f (table {tx.family} {tx.table})")

    def list_table(self, family: Family, table: str, *, elements: bool = True) -> TableState | None:
        argv = ["-j", *([] if elements else ["-t"]), "list", "table", check_family(family),
                check_name(table, "table name")]
        try:
            out = self._run(argv, None, f"nft list table {family} {table}")
        except NftNotFound:
            return None
        return parse_table_json(out, family, table)

    def has_table(self, family: Family, table: str) -> bool:
        """One netlink request instead of running nft; True when unsure."""
        try:
            return table_exists(check_family(family), check_name(table, "table name"), self.netns,
                                self.timeout)
        except OSError:
            return True
