"""The plugin executables: thin shims that hand the call to the node daemon.

A shim forwards its environment and stdin, byte for byte, to the daemon's unix socket and prints
the daemon's answer with the daemon's exit code. It imports only builtins (``posix``, ``_socket``)
and ``podnet.daemon.protocol`` (no imports of its own) so it starts about as fast as Python can:
``podnet install`` writes it with ``#!PYTHON -IS`` (no site, no user environment).

When the daemon cannot do the call, the shim runs the same plugin code in-process (slower, same
result): a node never loses pod networking because the daemon is down. What is safe depends on how
far the request got:

* not connected (no socket, connection refused, connect timed out), request not fully sent, or the
  daemon answered ``refused``: the daemon ran nothing, so the plugin runs in-process.
* the request was sent but the connection broke before a full answer (the daemon died or was
  killed mid-request): the request may have partly happened. DEL, CHECK, STATUS, GC and VERSION
  are idempotent and run again in-process. ADD is *not* simply repeated: a half-done ADD left a
  veth and an IP reservation under this attachment's name, and a repeated ADD would refuse to
  adopt them. The shim first runs DEL for the same attachment in-process (DEL is idempotent and
  finds everything by the attachment's identity, without prevResult), then ADD. This is exactly
  what a runtime does after a failed ADD, done at once. The attachment (network, container ID,
  ifname) belongs to this one call, so nothing else is touched. ``PODNET_SHIM_REDO=0`` turns this
  off: the shim then reports CNI error 11 (try again later) and leaves the debris to the runtime's
  DEL or to GC.

VERSION is answered by the shim itself (see :func:`answer_version`), with or without a daemon.
* no answer within ``PODNET_SHIM_TIMEOUT`` seconds (default 120): the daemon may still be working
  on it, so nothing is re-run; the shim reports error 11.

The socket path is the network config's ``podnetSocket`` (protocol.SOCKET_KEY) when it has one,
else ``PODNET_SOCKET``, else ``/run/podnet/podnet.sock``. The config wins because it reaches every
call of the network: a runtime's cleanup process may run with a bare environment (podman's does),
and its DEL must reach the same daemon as the ADD. A knob with a value the shim cannot use is CNI
error 4 naming it (7 for the config key), before anything runs: a typo must not silently become the
default.

The pod's namespace travels as an open file descriptor (SCM_RIGHTS) with the request, opened here
in the caller's mount namespace: the daemon may run in another one, where the caller's CNI_NETNS
path does not exist or names something else. When ADD or CHECK cannot open it, the plugin runs
in-process and reports why; DEL goes on without it (the pod may be gone).

The native shim (``native/podnet-shim.c``) does all of this in C and execs this module's installed
shim (``podnet-py-NAME``) with ``--in-process`` or ``--after-broken WHY`` (stdin handed over) for
everything that runs the plugin here. ``PODNET_SHIM=python`` makes it hand over every call at once
(``native``, the default, or empty: it does the exchange itself).
"""

import _socket
import posix
import sys

try:
    from podnet.daemon import protocol as p
except ModuleNotFoundError:
    # Loaded on its own by a shim that `podnet install` wrote (see install_cmd.shim_text): the
    # podnet package is not on sys.path yet, protocol.py is a top-level module next to this one.
    # Skipping the package imports saves ~0.4 ms of every plugin call's start-up.
    import protocol as p  # type: ignore[import-not-found, no-redef]

CONNECT_TIMEOUT = 5.0
# How the native shim hands a call over (argv[1]); runtimes call plugins without arguments.
IN_PROCESS = "--in-process"
AFTER_BROKEN = "--after-broken"
DEFAULT_TIMEOUT = 120.0
_IDEMPOTENT = (b"DEL", b"CHECK", b"STATUS", b"GC", b"VERSION")


class _Unsent(Exception):
    """The daemon certainly ran nothing: safe to run in-process."""


class _Broken(Exception):
    """The request reached the daemon but no full answer came back: it may have partly happened."""


