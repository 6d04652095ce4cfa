"""The in-process libnftables backend against the real kernel: each context is bound to the
namespace its worker thread made it in, errors map like nft's, and the fallbacks never write to
the wrong namespace."""

from __future__ import annotations

import sys
import threading

import pytest

from nsutil import Netns, NetnsFactory
from podnet.kernel import netns as kernel_netns
from podnet.kernel.nft import (
    LibNftables,
    NftExec,
    NftNotFound,
    NftSyntaxError,
    NftUnavailable,
    Transaction,
    backend,
    libnftables,
    shared_backend,
)

pytestmark = pytest.mark.root


def _tables(ns: Netns) -> str:
    return ns.run(["nft", "list", "tables"]).stdout


def test_two_namespaces_at_once_from_one_process(netns: NetnsFactory) -> None:
    a, b = netns("a"), netns("b")
    with LibNftables(netns=a.path) as nft_a, LibNftables(netns=b.path) as nft_b:
        errors: list[BaseException] = []

        def write(nft: LibNftables, prefix: str) -> None:
            try:
                for i in range(20):
                    nft.apply(Transaction("inet", f"{prefix}-{i}").add_table())
            except BaseException as exc:
                errors.append(exc)
        threads = [threading.Thread(target=write, args=(n, p)) for n, p in ((nft_a, "ta"), (nft_b, "tb"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert nft_a.has_table("inet", "ta-19") and not nft_a.has_table("inet", "tb-0")
        assert nft_b.list_table("inet", "tb-3") is not None and nft_b.list_table("inet", "ta-3") is None
    listed_a, listed_b = _tables(a), _tables(b)
    assert listed_a.count("table inet ta-") == 20 and "tb-" not in listed_a
    assert listed_b.count("table inet tb-") == 20 and "ta-" not in listed_b


def test_errors_map_like_nft(node: Netns) -> None:
    with LibNftables(netns=node.path) as nft:
        assert nft.list_table("inet", "nope") is None
        nft.apply(Transaction("inet", "t").add_table().add_set("s", "ipv4_addr"))
        with pytest.raises(NftNotFound):
            nft.apply(Transaction("inet", "t").add_element("s", "10.0.0.1").delete_element("s", "10.0.0.2"))
        assert nft.list_table("inet", "t").elements("s") == []  # type: ignore[union-attr]
        with pytest.raises(NftSyntaxError):
            nft.run("add table inet t {{")
        assert '"name": "t"' in nft.run("list tables", json=True)
    with pytest.raises(NftUnavailable, match="closed"):
        nft.apply(Transaction("inet", "t").add_table())
    assert not any(t.name.startswith("podnet-nft") and node.path in t.name for t in threading.enumerate())


def test_fallback_to_the_binary_without_the_library(monkeypatch: pytest.MonkeyPatch, node: Netns) -> None:
    monkeypatch.setattr(libnftables, "load", lambda: None)
    nft = backend(node.path)
    assert isinstance(nft, NftExec)
    nft.apply(Transaction("inet", "fallback").add_table())
    assert "fallback" in _tables(node)
    with pytest.raises(NftUnavailable, match="cannot be loaded"):
        LibNftables(netns=node.path)


def test_shared_backend_in_another_namespace_runs_there(node: Netns) -> None:
    """A thread that entered another namespace (a test, a daemon worker) gets the binary, which runs
    in the thread's namespace; the process-wide context would write the process's own."""
    def inside() -> None:
        nft = shared_backend()
        assert isinstance(nft, NftExec)
        nft.apply(Transaction("inet", "shared-check").add_table())
    kernel_netns.run_in_netns(node.path, inside)
    assert "shared-check" in _tables(node)


SHARED_SCRIPT = """
import sys
import threading
from podnet.kernel.nft import Transaction, libnftables, shared_backend
nft = shared_backend()
print(nft.has_table("inet", "t0"), len(libnftables._shared))  # asking loads nothing
def call(i):
    shared_backend().apply(Transaction("inet", f"t{i}").add_table())
threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
for t in threads: t.start()
for t in threads: t.join()
workers = [t for t in threading.enumerate() if t.name.startswith("podnet-nft")]
print(nft.has_table("inet", "t0"), type(libnftables._shared[0]).__name__, len(workers))
"""


def test_shared_backend_is_one_context_per_process(node: Netns) -> None:
    """A process acting in its own namespace (the daemon, a plugin run as a program): every call and
    thread shares one libnftables worker, however many calls it serves."""
    out = node.run([sys.executable, "-c", SHARED_SCRIPT]).stdout.split()
    assert out == ["False", "0", "True", "LibNftables", "1"]
    assert _tables(node).count("table inet t") == 8
