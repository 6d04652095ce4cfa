"""The manifest-directory source: the agent's embedded default, so it works with no cluster.

Every ``*.yaml``, ``*.yml`` and ``*.json`` file directly in the directory (hidden names, editor
droppings and subdirectories are ignored) holds objects. The directory is re-read on change
(inotify, debounced; polled on filesystems where inotify does not see every change). A file is
applied whole or not at all: one that cannot be read or parsed keeps its previous objects in
force and is retried. A removed file's objects are deleted. An object defined in two files is
reported and the first file (by path order) wins. Errors are logged and kept in
:meth:`ManifestSource.status`; nothing here ever stops the agent.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Iterable

from podnet.agent.objects import Key, Kind, Object, describe_key, key_of, kind_of
from podnet.agent.sources import manifest_files
from podnet.agent.sources.manifest_files import SUFFIXES, Loaded, Unreadable
from podnet.agent.store import Store
from podnet.kernel import inotify

log = logging.getLogger(__name__)


class ManifestError(Exception):
    """The directory itself cannot be used (missing, not a directory)."""


class ManifestSource:
    def __init__(self, store: Store, directory: str | os.PathLike[str], *, name: str = "manifests",
                 kinds: Iterable[Kind] = tuple(Kind), debounce: float = 0.1, retry: float = 1.0,
                 poll: float = 2.0) -> None:
        """``kinds``: what this source feeds (objects of other kinds in the files are ignored)."""
        self.store = store
        self.directory = str(directory)
        self.name = name
        self.kinds = tuple(dict.fromkeys(kinds))
        self.debounce, self.retry, self.poll = debounce, retry, poll
        self._files: dict[str, Loaded] = {}  # path -> last good parse
        self._sigs: dict[str, tuple[int, int, int, int]] = {}
        self._unreadable: dict[str, str] = {}  # path -> why its current content is not applied
        self._duplicates: dict[str, list[str]] = {}
        self._dir_error: str | None = None
        self._scan_lock = threading.Lock()
        self._stop_r, self._stop_w = -1, -1
        self._thread: threading.Thread | None = None
        self._watch: inotify.DirWatch | None = None
        self.scans = 0
        # Registered when made, not when started: the store cannot become synced on another
        # source's list before this one has listed.
        store.register_source(name, self.kinds)

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Read the whole directory once (the store's first full list from this source) and
        start following changes in a thread."""
        if not os.path.isdir(self.directory):
            raise ManifestError(f"manifest directory {self.directory}: not a directory")
        self._watch = self._new_watch()
        self.scan()
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._run, name=f"podnet-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(timeout)
            self._thread = None
        for fd in (self._stop_r, self._stop_w):
            if fd >= 0:
                os.close(fd)
        self._stop_r = self._stop_w = -1
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def _new_watch(self) -> inotify.DirWatch | None:
        try:
            return inotify.DirWatch(self.directory)
        except OSError as exc:
            self._dir_error = f"cannot watch: {exc.strerror or exc}"
            return None

    def _run(self) -> None:
        dirty_since: float | None = None
        last_scan = time.monotonic()
        while True:
            now = time.monotonic()
            if dirty_since is not None:
                wait = max(0.0, dirty_since + self.debounce - now)
            elif self._unreadable or self._dir_error or self._watch is None:
                wait = max(0.0, last_scan + self.retry - now)
            else:
                wait = max(0.0, last_scan + self.poll - now)
            fds = [self._stop_r] + ([self._watch.fd] if self._watch is not None else [])
            ready, _, _ = select.select(fds, [], [], wait)
            if self._stop_r in ready:
                return
            if self._watch is not None and self._watch.fd in ready:
                _names, lost = self._watch.changes()
                dirty_since = time.monotonic()  # debounce: scan once the writer has paused
                if lost:
                    self._watch.close()
                    self._watch = None
                continue
            if self._watch is None:
                self._watch = self._new_watch() if os.path.isdir(self.directory) else None
            self._safe_scan()
            dirty_since, last_scan = None, time.monotonic()

    def _safe_scan(self) -> None:
        try:
            self.scan()
        except Exception:
            # Never let the watcher thread die: the directory's last good state stays in force.
            log.exception("manifest directory %s: scan failed", self.directory)

    # --- reading ---------------------------------------------------------------------------
    def scan(self) -> None:
        """Re-read what changed (every file whose stat changed, every file not yet applied) and
        publish the directory's objects to the store."""
        with self._scan_lock:
            self.scans += 1
            try:
                paths = self._list()
            except OSError as exc:
                # The directory vanished or became unreadable: keep what it last said.
                self._set_dir_error(f"cannot list: {exc.strerror or exc}")
                return
            self._set_dir_error(None)
            for gone in [p for p in self._files if p not in paths]:
                del self._files[gone]
                self._sigs.pop(gone, None)
            for gone in [p for p in self._unreadable if p not in paths]:
                del self._unreadable[gone]
            for path in paths:
                self._refresh(path)
            self._publish()

    def _list(self) -> list[str]:
        paths = []
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if (entry.name.startswith(".") or not entry.name.endswith(SUFFIXES)
                        or not entry.is_file()):
                    continue
                paths.append(os.path.join(self.directory, entry.name))
        return sorted(paths)

    def _refresh(self, path: str) -> None:
        try:
            sig = manifest_files.signature(os.stat(path))
        except OSError:
            sig = None
        if sig is not None and self._sigs.get(path) == sig and path not in self._unreadable:
            return
        try:
            loaded, sig = manifest_files.load(path, self.kinds)
        except Unreadable as exc:
            if self._unreadable.get(path) != str(exc):
                kept = "keeping its previous objects" if path in self._files else "nothing applied"
                log.warning("manifest %s: %s; %s, will retry", path, exc, kept)
            self._unreadable[path] = str(exc)
            return
        self._unreadable.pop(path, None)
        for error in loaded.errors:
            if error not in (self._files.get(path) or Loaded()).errors:
                log.warning("manifest %s: %s", path, error)
        self._files[path], self._sigs[path] = loaded, sig

    def _set_dir_error(self, error: str | None) -> None:
        if error and error != self._dir_error:
            log.warning("manifest directory %s: %s", self.directory, error)
        self._dir_error = error

    def _publish(self) -> None:
        chosen: dict[Kind, dict[Key, Object]] = {k: {} for k in self.kinds}
        origin: dict[tuple[Kind, Key], str] = {}
        duplicates: dict[str, list[str]] = {}
        for path in sorted(self._files):
            for obj in self._files[path].objects:
                kind, key = kind_of(obj), key_of(obj)
                if kind not in chosen:
                    continue
                first = origin.get((kind, key))
                if first is not None:
                    where = "earlier in this file" if first == path else f"in {first}"
                    duplicates.setdefault(path, []).append(
                        f"{describe_key(kind, key)} is already defined {where}; this one is ignored")
                    continue
                origin[(kind, key)] = path
                chosen[kind][key] = obj
        for path, errors in duplicates.items():
            if errors != self._duplicates.get(path):
                log.warning("manifest %s: %s", path, "; ".join(errors))
        self._duplicates = duplicates
        for kind in self.kinds:
            self.store.replace(kind, self.name, chosen[kind].values())

    # --- reporting -------------------------------------------------------------------------
    def status(self) -> dict[str, str]:
        """path -> what is wrong with it now (the directory's own problem under its path)."""
        with self._scan_lock:
            out: dict[str, list[str]] = {}
            if self._dir_error:
                out[self.directory] = [self._dir_error]
            for path, loaded in self._files.items():
                out.setdefault(path, []).extend(loaded.errors)
            for path, dups in self._duplicates.items():
                out.setdefault(path, []).extend(dups)
            for path, why in self._unreadable.items():
                kept = " (its previous objects stay in force)" if path in self._files else ""
                out.setdefault(path, []).append(f"{why}{kept}")
            return {path: "; ".join(errors) for path, errors in out.items() if errors}

