"""The CNI result cache, in libcni's on-disk format, written so that a crash never tears it.

Layout (libcni 1.x ``cniCacheV1``), one file per attachment::

    <cacheDir>/results/<networkName>-<containerID>-<ifName>      (dir 0700, file 0600)
    {"kind":"cniCacheV1","containerId":…,"config":<base64 of the config bytes>,"ifName":…,
     "networkName":…,"cniArgs":[[k,v],…],"capabilityArgs":{…},"result":{…}}

``cniArgs``, ``capabilityArgs`` and ``result`` are left out when empty, as Go's ``omitempty``
does; ``config`` is the whole network list's bytes for a list. The encoder produces the same
bytes Go's ``encoding/json`` produces for the same data (compact, nested map keys sorted, ``<``
``>`` ``&`` U+2028 U+2029 escaped), so libcni and podnet read each other's files.

Crash safety: an entry is written to a uniquely named ``.tmp-…`` file in the same directory,
fsynced, renamed over the final name, and the directory is fsynced; a reader sees either the old
entry or the new one, never a torn file. Temp files a crash leaves behind are never taken for
entries (no network name starts with '.') and :meth:`ResultCache.sweep_temp` reclaims them.

Reading never raises on bad content: an empty, truncated or garbage file is reported as
*damaged* so that DEL can go on without a prevResult and remove it. libcni's legacy format
(a bare result object with no ``kind``) is read as a result with no config.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import json
import os
import secrets
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from podnet.cni.errors import IOFailure

KIND_V1 = "cniCacheV1"
DEFAULT_CACHE_DIR = "/var/lib/cni"
RESULTS = "results"
TEMP_PREFIX = ".tmp-"
# Nothing podnet or libcni writes comes close; a bigger file is not a cache entry.
MAX_ENTRY_BYTES = 64 * 1024 * 1024

ReadState = Literal["missing", "ok", "damaged"]


@dataclass(frozen=True)
class CacheEntry:
    """One attachment's cached ADD: the config it ran with, its runtime args and its result."""

    network: str
    container_id: str
    ifname: str
    config: bytes
    result: dict[str, Any] | None
    cni_args: list[tuple[str, str]] = field(default_factory=list)
    capability_args: dict[str, Any] = field(default_factory=dict)
    # True when read from libcni's pre-cniCacheV1 format: a bare result, no config or args.
    legacy: bool = False


@dataclass(frozen=True)
class CacheRead:
    """What :meth:`ResultCache.read` found: ``missing``, ``ok`` (with ``entry``) or ``damaged``."""

    state: ReadState
    path: Path
    entry: CacheEntry | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    @property
    def missing(self) -> bool:
        return self.state == "missing"

    @property
    def damaged(self) -> bool:
        return self.state == "damaged"

    @property
    def prev_result(self) -> dict[str, Any] | None:
        """The cached result to hand to DEL/CHECK as prevResult, or None."""
        return self.entry.result if self.entry is not None else None


class DamagedEntry(ValueError):
    """Raised by :func:`decode`: the bytes are not a usable cache entry (the message says why)."""


def _check_component(what: str, value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"cache key: {what} must be a non-empty string, got {value!r}")
    if "/" in value or "\0" in value or value in (".", ".."):
        raise ValueError(f"cache key: {what} {value!r} may not contain '/' or NUL, nor be '.' or '..'")


def _check_key(network: str, container_id: str, ifname: str) -> None:
    _check_component("network name", network)
    _check_component("container ID", container_id)
    _check_component("interface name", ifname)
    # The file name starts with the network name; a leading '.' would make it look like a temp file.
    # libcni refuses such network names too.
    if network.startswith("."):
        raise ValueError(f"cache key: network name {network!r} may not start with '.'")


def _sorted_maps(value: Any) -> Any:
    """Go's encoding/json writes map keys sorted; struct fields keep their declared order."""
    if isinstance(value, dict):
        return {k: _sorted_maps(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [_sorted_maps(v) for v in value]
    return value


# Go escapes these inside strings; outside strings JSON never contains them, so a plain replace is exact.
_GO_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                             "\u2028": "\\u2028", "\u2029": "\\u2029"})