def _read_stdin() -> bytes:
    chunks = []
    total = 0
    while total <= p.MAX_STDIN:
        chunk = posix.read(0, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _recv_exact(sock: _socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise _Broken("the daemon closed the connection before answering")
        buf += chunk
    return bytes(buf)


class _BadKnob(Exception):
    """An environment knob of the shim has a value it cannot use (reported as CNI error 4)."""

    def __init__(self, name: bytes, value: bytes, want: str) -> None:
        super().__init__(f"invalid {name.decode()}={value.decode(errors='replace')!r}: {want}")


_SUN_PATH_MAX = p.SUN_PATH_MAX
# socket timeouts above this overflow the platform's time_t; no runtime waits a day for a plugin.
MAX_TIMEOUT = 86400.0
_YES = (b"1", b"true", b"yes")
_NO = (b"0", b"false", b"no")


def _socket_path(env: dict[bytes, bytes]) -> bytes:
    path = env.get(b"PODNET_SOCKET") or p.DEFAULT_SOCKET.encode()
    if not path.startswith(b"/") or len(path) > _SUN_PATH_MAX:
        raise _BadKnob(b"PODNET_SOCKET", path, f"must be an absolute path of at most {_SUN_PATH_MAX} bytes")
    return path


def _timeout(env: dict[bytes, bytes]) -> float:
    raw = env.get(b"PODNET_SHIM_TIMEOUT", b"")
    if not raw:
        return DEFAULT_TIMEOUT
    # A plain decimal (digits, at most one point): the native shim accepts exactly the same.
    plain = raw.replace(b".", b"", 1)
    value = float(raw) if plain.isdigit() and len(plain) <= 32 else -1.0
    if not (0 < value <= MAX_TIMEOUT):
        raise _BadKnob(b"PODNET_SHIM_TIMEOUT", raw,
                       f"must be a number of seconds over 0, at most {MAX_TIMEOUT:g}")
    return value


def _check_shim_kind(env: dict[bytes, bytes]) -> None:
    """PODNET_SHIM=python makes the native shim hand every call to this one (the way to run without
    the native shim on a node that has it); here it only needs to be valid."""
    given = env.get(b"PODNET_SHIM", b"")
    if given not in (b"", b"native", b"python"):
        raise _BadKnob(b"PODNET_SHIM", given, "must be native or python")


def _redo(env: dict[bytes, bytes]) -> bool:
    given = env.get(b"PODNET_SHIM_REDO", b"")
    if given.lower() in _NO:
        return False
    if given.lower() in _YES or not given:
        return True
    raise _BadKnob(b"PODNET_SHIM_REDO", given, "must be 1, true, yes, 0, false or no")


def _config_socket(stdin: bytes) -> bytes | None:
    """The network config's socket path, if it names one (json is loaded only then)."""
    if p.SOCKET_KEY.encode() not in stdin:
        return None
    import json

    try:
        conf = json.loads(stdin)
    except ValueError:
        return None  # not JSON: the plugin reports that
    if not isinstance(conf, dict) or p.SOCKET_KEY not in conf:
        return None
    path = conf[p.SOCKET_KEY]
    try:
        raw = path.encode() if isinstance(path, str) and "\0" not in path else b""
    except UnicodeEncodeError:  # a lone surrogate escape: no path at all
        raw = b""
    if not raw.startswith(b"/") or len(raw) > _SUN_PATH_MAX:
        raise _BadKnob(p.SOCKET_KEY.encode(), raw,
                       f"must be an absolute path of at most {_SUN_PATH_MAX} bytes")
    return raw


_NS_GET_NSTYPE = 0xB703
_CLONE_NEWNET = 0x40000000


def open_netns(path: bytes) -> int | None:
    """CNI_NETNS opened in this (the caller's) mount namespace, as kernel/netns.py opens one: an
    O_PATH look first, so a FIFO, tty or device is never opened; then the same inode reopened
    through /proc/self/fd and checked to be a network namespace. None if it is not one."""
    try:
        pfd = posix.open(path, posix.O_PATH | posix.O_CLOEXEC)
    except OSError:
        return None
    try:
        if posix.fstat(pfd).st_mode & 0o170000 != 0o100000:  # S_ISREG, without importing stat
            return None
        fd = posix.open(f"/proc/self/fd/{pfd}", posix.O_RDONLY | posix.O_CLOEXEC | posix.O_NONBLOCK
                        | posix.O_NOCTTY)
    except OSError:
        return None
    finally:
        posix.close(pfd)
    import fcntl

    try:
        if fcntl.ioctl(fd, _NS_GET_NSTYPE) == _CLONE_NEWNET:
            return fd
    except OSError:
        pass
    posix.close(fd)
    return None


def _send(sock: _socket.socket, frame: bytes, netns_fd: int | None) -> None:
    if netns_fd is None:
        sock.sendall(frame)
        return
    rights = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, netns_fd.to_bytes(4, sys.byteorder))]
    sent = sock.sendmsg([frame], rights)
    if sent < len(frame):  # never an empty send: the daemon may have answered and closed already
        sock.sendall(frame[sent:])


