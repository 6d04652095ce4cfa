"""The node daemon: serves plugin calls from the shims over a root-only unix socket.

Each connection carries one request (see :mod:`podnet.daemon.protocol`). No caller can wedge the
daemon, so the work is split (:mod:`podnet.daemon.exchange`):

* the accept loop (one thread) accepts and polls connections that have sent nothing yet: an idle
  connection costs no thread. It also enforces every deadline from outside: the request must be
  in within ``read_timeout`` of the connect however the peer paces its bytes, and a complete
  request no worker slot took within ``queue_timeout`` is refused (the shim runs it in-process);
* a reader thread (``readers``, apart from the workers: a slow sender never holds a worker)
  receives the request, checks the peer (:mod:`podnet.daemon.peer`: root with CAP_NET_ADMIN and
  CAP_SYS_ADMIN in effect, read race-free through its pidfd; in the daemon's own user and network
  namespaces, since plugins act on "the host" as the namespace they run in) and what the call
  would exec (:mod:`podnet.daemon.delegates`);
* the call runs in one of ``workers`` slots (in the reader itself when one is free, else in a
  pool thread) with :func:`podnet.cni.skel.run` — the same code path as an exec'd plugin, with
  the request's environment and stdin injected and its output captured — under per-network locks
  (:mod:`podnet.daemon.locks`) that never make a worker wait for a call that may not finish.

What stays warm: the interpreter and every plugin module (imported at start), and a read-only
index of each IPAM directory (podnet.ipam.dir_index). IPAM state itself deliberately stays on
disk, in host-local's store with its file lock: shims that fall back to running in-process, and
Go's host-local sharing the directory, must see the same state (the index is dropped whenever
inotify shows a change it did not make), and a daemon killed at any point must leave nothing
only it knew about. Every plugin already undoes a
failed ADD; a daemon killed mid-ADD leaves a veth and a reservation named after the attachment,
which DEL and GC find without the daemon.

Shutdown (SIGTERM/SIGINT): the socket file is removed first (new shims fall back to in-process at
once), connections accepted but not yet running are answered ``refused`` (nothing ran, the shim
runs them in-process), calls in flight are finished and answered for up to ``stop_timeout``;
:meth:`Daemon.serve_forever` then returns whether they all finished (the command exits 0, or
kills the delegated plugins still running and exits 1 at once).
"""

from __future__ import annotations

import contextlib
import cProfile
import functools
import io
import json
import os
import pstats
import select
import signal
import socket
import stat
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from podnet.cni import skel
from podnet.cni.errors import DecodingFailure, TryAgainLater
from podnet.cni.jsonio import load_json
from podnet.daemon import delegates, netns_fd, registry
from podnet.daemon import protocol as p
from podnet.daemon.exchange import Exchange, State
from podnet.daemon.locks import Busy, NetworkLocks
from podnet.daemon.logs import JsonLog
from podnet.daemon.metrics import Metrics, NoMetrics
from podnet.daemon.peer import Peer, PeerRefused, missing_caps, read_peer
from podnet.daemon.tally import Tally
from podnet.kernel.netns import NetnsHandle
from podnet.plugins import ipam_delegate

DEFAULT_SOCKET = p.DEFAULT_SOCKET
_RECV_SIZE = 1 << 16