def encode(entry: CacheEntry) -> bytes:
    """The file content libcni would write for ``entry``."""
    doc: dict[str, Any] = {
        "kind": KIND_V1,
        "containerId": entry.container_id,
        "config": base64.b64encode(entry.config).decode("ascii"),
        "ifName": entry.ifname,
        "networkName": entry.network,
    }
    if entry.cni_args:
        doc["cniArgs"] = [[str(k), str(v)] for k, v in entry.cni_args]
    if entry.capability_args:
        doc["capabilityArgs"] = _sorted_maps(entry.capability_args)
    if entry.result:
        doc["result"] = _sorted_maps(entry.result)
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.translate(_GO_ESCAPES).encode("utf-8")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _opt_str(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key, "")
    if not isinstance(value, str):
        raise DamagedEntry(f"{key!r} is {type(value).__name__}, not a string")
    return value


def _decode_config(value: Any) -> bytes:
    if value is None:
        return b""
    if not isinstance(value, str):
        raise DamagedEntry(f"'config' is {type(value).__name__}, not base64 text")
    try:
        # Go's decoder skips CR and LF, and otherwise wants strict, padded standard base64.
        return base64.b64decode(value.replace("\r", "").replace("\n", ""), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DamagedEntry(f"'config' is not base64: {exc}") from None


def _decode_args(value: Any) -> list[tuple[str, str]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise DamagedEntry(f"'cniArgs' is {type(value).__name__}, not a list")
    out: list[tuple[str, str]] = []
    for pair in value:
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise DamagedEntry(f"'cniArgs' item {pair!r} is not a [key, value] pair of strings")
        out.append((pair[0], pair[1]))
    return out


def _decode_map(doc: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise DamagedEntry(f"{key!r} is {type(value).__name__}, not an object")
    return value


def decode(data: bytes, network: str, container_id: str, ifname: str) -> CacheEntry:
    """Parse one cache file's bytes; raises :class:`DamagedEntry` for anything that is not an entry.

    ``network``/``container_id``/``ifname`` are used only for legacy files, which do not record them.
    """
    if not data.strip():
        raise DamagedEntry("empty file")
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DamagedEntry(f"not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise DamagedEntry(f"top level is {type(doc).__name__}, not an object")
    if "kind" not in doc:
        # libcni's legacy cache: the file is the result itself.
        if not isinstance(doc.get("cniVersion", ""), str):
            raise DamagedEntry("legacy result has a non-string cniVersion")
        if not doc:
            raise DamagedEntry("empty object")
        return CacheEntry(network, container_id, ifname, b"", doc, legacy=True)
    if doc["kind"] != KIND_V1:
        raise DamagedEntry(f"wrong kind {doc['kind']!r}")
    return CacheEntry(
        network=_opt_str(doc, "networkName"),
        container_id=_opt_str(doc, "containerId"),
        ifname=_opt_str(doc, "ifName"),
        config=_decode_config(doc.get("config")),
        result=_decode_map(doc, "result") or None,
        cni_args=_decode_args(doc.get("cniArgs")),
        capability_args=_decode_map(doc, "capabilityArgs") or {},
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # some filesystems cannot fsync a directory; nothing to do there
            raise
    finally:
        os.close(fd)


def _read_regular(path: Path) -> bytes:
    """Read a regular file without following a symlink or blocking on a FIFO."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DamagedEntry("not a regular file")
        if st.st_size > MAX_ENTRY_BYTES:
            raise DamagedEntry(f"{st.st_size} bytes, more than any cache entry")
        chunks: list[bytes] = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class ResultCache:
    """libcni-compatible result cache rooted at ``cache_dir`` (default ``/var/lib/cni``)."""

    def __init__(self, cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR) -> None:
        self.cache_dir = Path(cache_dir)
        self.results_dir = self.cache_dir / RESULTS

    def path(self, network: str, container_id: str, ifname: str) -> Path:
        """``<cacheDir>/results/<network>-<containerID>-<ifname>``; refuses components that escape it."""
        _check_key(network, container_id, ifname)
        return self.results_dir / f"{network}-{container_id}-{ifname}"

    # -- write ---------------------------------------------------------------------------------

    def write(self, entry: CacheEntry) -> None:
        """Atomically replace the attachment's entry. Raises IOFailure (with the path) on I/O errors."""
        final = self.path(entry.network, entry.container_id, entry.ifname)
        data = encode(entry)
        try:
            self.results_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise IOFailure(f"cannot create cache directory {self.results_dir}", str(exc)) from exc
        tmp = self.results_dir / f"{TEMP_PREFIX}{final.name}.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise IOFailure(f"cannot create cache file {tmp}", str(exc)) from exc
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                # Data must be on disk before the rename makes it visible under the final name.
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, OSError):
                raise IOFailure(f"cannot write cache file {final}", str(exc)) from exc
            raise
        try:
            # Make the rename itself durable.
            _fsync_dir(self.results_dir)
        except OSError as exc:
            raise IOFailure(f"cannot sync cache directory {self.results_dir} after writing {final}",
                            str(exc)) from exc

    # -- read ----------------------------------------------------------------------------------

    def read(self, network: str, container_id: str, ifname: str) -> CacheRead:
        """Never raises on bad content: an unusable file comes back as ``damaged`` with a reason.

        A readable entry recorded for a different attachment (libcni's names can collide when
        names contain '-') comes back as ``missing`` with a reason, so its result is not used.
        """
        path = self.path(network, container_id, ifname)
        try:
            data = _read_regular(path)
            entry = decode(data, network, container_id, ifname)
        except DamagedEntry as exc:
            return CacheRead("damaged", path, reason=str(exc))
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG):
                return CacheRead("missing", path)
            if exc.errno == errno.ELOOP:
                return CacheRead("damaged", path, reason="is a symlink")
            raise IOFailure(f"cannot read cache file {path}", str(exc)) from exc
        got = (entry.network, entry.container_id, entry.ifname)
        if got != (network, container_id, ifname):
            return CacheRead("missing", path, reason=f"file holds another attachment {got!r}")
        return CacheRead("ok", path, entry)

    def remove(self, network: str, container_id: str, ifname: str) -> None:
        """Drop the attachment's entry; a missing one is fine."""
        path = self.path(network, container_id, ifname)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise IOFailure(f"cannot remove cache file {path}", str(exc)) from exc
        try:
            _fsync_dir(self.results_dir)
        except OSError as exc:
            raise IOFailure(f"cannot sync cache directory {self.results_dir}", str(exc)) from exc

    # -- GC ------------------------------------------------------------------------------------

    def _candidates(self, network: str, others: Iterable[str]) -> list[Path]:
        _check_component("network name", network)
        prefix = f"{network}-"
        # A file of network "a-b" also starts with "a-"; when the caller knows the other networks,
        # files that belong to a longer name are not ours.
        longer = [f"{o}-" for o in others if o != network and o.startswith(prefix)]
        try:
            names = sorted(os.listdir(self.results_dir))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise IOFailure(f"cannot list cache directory {self.results_dir}", str(exc)) from exc
        return [self.results_dir / n for n in names
                if n.startswith(prefix) and not n.startswith(TEMP_PREFIX)
                and not any(n.startswith(lp) for lp in longer)]

    def _scan(self, network: str, others: Iterable[str]) -> tuple[list[CacheEntry], list[Path]]:
        good: list[CacheEntry] = []
        bad: list[Path] = []
        for path in self._candidates(network, others):
            try:
                entry = decode(_read_regular(path), "", "", "")
            except DamagedEntry:
                bad.append(path)
                continue
            except FileNotFoundError:
                continue  # removed while we scanned
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    bad.append(path)
                    continue
                raise IOFailure(f"cannot read cache file {path}", str(exc)) from exc
            # Legacy entries do not record their network and the name alone is ambiguous: skip them,
            # as libcni's GC does. Entries of another network whose name shares the prefix are skipped too.
            if not entry.legacy and entry.network == network:
                good.append(entry)
        return good, bad

    def attachments(self, network: str, *, others: Iterable[str] = ()) -> list[CacheEntry]:
        """Every readable cniCacheV1 entry whose recorded networkName is ``network``."""
        return self._scan(network, others)[0]

    def damaged(self, network: str, *, others: Iterable[str] = ()) -> list[Path]:
        """Unreadable files named like ``network``'s entries, for GC to remove.

        Pass the other configured network names as ``others`` so that damaged files of a network
        whose name extends this one (``net-a`` vs ``net``) are not reported here.
        """
        return self._scan(network, others)[1]

    def sweep_temp(self, older_than_s: float = 300.0) -> list[Path]:
        """Remove temp files a crashed writer left, if older than ``older_than_s``; returns them.

        The age threshold keeps a concurrent writer's in-flight temp file safe.
        """
        try:
            names = os.listdir(self.results_dir)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise IOFailure(f"cannot list cache directory {self.results_dir}", str(exc)) from exc
        cutoff = time.time() - older_than_s
        removed: list[Path] = []
        for name in names:
            if not name.startswith(TEMP_PREFIX):
                continue
            path = self.results_dir / name
            try:
                if os.lstat(path).st_mtime <= cutoff:
                    os.unlink(path)
                    removed.append(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise IOFailure(f"cannot remove stale temp file {path}", str(exc)) from exc
        return removed
