"""libnftables in-process (Debian's ``libnftables1``, through ctypes): the same scripts as ``nft -f``,
without starting a process, so a one-element change costs microseconds instead of milliseconds.

A libnftables context opens its netlink socket when it is created, and a socket belongs for its whole
life to the network namespace of the thread that created it. So every :class:`LibNftables` owns one
worker thread that enters its target namespace, creates the context there, and runs the commands of
callers in other namespaces, handed over through a queue. A caller whose thread is in the target
namespace already uses the context directly (no hand-off); a lock keeps the context to one user at a
time, since it is not safe for concurrent use. :meth:`LibNftables.close` ends the worker and frees
the context.

:func:`load` is None when the library cannot be loaded; :func:`backend` then falls back to
:class:`~podnet.kernel.nft.exec_backend.NftExec`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from podnet.kernel.netns import NetnsHandle, NetnsRef, entered
from podnet.kernel.nft.errors import NftError, NftNotFound, NftUnavailable, error_from_stderr
from podnet.kernel.nft.exec_backend import NftExec
from podnet.kernel.nft.netlink import rule_handles, table_exists
from podnet.kernel.nft.protocol import Nft
from podnet.kernel.nft.setelem import ElementSocket, SetType
from podnet.kernel.nft.state import TableState
from podnet.kernel.nft.transaction import Family, Transaction, check_family, check_name

LIBRARY = "libnftables.so.1"
# enum nft_output_flags (nftables/libnftables.h): JSON output for listings.
_NFT_CTX_OUTPUT_JSON = 1 << 4
_NFT_CTX_OUTPUT_TERSE = 1 << 11  # sets without their elements
_NFT_CTX_DEFAULT = 0

T = TypeVar("T")
_lock = threading.Lock()
_loaded: list[ctypes.CDLL | None] = []


def load() -> ctypes.CDLL | None:
    """The library with its signatures declared, or None when it is not installed."""
    with _lock:
        if not _loaded:
            _loaded.append(_load())
        return _loaded[0]


def _load() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(LIBRARY)
    except OSError:
        return None
    void_p, char_p = ctypes.c_void_p, ctypes.c_char_p
    signatures: dict[str, tuple[Any, list[Any]]] = {
        "nft_ctx_new": (void_p, [ctypes.c_uint32]),
        "nft_ctx_free": (None, [void_p]),
        "nft_ctx_buffer_output": (ctypes.c_int, [void_p]),
        "nft_ctx_buffer_error": (ctypes.c_int, [void_p]),
        "nft_ctx_get_output_buffer": (char_p, [void_p]),
        "nft_ctx_get_error_buffer": (char_p, [void_p]),
        "nft_ctx_output_set_flags": (None, [void_p, ctypes.c_uint]),
        "nft_run_cmd_from_buffer": (ctypes.c_int, [void_p, char_p]),
    }
    try:
        for name, (restype, argtypes) in signatures.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
    except AttributeError:
        return None
    return lib


class _Context:
    """One libnftables context; used only by the worker thread that made it."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        self.ctx = lib.nft_ctx_new(_NFT_CTX_DEFAULT)
        if not self.ctx:
            raise NftUnavailable("libnftables: nft_ctx_new failed")
        lib.nft_ctx_buffer_output(self.ctx)
        lib.nft_ctx_buffer_error(self.ctx)
        self.elements: ElementSocket | None = None  # opened on first use, in the namespace

    def run(self, script: str, what: str, *, json: bool = False, terse: bool = False) -> str:
        flags = (_NFT_CTX_OUTPUT_JSON if json else 0) | (_NFT_CTX_OUTPUT_TERSE if terse else 0)
        self.lib.nft_ctx_output_set_flags(self.ctx, flags)
        rc = self.lib.nft_run_cmd_from_buffer(self.ctx, script.encode())
        out = (self.lib.nft_ctx_get_output_buffer(self.ctx) or b"").decode(errors="replace")
        err = (self.lib.nft_ctx_get_error_buffer(self.ctx) or b"").decode(errors="replace")
        if rc != 0:
            raise error_from_stderr(what, err or "libnftables: command failed")
        return out

    def free(self) -> None:
        if self.elements is not None:
            self.elements.close()
        if self.ctx:
            self.lib.nft_ctx_free(self.ctx)
            self.ctx = None