class Refused(Exception):
    """The request is not run; the reason goes back to the shim (which then runs it in-process)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _Hangup(Exception):
    """The peer closed without sending anything."""


@dataclass
class Config:
    socket_path: str = DEFAULT_SOCKET
    workers: int = 8
    read_timeout: float = 5.0
    max_body: int = p.MAX_REQUEST_BODY
    check_netns: bool = True
    allowed_uids: frozenset[int] = field(default_factory=lambda: frozenset({0}))
    profile_path: str | None = None  # cProfile every request; pstats written here at shutdown
    plugin_dirs: tuple[str, ...] = ("/opt/cni/bin", "/usr/lib/cni")  # delegates run only from these
    delegate_timeout: float = 60.0  # seconds a delegated executable may run before its group is killed
    stop_timeout: float = 10.0  # on SIGTERM: how long calls in flight may still run
    readers: int = 16  # threads receiving requests (apart from the workers: a slow sender holds no worker)
    queue_timeout: float = 3.0  # a complete request no worker took by then is refused (runs in the shim)
    exchange_timeout: float = 60.0  # the whole exchange: read, locks, work, answer
    max_waiting: int = 256  # accepted connections that have not sent anything yet
    require_caps: bool = True  # the caller's CAP_NET_ADMIN and CAP_SYS_ADMIN (off only for unit tests)


def netns_identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _recv_until(conn: socket.socket, buf: bytearray, n: int) -> None:
    """Receive into ``buf`` until it holds at least ``n`` bytes."""
    while len(buf) < n:
        chunk = conn.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise p.ProtocolError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk


@dataclass(frozen=True)
class _Call:
    """A complete, checked request on its way to a worker."""

    name: str
    plugin: skel.Plugin
    env: dict[str, str]
    stdin: bytes
    peer: Peer
    netns: str  # the pod's namespace as the shim passed it (netns_fd.CallerNetns), or ""


@dataclass
class _Outcome:
    """A plugin call that ran: what goes back to the shim, and what the log and metrics need."""

    code: int
    out: str
    err: str
    seconds: float
    network: str | None
    conf: dict[str, Any] | None


def decode_env(entries: list[bytes]) -> dict[str, str]:
    env = {}
    for entry in entries:
        key, _, value = entry.partition(b"=")
        env[os.fsdecode(key)] = os.fsdecode(value)
    return env


def request_identity(env: Mapping[str, str], stdin: bytes) -> tuple[str | None, dict[str, Any] | None]:
    """The network name (for locking) and the parsed config, when stdin is a JSON object."""
    try:
        conf = load_json(stdin, "network configuration")  # the skel's own decoder: same verdict
    except DecodingFailure:
        return None, None
    if not isinstance(conf, dict):
        return None, None
    name = conf.get("name")
    return (name if isinstance(name, str) else None), conf


class Daemon:
    def __init__(self, config: Config, *, log: JsonLog | None = None, metrics: Metrics | None = None) -> None:
        self.config = config
        self.log = log if log is not None else JsonLog()
        self.tally = Tally(metrics if metrics is not None else NoMetrics())
        self.metrics: Metrics = self.tally
        self.locks = NetworkLocks()
        self.plugins: list[str] = []
        self._listener: socket.socket | None = None
        self._socket_id: tuple[int, int] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._slots = threading.BoundedSemaphore(config.workers)  # calls running at once
        self._live: set[Exchange] = set()  # accepted and not yet done
        self._live_cond = threading.Condition(threading.Lock())
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stopping = threading.Event()
        self._own_netns = netns_identity("/proc/thread-self/ns/net")
        self._own_userns = netns_identity("/proc/self/ns/user")
        self._inflight = 0
        self._inflight_lock = threading.Lock()
        self._profiles: list[cProfile.Profile] = []
        self._profile_local = threading.local()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Import every plugin, then bind the socket (0600) and listen."""
        self.plugins = registry.available()
        ipam_delegate.exec_timeout = self.config.delegate_timeout
        self._listener = self._bind(self.config.socket_path)
        self._pool = ThreadPoolExecutor(max_workers=self.config.workers, thread_name_prefix="podnet-req")
        self._readers = ThreadPoolExecutor(max_workers=self.config.readers, thread_name_prefix="podnet-read")
        self.log.info("listening", socket=self.config.socket_path, pid=os.getpid(), plugins=self.plugins,
                      workers=self.config.workers)

    def _bind(self, path: str) -> socket.socket:
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._remove_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        # The umask makes the file 0600 from the moment it exists: no window where others can connect.
        old = os.umask(0o177)
        try:
            sock.bind(path)
        except BaseException:
            sock.close()
            raise
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(128)
        sock.setblocking(False)  # the loop accepts until EAGAIN
        self._socket_id = netns_identity(path)
        return sock

    def _remove_stale(self, path: str) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise RuntimeError(f"{path} exists and is not a socket; not removing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)  # left by a daemon that died: nobody listens on it
            return
        except OSError as exc:
            raise RuntimeError(f"{path} exists and cannot be probed ({exc}); not removing it") from None
        finally:
            probe.close()
        raise RuntimeError(f"another podnet daemon is serving {path}")

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: self.stop())
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def stop(self) -> None:
        """Ask the accept loop to stop (safe from a signal handler or another thread)."""
        self._stopping.set()
        self._poke()

    def _poke(self) -> None:
        """Wake the accept loop (to stop, or to look at the deadlines again)."""
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def serve_forever(self) -> bool:
        """Accept and dispatch until :meth:`stop`; False if calls were still running at the stop
        deadline (the caller should then end the process: their threads cannot be stopped)."""
        listener = self._listener
        if listener is None or self._pool is None or self._readers is None:
            raise RuntimeError("start() first")
        poller = select.poll()
        poller.register(listener.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        # Connections that have sent nothing yet: polled here, they cost no thread.
        waiting: dict[int, Exchange] = {}
        while not self._stopping.is_set():
            try:
                events = poller.poll(self._poll_ms())
            except InterruptedError:
                continue
            for fd, _ in events:
                if fd == listener.fileno():
                    self._accept(listener, poller, waiting)
                elif fd in waiting:
                    poller.unregister(fd)
                    self._start_reading(waiting.pop(fd))
                elif fd == self._wake_r:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 512)
            self._expire(poller, waiting)
        return self._shutdown(listener, waiting)

    def _poll_ms(self) -> int:
        with self._live_cond:
            nearest = min((ex.next_deadline() for ex in self._live), default=float("inf"))
        if nearest == float("inf"):
            return -1
        return max(0, int((nearest - time.monotonic()) * 1000) + 1)

    def _accept(self, listener: socket.socket, poller: select.poll, waiting: dict[int, Exchange]) -> None:
        cfg = self.config
        for _ in range(64):  # then poll again: the deadlines are checked between rounds
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors: the backlog waits for the next round
                self.log.error("accept-failed", error=str(exc))
                return
            ex = Exchange(conn, cfg.read_timeout, cfg.queue_timeout, cfg.exchange_timeout)
            with self._live_cond:
                self._live.add(ex)
            if select.select([conn], [], [], 0)[0]:
                self._start_reading(ex)  # a shim sends as it connects: usually here already
                continue
            if len(waiting) >= cfg.max_waiting:
                # The one silent longest goes, not the newcomer: a shim sends as it connects, so
                # whoever holds connections open without sending cannot keep the shims out.
                self._evict_oldest(poller, waiting)
            waiting[conn.fileno()] = ex
            poller.register(conn.fileno(), select.POLLIN)

    def _evict_oldest(self, poller: select.poll, waiting: dict[int, Exchange]) -> None:
        fd, ex = min(waiting.items(), key=lambda item: item[1].read_deadline)
        if ex.claim(State.WAITING, State.DONE):
            del waiting[fd]
            poller.unregister(fd)
            self._refuse_now(ex.conn, "overloaded", "too many connections waiting to send a request")
            self._finish(ex)

    def _start_reading(self, ex: Exchange) -> None:
        if ex.claim(State.WAITING, State.READING):
            assert self._readers is not None
            self._readers.submit(self._receive, ex)

    def _expire(self, poller: select.poll, waiting: dict[int, Exchange]) -> None:
        now = time.monotonic()
        with self._live_cond:
            due = [ex for ex in self._live if ex.next_deadline() <= now]
        for ex in due:
            taken = ex.expire(now)
            if taken is State.WAITING:
                fd = ex.conn.fileno()
                waiting.pop(fd, None)
                poller.unregister(fd)
                self._refuse_now(ex.conn, "malformed", "request not received in time")
                self._finish(ex)
            elif taken is State.QUEUED:
                assert self._readers is not None
                self._readers.submit(self._refuse_taken, ex, "overloaded",
                                     "no worker was free in time (calls in flight are not finishing)")

    def _refuse_taken(self, ex: Exchange, reason: str, message: str) -> None:
        ex.release()
        self._refuse(ex.conn, reason, message)
        self._finish(ex)

    def _refuse_now(self, conn: socket.socket, reason: str, message: str) -> None:
        """A refusal without waiting (from the accept loop, and at stop): what the peer sent is
        read first, as far as it has arrived (closing a unix socket with unread data resets it,
        and the peer would lose the refusal), and the answer fits in the socket's buffer."""
        self.metrics.refused(reason)
        self.log.warning("refused", reason=reason, msg=message)
        with contextlib.suppress(OSError):
            conn.setblocking(False)
            for _ in range(16):
                if not conn.recv(1 << 16):
                    break
        with contextlib.suppress(OSError):
            conn.send(p.encode_response(p.KIND_REFUSED, 1, b"", message.encode()))
        conn.close()

    def _finish(self, ex: Exchange) -> None:
        ex.state = State.DONE
        with self._live_cond:
            self._live.discard(ex)
            self._live_cond.notify_all()

    def _shutdown(self, listener: socket.socket, waiting: dict[int, Exchange]) -> bool:
        self.log.info("stopping", in_flight=self._inflight)
        self._unlink_socket()
        drained = 0
        while True:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError, OSError):
                break
            drained += 1
            self._refuse_now(conn, "shutting-down", "the daemon is shutting down")
        listener.close()
        with self._live_cond:
            live = list(self._live)
        for ex in live:  # nothing ran for these: the shims run them in-process
            if ex.claim(State.WAITING, State.DONE) or ex.claim(State.QUEUED, State.DONE):
                ex.release()
                self._refuse_now(ex.conn, "shutting-down", "the daemon is shutting down")
                self._finish(ex)
        finished = self._wait_idle(time.monotonic() + self.config.stop_timeout)
        for pool in (self._readers, self._pool):
            if pool is not None:
                pool.shutdown(wait=finished)
        if self.config.profile_path and self._profiles:
            pstats.Stats(*self._profiles).dump_stats(self.config.profile_path)
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.log.info("stopped", refused_while_stopping=drained + len(waiting))
        return finished

    def _wait_idle(self, deadline: float) -> bool:
        with self._live_cond:
            while self._live:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.log.error("stop-deadline", still_running=len(self._live),
                                   msg=f"calls still running after {self.config.stop_timeout} s: exiting")
                    return False
                self._live_cond.wait(left)
        return True

    def _unlink_socket(self) -> None:
        path = self.config.socket_path
        # Only our own socket file: a new daemon may already have bound the path.
        with contextlib.suppress(OSError):
            if netns_identity(path) == self._socket_id:
                os.unlink(path)

    # -- one connection ----------------------------------------------------------------------------

    def _refuse(self, conn: socket.socket, reason: str, message: str, peer: Peer | None = None) -> None:
        self.metrics.refused(reason)
        self.log.warning("refused", reason=reason, msg=message, peer_pid=peer.pid if peer else None,
                         peer_uid=peer.uid if peer else None)
        with contextlib.suppress(OSError):
            conn.settimeout(1.0)
            conn.sendall(p.encode_response(p.KIND_REFUSED, 1, b"", message.encode()))
            conn.shutdown(socket.SHUT_WR)
            self._drain(conn)
        conn.close()

    @staticmethod
    def _drain(conn: socket.socket, limit: int = 1 << 20, seconds: float = 0.2) -> None:
        """Read (and drop) what the peer still sends, a bounded amount: closing a unix socket with
        unread data resets the connection, and the peer would lose the refusal it is owed."""
        conn.settimeout(seconds)
        deadline = time.monotonic() + seconds
        while limit > 0 and time.monotonic() < deadline:
            chunk = conn.recv(min(limit, 1 << 16))
            if not chunk:
                return
            limit -= len(chunk)

    def _first_bytes(self, conn: socket.socket) -> tuple[bytes, NetnsHandle | None]:
        """Whatever of the request has arrived (usually all of it: one recv, not one per part),
        and the pod's namespace if the shim sent it with the first byte (podnet.daemon.netns_fd).
        A peer that closes without sending anything (a liveness probe, such as a starting daemon
        checking the socket) needs no answer."""
        try:
            first, passed = netns_fd.receive(conn, _RECV_SIZE)
        except TimeoutError:
            raise Refused("malformed", "request not received in time") from None
        except netns_fd.NetnsRefused as exc:
            raise Refused("netns", str(exc)) from None
        except OSError:
            raise _Hangup from None
        if not first:
            raise _Hangup
        return first, passed

    @staticmethod
    def _pod_netns(env: Mapping[str, str], passed: NetnsHandle | None) -> str:
        """Where the fd the shim sent becomes the plugin's namespace: the daemon never resolves the
        caller's CNI_NETNS path, which may name another file in the daemon's mount namespace."""
        try:
            return netns_fd.for_request(env.get("CNI_COMMAND", ""), env.get("CNI_NETNS", ""), passed)
        except netns_fd.NetnsRefused as exc:
            raise Refused("netns", str(exc)) from None

    def _check_peer(self, conn: socket.socket) -> Peer:
        """Root, with CAP_NET_ADMIN and CAP_SYS_ADMIN in effect, in the daemon's user namespace
        (and network namespace: plugins act on "the host" as the namespace they run in)."""
        try:
            peer = read_peer(conn)
        except PeerRefused as exc:
            raise Refused(exc.reason, str(exc)) from None
        if peer.uid not in self.config.allowed_uids:
            raise Refused("not-root", f"peer uid {peer.uid} is not allowed (root only)")
        if peer.userns != self._own_userns:
            raise Refused("peer-userns", "the caller is in another user namespace than the daemon")
        missing = missing_caps(peer)
        if missing and self.config.require_caps:
            raise Refused("peer-caps", f"the caller lacks {' and '.join(missing)}: the daemon does nothing "
                                       "for a caller that it could not do itself")
        if self.config.check_netns and peer.netns != self._own_netns:
            raise Refused("peer-netns", "the caller is in another network namespace than the daemon")
        return peer

    def _read_request(self, conn: socket.socket, first: bytes) -> tuple[str, bytes, list[bytes]]:
        try:
            buf = bytearray(first)
            _recv_until(conn, buf, p.HEADER_SIZE)
            size = p.parse_header(bytes(buf[:p.HEADER_SIZE]), p.REQUEST_MAGIC, self.config.max_body)
            _recv_until(conn, buf, p.HEADER_SIZE + size)
            name, stdin, env = p.decode_request(bytes(buf[p.HEADER_SIZE:p.HEADER_SIZE + size]))
        except TimeoutError:
            raise Refused("malformed", "request not received in time") from None
        except p.ProtocolError as exc:
            reason = "oversized" if "over the limit" in str(exc) else "malformed"
            raise Refused(reason, f"bad request: {exc}") from None
        try:
            return name.decode("ascii"), stdin, env
        except UnicodeDecodeError:
            raise Refused("malformed", "plugin name is not ASCII") from None

    def _receive(self, ex: Exchange) -> None:
        """A reader thread: the request, the peer's checks, then the call goes to a worker."""
        conn, peer = ex.conn, None
        try:
            conn.settimeout(max(0.001, ex.read_deadline - time.monotonic()))
            first, passed = self._first_bytes(conn)
            try:
                peer = self._check_peer(conn)
                name, stdin, env_entries = self._read_request(conn, first)
                if name == p.STATUS_REQUEST:
                    if passed is not None:
                        passed.close()
                    self._answer_status(ex)
                    return
                call = self._prepare(name, stdin, env_entries, peer, passed)
            except BaseException:
                if passed is not None:
                    passed.close()  # a refused call must not keep the fd it brought
                raise
            assert self._pool is not None
            work = self._work_profiled if self.config.profile_path else self._work
            ex.release = functools.partial(netns_fd.release, call.netns)
            if self._stopping.is_set() or not ex.claim(State.READING, State.QUEUED):
                ex.release()  # read while stopping: nothing runs any more, the shim runs it
                raise Refused("shutting-down", "the daemon is shutting down")
            if self._slots.acquire(blocking=False):
                work(ex, call, True)  # a worker slot is free: run it here, no hand-off to another thread
                return
            self._poke()  # it will wait: the loop must now also watch its queue deadline
            try:
                self._pool.submit(work, ex, call)
            except RuntimeError:  # the pool is shut down
                ex.release()
                raise Refused("shutting-down", "the daemon is shutting down") from None
            return
        except Refused as refused:
            # After the read deadline cut the request off, whatever the reader then saw is moot.
            why = Refused("malformed", "request not received in time") if ex.late else refused
            self._refuse(conn, why.reason, str(why), peer)
        except _Hangup:
            conn.close()
        except Exception as exc:  # never let one request take a thread down
            self.log.error("internal-error", error=f"{type(exc).__name__}: {exc}")
            self.tally.last_error = f"{type(exc).__name__}: {exc}"
            conn.close()
        self._finish(ex)

    def _answer_status(self, ex: Exchange) -> None:
        """``podnet status``: the daemon's totals, from a caller the peer checks let in."""
        status = {**self.tally.snapshot(), "socket": self.config.socket_path, "pid": os.getpid(),
                  "workers": self.config.workers, "plugins": self.plugins}
        try:
            ex.conn.settimeout(1.0)
            ex.conn.sendall(p.encode_response(p.KIND_RAN, 0, json.dumps(status).encode(), b""))
        except OSError:
            pass
        finally:
            ex.conn.close()
            self._finish(ex)

    def _prepare(self, name: str, stdin: bytes, env_entries: list[bytes], peer: Peer,
                 passed: NetnsHandle | None) -> _Call:
        try:
            plugin = registry.load(name)
        except registry.UnknownPlugin as exc:
            raise Refused("unknown-plugin", str(exc)) from None
        env = self._vet_delegates(decode_env(env_entries), stdin)
        return _Call(name, plugin, env, stdin, peer, self._pod_netns(env, passed))

    def _work_profiled(self, ex: Exchange, call: _Call, have_slot: bool = False) -> None:
        """``_work`` under this worker thread's own cProfile (cProfile sees one thread only)."""
        prof: cProfile.Profile | None = getattr(self._profile_local, "prof", None)
        if prof is None:
            prof = self._profile_local.prof = cProfile.Profile()
            with self._inflight_lock:
                self._profiles.append(prof)
        prof.enable()
        try:
            self._work(ex, call, have_slot)
        finally:
            prof.disable()

    def _work(self, ex: Exchange, call: _Call, have_slot: bool = False) -> None:
        """Run the call, answer, then log and count (the shim need not wait), in one of the
        ``workers`` slots: in the reader that received it when a slot was free, else in a pool
        thread, which waits for one."""
        if not have_slot:
            self._slots.acquire()
        try:
            if not ex.claim(State.QUEUED, State.RUNNING):
                return  # taken back by the accept loop (deadline or shutdown), released and refused there
            try:
                outcome = self._run(call.name, call.plugin, call.env, call.stdin, ex.deadline, call.netns)
                self._answer(ex, call.name, call.env, outcome)
                self._record(call.name, call.env, outcome, call.peer)
            except Exception as exc:  # never let one request take a worker down
                self.log.error("internal-error", error=f"{type(exc).__name__}: {exc}")
            finally:
                ex.conn.close()
                self._finish(ex)
        finally:
            self._slots.release()

    def _vet_delegates(self, env: dict[str, str], stdin: bytes) -> dict[str, str]:
        _, conf = request_identity(env, stdin)
        try:
            return delegates.vet(env, conf, self.config.plugin_dirs)
        except delegates.UntrustedDelegate as exc:
            raise Refused("untrusted-delegate", str(exc)) from None

    def _answer(self, ex: Exchange, name: str, env: Mapping[str, str], outcome: _Outcome) -> None:
        try:
            answer = p.encode_response(p.KIND_RAN, outcome.code, outcome.out.encode(), outcome.err.encode())
            ex.conn.settimeout(ex.remaining())
            ex.conn.sendall(answer)
        except OSError as exc:
            # The shim is gone (killed by a runtime timeout?): the work is done; the runtime
            # saw a failure and will DEL, which the attachment lock orders after this call.
            self.log.warning("answer-lost", plugin=name, command=env.get("CNI_COMMAND"), error=str(exc))

    def _run(self, name: str, plugin: skel.Plugin, env: dict[str, str], stdin: bytes,
             deadline: float, netns: str = "") -> _Outcome:
        command = env.get("CNI_COMMAND", "")
        network, conf = request_identity(env, stdin)
        out, err = io.StringIO(), io.StringIO()
        self._count(+1)
        start = time.perf_counter()
        try:
            # The request's streams are the skel's: a plugin reports through args.stderr, never
            # sys.stderr, so concurrent requests need no per-thread redirection of the process's.
            with self._lock_for(command, network, env, deadline):
                code = skel.run(plugin, env=env, stdin=io.BytesIO(stdin), stdout=out, stderr=err, netns=netns)
        except Busy as exc:
            version = conf.get("cniVersion") if conf else None
            error = TryAgainLater(str(exc)).to_dict(version if isinstance(version, str) else "1.1.0")
            code, out = 1, io.StringIO(json.dumps(error) + "\n")
        finally:
            self._count(-1)
            netns_fd.release(netns)
        return _Outcome(code, out.getvalue(), err.getvalue(), time.perf_counter() - start, network, conf)

    def _record(self, name: str, env: Mapping[str, str], outcome: _Outcome, peer: Peer) -> None:
        command = env.get("CNI_COMMAND", "")
        code, conf = outcome.code, outcome.conf
        self.metrics.request(name, command or "none", outcome.seconds, "ok" if code == 0 else "error")
        if conf is not None and code == 0 and command in ("ADD", "STATUS"):
            version = conf.get("cniVersion")
            self.metrics.saw_ipam(conf, version if isinstance(version, str) else "0.1.0")
        fields: dict[str, Any] = {
            "plugin": name, "command": command, "network": outcome.network,
            "container_id": env.get("CNI_CONTAINERID"), "ifname": env.get("CNI_IFNAME"), "exit": code,
            "ms": round(outcome.seconds * 1000, 3), "peer_pid": peer.pid}
        if code != 0:
            fields["error"] = outcome.out.strip()[:1000]
            self.log.warning("request", **fields)
        else:
            self.log.info("request", **fields)

    def _lock_for(self, command: str, network: str | None, env: Mapping[str, str],
                  deadline: float) -> contextlib.AbstractContextManager[None]:
        if network is None or command in ("VERSION", ""):
            return contextlib.nullcontext()
        if command == "GC":
            return self.locks.exclusive(network, deadline)
        if command in ("ADD", "DEL", "CHECK"):
            return self.locks.shared(network, (env.get("CNI_CONTAINERID", ""), env.get("CNI_IFNAME", "")))
        return self.locks.shared(network)

    def _count(self, delta: int) -> None:
        with self._inflight_lock:
            self._inflight += delta
        self.metrics.in_flight(delta)

    @property
    def in_flight(self) -> int:
        return self._inflight


def notify_systemd(state: str) -> None:
    """sd_notify(3) without libsystemd: a datagram to $NOTIFY_SOCKET, if systemd gave one."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    addr = "\0" + path[1:] if path.startswith("@") else path
    kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, kind) as s:
        s.sendto(state.encode(), addr)
