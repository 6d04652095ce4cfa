"""The libcni job: run a network configuration list's plugins for ADD, DEL, CHECK, STATUS and GC.

What podnet does beyond libcni, and why:
- A failed ADD is rolled back: DEL runs for the whole list (reverse order) before the error is
  returned, so nothing is left half-built even when the caller never sends DEL.
- Before ADD starts, a *pending* entry is written to podnet's own directory beside libcni's results.
  If the runtime dies mid-ADD, GC still finds the attachment and DELs it; libcni's own results
  directory only ever holds complete entries (libcni's DEL fails on an unreadable entry).
- DEL never depends on the cache: a missing, empty, torn or garbage entry means DEL runs without
  prevResult, the bad file is removed, and DEL succeeds if the plugins' DELs do.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from podnet.cni import version as ver
from podnet.cni.args import validate_container_id, validate_ifname
from podnet.cni.config import VALID_ATTACHMENTS_KEY, NetConfList, PluginConf, plugin_stdin
from podnet.cni.errors import CNIError, IncompatibleVersion, InvalidEnvironment, UnknownContainer
from podnet.cni.result import Result
from podnet.runtime.cache import DEFAULT_CACHE_DIR, CacheEntry, ResultCache
from podnet.runtime.invoke import Exec, Invocation, RealExec, decode_output

log = logging.getLogger("podnet.runtime")

PENDING_DIR = "podnet-pending"
NAME_MAX = 255


@dataclass(frozen=True)
class RuntimeConf:
    """The per-attachment parameters of one operation (libcni's RuntimeConf)."""

    container_id: str
    netns: str = ""
    ifname: str = "eth0"
    args: tuple[tuple[str, str], ...] = ()
    capability_args: Mapping[str, Any] = field(default_factory=dict)


class MultiError(CNIError):
    """Several plugins failed (DEL and GC go on after a failure and report all of them)."""

    def __init__(self, what: str, errors: Sequence[tuple[str, CNIError]]) -> None:
        parts = [f"{name}: {err}" for name, err in errors]
        super().__init__(f"{what} failed for {len(errors)} plugin(s)", "; ".join(parts),
                         code=errors[0][1].code)
        self.errors = list(errors)


class CNIRuntime:
    def __init__(self, path: Sequence[str], cache_dir: str | Path = DEFAULT_CACHE_DIR,
                 exec_: Exec | None = None) -> None:
        self.path = tuple(path)
        self.cache = ResultCache(cache_dir)
        # Podnet's marker of ADDs under way; same entry format, separate directory: libcni never reads it.
        self.pending = ResultCache(Path(cache_dir) / PENDING_DIR)
        self.exec = exec_ if exec_ is not None else RealExec()

    # -- one plugin call ----------------------------------------------------------------------

    def _call(self, conf: NetConfList, plugin: PluginConf, command: str, rt: RuntimeConf | None,
              prev: Result | None = None, extra: dict[str, Any] | None = None) -> bytes:
        exe = self.exec.find(plugin.type, self.path)
        stdin = plugin_stdin(
            conf, plugin,
            prev_result=prev.to_json(conf.cni_version) if prev is not None else None,
            capability_args=dict(rt.capability_args) if rt else None,
            extra=extra,
        )
        if rt is None:
            inv = Invocation(command=command, path=self.path)
        else:
            inv = Invocation(command, rt.container_id, rt.netns, rt.ifname, rt.args, self.path)
        return self.exec.run(exe, inv, stdin)

    def _validate(self, conf: NetConfList, rt: RuntimeConf, need_netns: bool) -> None:
        validate_container_id(rt.container_id)
        validate_ifname(rt.ifname)
        if need_netns and not rt.netns:
            raise InvalidEnvironment("network namespace path (CNI_NETNS) is empty")
        file_name = f"{conf.name}-{rt.container_id}-{rt.ifname}"
        if len(file_name.encode()) > NAME_MAX:
            raise InvalidEnvironment(
                f"network name, container ID and interface name together are {len(file_name)} characters; "
                f"the result cache file name allows {NAME_MAX}")

    def _entry(self, conf: NetConfList, rt: RuntimeConf, result: Result | None) -> CacheEntry:
        return CacheEntry(
            network=conf.name, container_id=rt.container_id, ifname=rt.ifname, config=conf.raw_bytes,
            result=result.to_json(conf.cni_version) if result is not None else None,
            cni_args=list(rt.args), capability_args=dict(rt.capability_args),
        )

    # -- ADD ----------------------------------------------------------------------------------

    def add(self, conf: NetConfList, rt: RuntimeConf) -> Result:
        self._validate(conf, rt, need_netns=True)
        # Every plugin must be there before anything runs: a plugin that cannot be found cannot be
        # sent the DEL that rolls the others back, and the pending marker would stay for nothing.
        for plugin in conf.plugins:
            self.exec.find(plugin.type, self.path)
        self.pending.write(self._entry(conf, rt, None))
        prev: Result | None = None
        try:
            for plugin in conf.plugins:
                out = self._call(conf, plugin, "ADD", rt, prev)
                prev = Result.from_json(decode_output(plugin.type, out), default_version=conf.cni_version)
            if prev is None:  # parse_conflist guarantees plugins; keep mypy and readers sure
                raise CNIError(f"network {conf.name!r} has no plugins")
            prev = prev.convert(conf.cni_version)
            self.cache.write(self._entry(conf, rt, prev))
        except BaseException:
            self._rollback(conf, rt, prev)
            raise
        # The attachment is up and cached; a marker left behind is only a hint for GC, not a failure.
        self._drop_pending(conf, rt)
        return prev

    def _drop_pending(self, conf: NetConfList, rt: RuntimeConf) -> None:
        try:
            self.pending.remove(conf.name, rt.container_id, rt.ifname)
        except CNIError as err:
            log.warning("cannot remove pending marker of %s/%s/%s: %s",
                        conf.name, rt.container_id, rt.ifname, err)

    def _rollback(self, conf: NetConfList, rt: RuntimeConf, prev: Result | None) -> None:
        if prev is not None and ver.at_least(conf.cni_version, "0.4.0"):
            try:
                prev.to_json(conf.cni_version)
            except CNIError:
                prev = None  # a result the list's version cannot carry must not block the DELs
        else:
            prev = None  # as for any DEL: prevResult on DEL exists since spec 0.4.0
        try:
            self._delete_plugins(conf, rt, prev)
        except Exception as err:  # the ADD's own error is what the caller must see
            # The pending entry stays, so a later DEL or GC finishes the job.
            log.warning("rollback of failed ADD %s/%s/%s incomplete: %s",
                        conf.name, rt.container_id, rt.ifname, err)
            return
        self._drop_pending(conf, rt)

    # -- DEL ----------------------------------------------------------------------------------

    def _cached_prev(self, conf: NetConfList, rt: RuntimeConf, *, drop_damaged: bool) -> Result | None:
        read = self.cache.read(conf.name, rt.container_id, rt.ifname)
        if read.damaged:
            log.warning("cache entry %s is damaged (%s); going on without prevResult", read.path, read.reason)
            if drop_damaged:
                self._drop_damaged(read.path)
            return None
        if read.prev_result is None:
            return None
        try:
            cached = Result.from_json(read.prev_result, default_version=conf.cni_version)
            return cached.convert(conf.cni_version)
        except CNIError as err:
            log.warning("cached result in %s is unusable (%s); going on without prevResult", read.path, err)
            return None

    def _drop_damaged(self, path: Path) -> None:
        # A file DEL cannot use must not make DEL fail: the plugins' DELs are what matter.
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove damaged cache entry %s: %s", path, exc)

    def _delete_plugins(self, conf: NetConfList, rt: RuntimeConf, prev: Result | None) -> None:
        errors: list[tuple[str, CNIError]] = []
        for plugin in reversed(conf.plugins):
            try:
                self._call(conf, plugin, "DEL", rt, prev)
            except CNIError as err:
                errors.append((plugin.type, err))
        if errors:
            raise MultiError("DEL", errors)

    def delete(self, conf: NetConfList, rt: RuntimeConf) -> None:
        self._validate(conf, rt, need_netns=False)
        prev = self._cached_prev(conf, rt, drop_damaged=True)
        # prevResult on DEL exists since spec 0.4.0.
        if not ver.at_least(conf.cni_version, "0.4.0"):
            prev = None
        self._delete_plugins(conf, rt, prev)
        self._remove_own(self.cache, conf, rt)
        self._remove_own(self.pending, conf, rt)

    def _remove_own(self, store: ResultCache, conf: NetConfList, rt: RuntimeConf) -> None:
        """Remove the attachment's entry, unless the file holds another attachment: libcni's file
        names collide when names contain '-' (net ``a`` + ID ``b-c`` vs net ``a-b`` + ID ``c``)."""
        read = store.read(conf.name, rt.container_id, rt.ifname)
        if read.damaged:
            self._drop_damaged(read.path)
        elif read.missing and read.reason:
            log.warning("leaving %s alone: %s", read.path, read.reason)
        elif read.ok:
            store.remove(conf.name, rt.container_id, rt.ifname)

    # -- CHECK / STATUS -----------------------------------------------------------------------

    def check(self, conf: NetConfList, rt: RuntimeConf) -> None:
        self._validate(conf, rt, need_netns=True)
        if conf.disable_check:
            return
        if not ver.allows_check(conf.cni_version):
            raise IncompatibleVersion(f"network {conf.name!r} has cniVersion {conf.cni_version}; "
                                      "CHECK needs 0.4.0 or later")
        prev = self._cached_prev(conf, rt, drop_damaged=False)
        if prev is None:
            raise UnknownContainer(f"no usable cached result for container {rt.container_id!r} "
                                   f"interface {rt.ifname!r} on network {conf.name!r}; was it added?")
        for plugin in conf.plugins:
            self._call(conf, plugin, "CHECK", rt, prev)

    def status(self, conf: NetConfList) -> None:
        """STATUS each plugin in order; the first error (e.g. 50, no IPs left) is returned."""
        if not ver.allows_status_and_gc(conf.cni_version):
            return  # older plugins know no STATUS: a network they run is assumed ready
        for plugin in conf.plugins:
            self._call(conf, plugin, "STATUS", None)

    # -- GC -----------------------------------------------------------------------------------

    def gc(self, conf: NetConfList, valid: Iterable[tuple[str, str]],
           other_networks: Iterable[str] = ()) -> list[tuple[str, str]]:
        """DEL every cached or pending attachment not in ``valid``, remove damaged entries, then send
        GC to each plugin (spec 1.1.0+). Returns the attachments that were deleted."""
        if conf.disable_gc:
            return []
        keep = set(valid)
        for container_id, ifname in keep:
            validate_container_id(container_id)
            validate_ifname(ifname)
        others = list(other_networks)
        errors: list[tuple[str, CNIError]] = []
        deleted = self._gc_stale(conf, keep, others, errors)
        self._gc_damaged(conf, keep, others)
        if ver.allows_status_and_gc(conf.cni_version):
            body = {VALID_ATTACHMENTS_KEY: [{"containerID": c, "ifname": i} for c, i in sorted(keep)]}
            for plugin in conf.plugins:
                try:
                    self._call(conf, plugin, "GC", None, extra=body)
                except CNIError as err:
                    errors.append((plugin.type, err))
        self.cache.sweep_temp()
        self.pending.sweep_temp()
        if errors:
            raise MultiError("GC", errors)
        return deleted

    def _gc_stale(self, conf: NetConfList, keep: set[tuple[str, str]], others: list[str],
                  errors: list[tuple[str, CNIError]]) -> list[tuple[str, str]]:
        stale: dict[tuple[str, str], CacheEntry] = {}
        for store in (self.pending, self.cache):
            for entry in store.attachments(conf.name, others=others):
                key = (entry.container_id, entry.ifname)
                if key not in keep:
                    stale.setdefault(key, entry)
        deleted = []
        for key, entry in sorted(stale.items()):
            rt = RuntimeConf(entry.container_id, "", entry.ifname, tuple(entry.cni_args),
                             entry.capability_args)
            try:
                self.delete(conf, rt)
                deleted.append(key)
            except CNIError as err:
                errors.append((f"DEL {key[0]}/{key[1]}", err))
        return deleted

    def _gc_damaged(self, conf: NetConfList, keep: set[tuple[str, str]], others: list[str]) -> None:
        for store in (self.cache, self.pending):
            kept = {store.path(conf.name, c, i) for c, i in keep}
            for path in store.damaged(conf.name, others=others):
                if path in kept:
                    continue  # a live attachment's DEL will deal with it
                log.warning("GC removes damaged cache file %s", path)
                self._drop_damaged(path)