class _Pending(Generic[T]):
    """A result one thread hands another (concurrent.futures would import logging in every plugin)."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._result: T | None = None
        self._error: BaseException | None = None

    def set_result(self, result: T) -> None:
        self._result = result
        self._done.set()

    def set_exception(self, error: BaseException) -> None:
        self._error = error
        self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> T:
        if not self._done.wait(timeout):
            raise TimeoutError
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]


_STOP = object()
# The namespace of the process's main thread (/proc/self follows the thread-group leader).
_PROCESS_NETNS = "/proc/self/ns/net"
_THREAD_NETNS = "/proc/thread-self/ns/net"


class LibNftables:
    """The :class:`~podnet.kernel.nft.protocol.Nft` protocol on an in-process libnftables context,
    bound to ``netns`` (None: the namespace the process's main thread is in)."""

    def __init__(self, *, netns: NetnsRef | None = None, timeout: float = 30.0,
                 lib: ctypes.CDLL | None = None) -> None:
        self.lib = lib or load()
        if self.lib is None:
            raise NftUnavailable(f"libnftables: {LIBRARY} cannot be loaded (Debian package libnftables1)")
        self.timeout = timeout
        # The handle keeps the namespace's identity fixed even if its name is reused later.
        if isinstance(netns, NetnsHandle):
            self.netns = netns.dup()
        else:
            self.netns = NetnsHandle.open(netns if netns is not None else _PROCESS_NETNS)
        self._identity = self.netns.identity()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        # One user of the context at a time: the worker, or a caller already in the namespace.
        self._context_lock = threading.Lock()
        self._context: _Context | None = None
        started: _Pending[None] = _Pending()
        self._thread = threading.Thread(target=self._serve, args=(started,), daemon=True,
                                        name=f"podnet-nft {self.netns.path}")
        self._thread.start()
        started.result()

    def _serve(self, started: _Pending[None]) -> None:
        try:
            assert self.lib is not None
            with entered(self.netns):
                self._context = context = _Context(self.lib)
                started.set_result(None)
                self._loop(context)
        except BaseException as exc:  # handed to the constructor's caller
            if not started.done():
                started.set_exception(exc)

    def _loop(self, context: _Context) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                fn, future = item
                try:
                    with self._context_lock:
                        result = fn(context)
                    future.set_result(result)
                except BaseException as exc:  # raised again in the caller
                    future.set_exception(exc)
        finally:
            with self._context_lock:
                self._context = None
                context.free()

    def _call(self, fn: Callable[[_Context], T], what: str) -> T:
        if self._closed:
            raise NftUnavailable(f"{what}: this libnftables backend is closed")
        if self._caller_inside():
            # The caller is in the context's namespace already: whatever the library opens from
            # this thread lands there too, so it may use the context itself and skip the hand-off.
            if not self._context_lock.acquire(timeout=self.timeout):
                raise NftUnavailable(f"{what}: libnftables busy for {self.timeout:g}s")
            try:
                if self._context is not None:
                    return fn(self._context)
            finally:
                self._context_lock.release()
            raise NftUnavailable(f"{what}: this libnftables backend is closed")
        future: _Pending[T] = _Pending()
        self._queue.put((fn, future))
        try:
            return future.result(self.timeout)
        except TimeoutError:
            raise NftUnavailable(f"{what}: libnftables did not finish in {self.timeout:g}s") from None

    def _caller_inside(self) -> bool:
        try:
            st = os.stat(_THREAD_NETNS)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._identity

    def run(self, script: str, *, json: bool = False) -> str:
        """Any nft command (a listing, for tests and tools): its output, or the NftError."""
        what = f"libnftables {script.split(chr(10))[0][:80]}"
        return self._call(lambda c: c.run(script, what, json=json), what)

    def apply(self, tx: Transaction) -> None:
        if tx:
            what = f"libnftables (table {tx.family} {tx.table})"
            script = tx.render()
            self._call(lambda c: c.run(script, what), what)

    def apply_elements(self, tx: Transaction, types: Mapping[str, SetType]) -> bool:
        """An element-only transaction as one netlink batch, skipping libnftables (whose cache fill
        before element commands grows with the table's sets and chains). False, and nothing
        done, when ``tx`` holds anything :mod:`.setelem` does not encode: use :meth:`apply`."""
        if not tx:
            return True
        what = f"netlink elements (table {tx.family} {tx.table})"

        def send(c: _Context) -> bool:
            if c.elements is None:
                c.elements = ElementSocket(self.timeout)
            return c.elements.send(tx.family, tx.table, tx.ops, types, what)
        return self._call(send, what)

    def rule_handles(self, family: Family, table: str,
                     chains: Sequence[str] | None = None) -> dict[str, list[int]]:
        """Handles of the table's rules per chain in order (only of ``chains`` when given), from a
        rule dump over netlink: what a writer reads back after adding rules, without libnftables
        listing and printing the whole table."""
        family, table = check_family(family), check_name(table, "table name")  # type: ignore[assignment]
        what = f"netlink rule handles of table {family} {table}"

        def dump(_: _Context) -> dict[str, list[int]]:
            try:
                if chains is None:
                    return rule_handles(family, table, timeout=self.timeout)
                out: dict[str, list[int]] = {}
                for chain in chains:
                    out.update(rule_handles(family, table, chain, timeout=self.timeout))
                return out
            except OSError as exc:
                raise (NftNotFound if exc.errno == errno.ENOENT else NftError)(f"{what}: {exc}") from None
        return self._call(dump, what)

    def list_table(self, family: Family, table: str, *, elements: bool = True) -> TableState | None:
        """Listed by ``nft -j`` in a child process, not by this context: libnftables 1.0.x can abort
        the whole process (an assertion in its JSON output of a set's type) when the table changes
        while it is being listed, and listings run while other writers commit. Listings are rare
        (verify, GC, CHECK); every write stays in-process."""
        return NftExec(netns=self.netns, timeout=self.timeout).list_table(family, table, elements=elements)

    def has_table(self, family: Family, table: str) -> bool:
        """One netlink request, from the worker (already in the namespace); True when unsure."""
        family, table = check_family(family), check_name(table, "table name")  # type: ignore[assignment]

        def ask(_: _Context) -> bool:
            try:
                return table_exists(family, table)
            except OSError:
                return True
        return self._call(ask, f"libnftables: does table {family} {table} exist")

    def close(self) -> None:
        """End the worker and free the context (idempotent)."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join(self.timeout)
            self.netns.close()

    def __enter__(self) -> LibNftables:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def backend(netns: NetnsRef | None = None) -> Nft:
    """libnftables bound to ``netns`` when the library loads, else the ``nft`` binary. The caller
    closes a LibNftables it got here (see :func:`close_backend`)."""
    if load() is not None:
        try:
            return LibNftables(netns=netns)
        except NftError:
            pass
    return NftExec(netns=netns)


def close_backend(nft: Nft) -> None:
    if isinstance(nft, LibNftables):
        nft.close()


_shared: list[LibNftables] = []
_shared_lock = threading.Lock()


def _forget_shared() -> None:
    _shared.clear()  # a forked child has no worker thread: it makes its own backend


os.register_at_fork(after_in_child=_forget_shared)


def shared_backend() -> Nft:
    """The process-wide backend for callers that act in the process's own namespace (the daemon,
    a plugin run in-process): one libnftables worker and context for the whole process, however
    many calls and threads use it, made on the first write or listing (asking whether a table exists
    needs neither). A caller whose thread is inside another namespace gets the ``nft`` binary, which
    runs in the thread's namespace: contexts are never cached per namespace, so a long-lived process
    holds at most this one (and keeps no dead namespace alive)."""
    return _SharedNft() if _in_process_netns() else NftExec()


class _SharedNft:
    """The process's backend, loaded on first use."""

    def apply(self, tx: Transaction) -> None:
        _shared_real().apply(tx)

    def list_table(self, family: Family, table: str, *, elements: bool = True) -> TableState | None:
        return _shared_real().list_table(family, table, elements=elements)

    def has_table(self, family: Family, table: str) -> bool:
        """One netlink request in the process's namespace; True when unsure."""
        try:
            return table_exists(check_family(family), check_name(table, "table name"), _PROCESS_NETNS)
        except OSError:
            return True


def _shared_real() -> Nft:
    with _shared_lock:
        if not _shared and load() is not None:
            try:
                _shared.append(LibNftables())
            except NftError:
                return NftExec()
        return _shared[0] if _shared else NftExec()


def _in_process_netns() -> bool:
    try:
        mine, process = os.stat(_THREAD_NETNS), os.stat(_PROCESS_NETNS)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (process.st_dev, process.st_ino)
