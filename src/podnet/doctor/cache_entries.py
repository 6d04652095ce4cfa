"""Result-cache debris: libcni's ``<cacheDir>/results/<net>-<containerID>-<ifname>`` entries and
podnet's pending markers (``<cacheDir>/podnet-pending/results/...``, written before an ADD starts,
removed when it ends; see :mod:`podnet.runtime.operations`).

* an empty or torn entry (not JSON, not ``cniCacheV1``) helps nobody: libcni's DEL fails on it,
  podnet's DEL goes on without it; removing it is always safe, whether or not its pod is live;
* a readable entry or marker of an attachment that is not live is left by a pod that is gone;
* a marker of a live attachment with a cached result is left by an ADD that finished (its last
  step failed); a marker of a live attachment *without* a cached result is an ADD that was killed
  half-way: the pod is half-built, and only a DEL and a new ADD make it whole.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from podnet.doctor.context import Context
from podnet.doctor.files import remove_if_unchanged, stamp
from podnet.doctor.findings import Changed, Finding
from podnet.doctor.live import still_live
from podnet.doctor.scope import PodnetNetwork
from podnet.runtime.cache import TEMP_PREFIX, CacheEntry, DamagedEntry, ResultCache, decode
from podnet.runtime.operations import PENDING_DIR

_REMOVE = "--fix removes the file"


def _damage(path: Path) -> str:
    """Why the file is not a cache entry (decode's reason), or "" when it reads fine now."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        if st.st_size == 0:
            return "empty file"
        decode(path.read_bytes(), "", "", "")
    except DamagedEntry as exc:
        return str(exc)
    except OSError:
        return ""
    return ""


def _remover(path: Path, guard: Callable[[], None] | None = None) -> Callable[[], None]:
    judged = stamp(path)

    def repair() -> None:
        if guard is not None:
            guard()
        remove_if_unchanged(path, judged)
    return repair


def _not_live(ctx: Context, network: str, container_id: str, ifname: str) -> Callable[[], None]:
    def guard() -> None:
        if still_live(ctx.netns, network, container_id, ifname):
            raise Changed(f"attachment {network}/{container_id}/{ifname} is live now; left alone")
    return guard


def _label(store: str) -> str:
    return "pending marker" if store == "pending" else "result cache entry"


def damaged(ctx: Context, cache: ResultCache, net: PodnetNetwork, store: str) -> list[Finding]:
    live_paths = {cache.path(net.name, *v.attachment): v.attachment
                  for v in ctx.live.veths(net.name) if v.attachment is not None}
    out = []
    for path in cache.damaged(net.name, others=ctx.scope.all_names):
        reason = _damage(path)
        if not reason or ctx.fresh(path):
            continue
        owner = live_paths.get(path)
        whose = (f"it belongs to live attachment {net.name}/{owner[0]}/{owner[1]}, whose CHECK fails and "
                 "whose libcni DEL fails until it is gone" if owner else "no live attachment has this name")
        out.append(Finding(
            f"{store}-{'empty' if reason == 'empty file' else 'torn'}", "problem", str(path),
            f"{_label(store)} is unusable ({reason}); {whose}",
            f"{_REMOVE} (DEL works without it, a cached result cannot be rebuilt from garbage)",
            network=net.name, attachment=owner, repair=_remover(path)))
    return out


def _entries(cache: ResultCache, net: PodnetNetwork, others: list[str]) -> list[tuple[CacheEntry, Path]]:
    out = []
    for entry in cache.attachments(net.name, others=others):
        try:
            path = cache.path(entry.network, entry.container_id, entry.ifname)
        except ValueError:
            continue  # an identity no file name can hold: not an entry this cache wrote
        if path.exists():
            out.append((entry, path))
    return out


def orphaned_results(ctx: Context, results: ResultCache, net: PodnetNetwork) -> list[Finding]:
    out = []
    for entry, path in _entries(results, net, ctx.scope.all_names):
        key = (entry.container_id, entry.ifname)
        if ctx.live.is_live(net.name, *key) or ctx.fresh(path):
            continue
        out.append(Finding(
            "cache-orphan", "problem", str(path),
            f"result cache entry of {net.name}/{key[0]}/{key[1]}, whose pod is gone (no host veth)",
            _REMOVE, network=net.name, attachment=key,
            repair=_remover(path, _not_live(ctx, net.name, *key))))
    return out


def pending_markers(ctx: Context, pending: ResultCache, results: ResultCache,
                    net: PodnetNetwork) -> list[Finding]:
    out = []
    for entry, path in _entries(pending, net, ctx.scope.all_names):
        key = (entry.container_id, entry.ifname)
        if ctx.fresh(path):
            continue
        cached = results.read(net.name, *key).ok
        live = ctx.live.is_live(net.name, *key) if net.judges_liveness else None
        if live is False:
            out.append(Finding(
                "pending-orphan", "problem", str(path),
                f"pending marker of an ADD of {net.name}/{key[0]}/{key[1]} that never finished; "
                "the pod is gone",
                _REMOVE, network=net.name, attachment=key,
                repair=_remover(path, _not_live(ctx, net.name, *key))))
        elif cached:
            out.append(Finding(
                "pending-stale", "problem", str(path),
                f"pending marker of an ADD of {net.name}/{key[0]}/{key[1]} that finished "
                "(its result is cached)",
                _REMOVE, network=net.name, attachment=key, repair=_remover(path)))
        elif live:
            out.append(Finding(
                "add-interrupted", "problem", str(path),
                f"the ADD of {net.name}/{key[0]}/{key[1]} was killed half-way: the pod has its veth but no "
                "cached result, and may miss what later plugins set up",
                f"not fixed by doctor (the pod is live): DEL the attachment (podnet cni del {net.name} "
                f"<netns> --container-id {key[0]} --ifname {key[1]}), then ADD it again",
                network=net.name, attachment=key))
        else:
            out.append(Finding(
                "pending-unjudged", "note", str(path),
                f"pending marker of an unfinished ADD of {net.name}/{key[0]}/{key[1]}; this network's "
                "plugins make no podnet veth, so doctor cannot tell whether the pod is live",
                "not fixed: GC of the runtime (podnet cni gc) deletes it when the pod is not listed as valid",
                network=net.name, attachment=key))
    return out


def _owner_network(ctx: Context, final_name: str) -> PodnetNetwork | None:
    """The network a temp file's final name belongs to: the longest configured name it starts with."""
    names = sorted((n for n in ctx.scope.all_names if final_name.startswith(f"{n}-")), key=len)
    return ctx.scope.network(names[-1]) if names else None


def temp_files(ctx: Context, cache: ResultCache, store: str) -> list[Finding]:
    try:
        names = sorted(os.listdir(cache.results_dir))
    except OSError:
        return []
    out = []
    for name in names:
        net = _owner_network(ctx, name[len(TEMP_PREFIX):]) if name.startswith(TEMP_PREFIX) else None
        path = cache.results_dir / name
        if net is None or ctx.fresh(path):
            continue
        out.append(Finding(
            f"{store}-temp", "problem", str(path),
            f"temporary file of a {_label(store)} writer that died before renaming it", _REMOVE,
            network=net.name, repair=_remover(path)))
    return out


def check(ctx: Context) -> list[Finding]:
    results = ResultCache(ctx.cache_dir)
    pending = ResultCache(ctx.cache_dir / PENDING_DIR)
    out: list[Finding] = []
    for net in ctx.scope.networks:
        out += damaged(ctx, results, net, "cache")
        out += damaged(ctx, pending, net, "pending")
        if net.judges_liveness:
            out += orphaned_results(ctx, results, net)
        out += pending_markers(ctx, pending, results, net)
    out += temp_files(ctx, results, "cache")
    out += temp_files(ctx, pending, "pending")
    return out