def ask_daemon(path: bytes, frame: bytes, timeout: float,
               netns_fd: int | None = None) -> tuple[bytes, int, bytes, bytes]:
    """Send one request frame (with the pod's netns fd, if any, closed here) and return the decoded
    answer (raises _Unsent / _Broken)."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(path)
            _send(sock, frame, netns_fd)
        except OSError as exc:
            # Not all of the frame was accepted, so the daemon cannot have run it.
            raise _Unsent(f"daemon not reachable at {path.decode(errors='replace')}: {exc}") from None
        sock.settimeout(timeout)
        try:
            header = _recv_exact(sock, p.HEADER_SIZE)
            body = _recv_exact(sock, p.parse_header(header, p.RESPONSE_MAGIC, p.MAX_RESPONSE_BODY))
        except TimeoutError:
            raise  # the daemon may still be working on it
        except (OSError, p.ProtocolError) as exc:
            raise _Broken(f"connection to the daemon broke mid-request: {exc}") from None
        try:
            return p.decode_response(body)
        except p.ProtocolError as exc:
            raise _Broken(f"unreadable answer from the daemon: {exc}") from None
    finally:
        sock.close()
        if netns_fd is not None:
            posix.close(netns_fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[posix.write(fd, view):]


def _say(plugin: str, text: str) -> None:
    _write_all(2, f"{plugin}: {text}\n".encode(errors="replace"))


def run(plugin: str, argv: list[str] | None = None) -> int:
    """One plugin call through the daemon (or in-process); returns the exit code. ``argv``: the
    native shim's hand-over (``--in-process`` or ``--after-broken WHY``)."""
    env: dict[bytes, bytes] = posix.environ
    command = env.get(b"CNI_COMMAND", b"")
    try:
        path, timeout, redo = _socket_path(env), _timeout(env), _redo(env)
        _check_shim_kind(env)
    except _BadKnob as exc:
        return _fail(plugin, command, str(exc), code=4)
    if command == b"VERSION":
        return answer_version()
    stdin = _read_stdin()
    if argv and argv[0] == IN_PROCESS:
        return in_process(plugin, stdin)
    if argv and argv[0] == AFTER_BROKEN:
        why = argv[1] if len(argv) > 1 else "the daemon broke mid-request"
        return after_broken(plugin, command, stdin, why, redo=redo)
    entries = [k + b"=" + v for k, v in env.items()]
    if len(stdin) > p.MAX_STDIN or sum(map(len, entries)) > p.MAX_ENV_BYTES:
        return in_process(plugin, stdin)  # the skel reports the oversized input properly
    try:
        path = _config_socket(stdin) or path
    except _BadKnob as exc:
        return _fail(plugin, command, str(exc), code=7)
    netns = env.get(b"CNI_NETNS", b"")
    netns_fd = open_netns(netns) if netns else None
    if netns and netns_fd is None and command in (b"ADD", b"CHECK"):
        return in_process(plugin, stdin)  # the plugin says exactly why it cannot be opened
    frame = p.encode_request(plugin.encode(), stdin, entries)
    try:
        kind, code, out, err = ask_daemon(path, frame, timeout, netns_fd)
    except _Unsent:
        return in_process(plugin, stdin)
    except TimeoutError:
        return _fail(plugin, command, "no answer from the podnet daemon in time; it may still be working "
                     "on the request, so it is not repeated")
    except _Broken as exc:
        return after_broken(plugin, command, stdin, str(exc), redo=redo)
    if kind == p.KIND_REFUSED:
        _say(plugin, f"daemon refused the request ({err.decode(errors='replace').strip()}); "
             "running in-process")
        return in_process(plugin, stdin)
    _write_all(1, out)
    if err:
        _write_all(2, err)
    return code


def answer_version() -> int:
    """VERSION, answered here: runtimes ask it of every network on every container start and stop,
    and neither the daemon nor the plugin is needed for it. Every podnet plugin serves the versions
    of podnet.cni.spec_versions (skel.Plugin's default), so this is the skel's own answer, from the same
    definition (tests/daemon/test_shim_version.py holds each plugin to it), without importing the
    plugin, the skel or the kernel layer."""
    from podnet.cni.spec_versions import version_json

    _write_all(1, (version_json() + "\n").encode())
    return 0


def after_broken(plugin: str, command: bytes, stdin: bytes, why: str, *, redo: bool = True) -> int:
    """The daemon took the request and died (or hung up) before answering."""
    if command in _IDEMPOTENT:
        _say(plugin, f"{why}; running {command.decode()} again in-process (it is idempotent)")
        return in_process(plugin, stdin)
    if command != b"ADD" or not redo:
        return _fail(plugin, command, f"{why}; the request may have partly happened, run DEL and retry")
    _say(plugin, f"{why}; undoing any partial ADD (DEL in-process), then ADD in-process")
    return in_process(plugin, stdin, clean_first=True)


def _fail(plugin: str, command: bytes, msg: str, code: int = 11) -> int:
    """A CNI error (default 11, try again later), written without json (its input is plain text)."""
    text = "".join(c if c >= " " else " " for c in msg).replace("\\", "\\\\").replace('"', '\\"')
    _write_all(1, ('{"cniVersion": "1.0.0", "code": ' + str(code) + ', "msg": "' + text + '"}\n').encode())
    _say(plugin, f"{command.decode(errors='replace')} failed: {msg}")
    return 1


def in_process(plugin: str, stdin: bytes, *, clean_first: bool = False) -> int:
    """Run the plugin here, exactly as the daemon would (slower: imports the plugin)."""
    if sys.flags.no_site:
        import site  # started with -S by `podnet install`: site-packages are needed now

        site.main()
    import io
    import os

    from podnet.cni import skel
    from podnet.daemon import registry

    try:
        impl = registry.load(plugin)
    except registry.UnknownPlugin as exc:
        return _fail(plugin, b"", str(exc))
    _sigterm_raises(plugin)
    if clean_first:
        env = dict(os.environ, CNI_COMMAND="DEL")
        out, err = io.StringIO(), io.StringIO()
        if skel.run(impl, env=env, stdin=io.BytesIO(stdin), stdout=out, stderr=err) != 0:
            return _fail(plugin, b"ADD", "the daemon died mid-ADD and undoing it failed: "
                         + " ".join(out.getvalue().split())[:400])
    return skel.run(impl, env=os.environ, stdin=io.BytesIO(stdin), stdout=sys.stdout, stderr=sys.stderr)


def _sigterm_raises(plugin: str) -> None:
    """A runtime that gives up on a plugin sends SIGTERM: make it an error inside the plugin, so an
    ADD's rollback runs (SIGKILL cannot be caught; DEL and GC reclaim what it leaves)."""
    import signal
    import threading

    from podnet.cni.errors import InternalError

    def handler(signum: int, frame: object) -> None:
        raise InternalError(f"{plugin}: terminated (SIGTERM)")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def main(plugin: str) -> None:
    code = run(plugin, sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    posix._exit(code & 0xFF if code >= 0 else 1)


# Console scripts (pyproject [project.scripts]); `podnet install` writes faster ones.
def loopback() -> None:
    main("podnet-loopback")


def bridge() -> None:
    main("podnet-bridge")


def routed() -> None:
    main("podnet-routed")


def host_local() -> None:
    main("podnet-host-local")


def static() -> None:
    main("podnet-static")
