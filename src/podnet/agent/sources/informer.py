"""podnet's own small informer: list, then watch, one kind, into the Store.

The protocol, as the API server speaks it:
- list (``limit``/``continue`` paging; every page belongs to the first page's snapshot) gives
  the objects and the snapshot's ``resourceVersion``; the informer replaces its kind in the store
  with them, which synthesizes deletes for what vanished while it was not watching;
- watch from that ``resourceVersion`` with ``allowWatchBookmarks=true``: a chunked stream of one
  JSON event per line; object events and bookmarks advance the ``resourceVersion``;
- a stream the server ends (its ``timeoutSeconds``) or a dropped connection: watch again from
  the last ``resourceVersion`` seen, so nothing is lost and nothing is applied twice;
- 410 Gone (the status of the watch request, or an ERROR event with code 410 in the stream): the
  version is older than the server keeps: list again;
- any other failure: retry after an exponential backoff with jitter, capped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx2 as httpx

from podnet.agent import objects
from podnet.agent.objects import Kind, Object, ObjectError
from podnet.agent.store import Event, EventType, Store

log = logging.getLogger(__name__)

# Collection paths across all namespaces: policy needs every pod's labels and IPs, not only this
# node's, so nothing is field-selected.
PATHS: Mapping[Kind, str] = {
    Kind.NAMESPACE: "/api/v1/namespaces",
    Kind.POD: "/api/v1/pods",
    Kind.NETWORK_POLICY: "/apis/networking.k8s.io/v1/networkpolicies",
    Kind.SERVICE: "/api/v1/services",
    Kind.ENDPOINT_SLICE: "/apis/discovery.k8s.io/v1/endpointslices",
    Kind.NODE: "/api/v1/nodes",
}


class Gone(Exception):
    """410: the resourceVersion (or continue token) is older than the server keeps."""


class ApiError(Exception):
    """A failed request or a broken stream: retried after backoff."""


class Stopped(Exception):
    pass


@dataclass
class Backoff:
    """Exponential backoff with jitter: each delay is the current step scaled by a random factor
    in [1 - jitter, 1], so informers that failed together do not retry together."""

    initial: float = 0.5
    cap: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5
    rand: Callable[[], float] = random.random
    _step: float = field(default=0.0, init=False)

    def next(self) -> float:
        self._step = self.initial if self._step == 0.0 else min(self.cap, self._step * self.factor)
        return self._step * (1.0 - self.jitter * self.rand())

    def reset(self) -> None:
        self._step = 0.0


@dataclass
class Stats:
    lists: int = 0
    relists_gone: int = 0
    watches: int = 0
    events: int = 0
    bookmarks: int = 0
    errors: int = 0
    last_error: str | None = None


class Informer:
    """List+watch of one kind into ``store`` under ``source``; ``run`` in a thread of its own."""

    def __init__(self, client: httpx.Client, kind: Kind, store: Store, source: str, *,
                 page_size: int = 500, watch_timeout: int = 300, backoff: Backoff | None = None) -> None:
        self.client, self.kind, self.store, self.source = client, kind, store, source
        self.path = PATHS[kind]
        self.page_size, self.watch_timeout = page_size, watch_timeout
        self.backoff = backoff or Backoff()
        self.resource_version: str | None = None
        self.stats = Stats()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._active: httpx.Response | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Run in a thread; after a stop, a new start resumes from the last resourceVersion."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name=f"podnet-informer-{self.kind.kind}",
                                        daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the thread to stop without waiting for it (see :meth:`stop`)."""
        self._stop.set()
        self._interrupt()

    def stop(self, timeout: float = 5.0) -> None:
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("informer %s did not stop within %.1fs", self.kind.kind, timeout)
            self._thread = None

    def _interrupt(self) -> None:
        # A thread blocked reading a quiet watch stream wakes only when its socket is shut down.
        with self._lock:
            response = self._active
        if response is None:
            return
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.resource_version is None:
                    self._list()
                started, events = time.monotonic(), self.stats.events + self.stats.bookmarks
                self._watch()
                if events == self.stats.events + self.stats.bookmarks and time.monotonic() - started < 1.0:
                    # A server (or proxy) that ends every watch at once must not make a busy loop.
                    raise ApiError(f"watch {self.path}: the server ended the stream at once")
            except Gone:
                if self.resource_version is None:
                    # The list itself was refused (its continue token expired): list again,
                    # but never in a busy loop against a server that keeps refusing.
                    self._failed(ApiError(f"list {self.path}: 410 Gone"))
                    continue
                log.info("%s: resourceVersion %s is gone; listing again", self.kind.kind,
                         self.resource_version)
                self.stats.relists_gone += 1
                self.resource_version = None
            except Stopped:
                return
            except Exception as exc:  # every failure is retried; the informer never dies
                if self._stop.is_set():
                    return
                self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        text = str(exc) if isinstance(exc, ApiError) else f"{type(exc).__name__}: {exc}"
        self.stats.errors += 1
        self.stats.last_error = text
        delay = self.backoff.next()
        log.warning("%s: %s; retrying in %.2fs", self.kind.kind, text, delay)
        self._stop.wait(delay)

    # --- requests --------------------------------------------------------------------------
    def _open(self, params: dict[str, str], timeout: httpx.Timeout) -> httpx.Response:
        request = self.client.build_request("GET", self.path, params=params, timeout=timeout)
        response = self.client.send(request, stream=True)
        with self._lock:
            self._active = response
        if self._stop.is_set():
            self._close(response)
            raise Stopped
        if response.status_code == 410:
            self._close(response)
            raise Gone
        if response.status_code != 200:
            detail = _status_message(response)
            self._close(response)
            raise ApiError(f"GET {self.path}: HTTP {response.status_code}{detail}")
        return response

    def _close(self, response: httpx.Response) -> None:
        with self._lock:
            if self._active is response:
                self._active = None
        response.close()

    # --- list ------------------------------------------------------------------------------
    def _list(self) -> None:
        items: list[Any] = []
        params: dict[str, str] = {"limit": str(self.page_size)}
        version: str | None = None
        while True:
            response = self._open(params, self.client.timeout)
            try:
                body = _json(response.read(), f"list {self.path}")
            finally:
                self._close(response)
            meta = body.get("metadata") if isinstance(body.get("metadata"), Mapping) else {}
            assert isinstance(meta, Mapping)
            page = body.get("items")
            if not isinstance(page, list):
                raise ApiError(f"list {self.path}: the response has no items list")
            items.extend(page)
            version = version or _str(meta.get("resourceVersion"))
            cont = _str(meta.get("continue"))
            if not cont:
                break
            params = {"limit": str(self.page_size), "continue": cont}
        if not version:
            raise ApiError(f"list {self.path}: the response has no resourceVersion")
        self.store.replace(self.kind, self.source, self._parse_all(items))
        self.resource_version = version
        self.stats.lists += 1

    def _parse_all(self, items: list[Any]) -> Iterator[Object]:
        for raw in items:
            obj = self._parse(raw)
            if obj is not None:
                yield obj

    def _parse(self, raw: object) -> Object | None:
        try:
            return objects.parse_object(raw, expected=self.kind, default_namespace=None)
        except ObjectError as exc:
            log.warning("%s: %s (skipped)", self.kind.kind, exc)
            return None

    # --- watch -----------------------------------------------------------------------------
    def _watch(self) -> None:
        assert self.resource_version is not None
        params = {"watch": "1", "resourceVersion": self.resource_version,
                  "allowWatchBookmarks": "true", "timeoutSeconds": str(self.watch_timeout)}
        # The server ends the stream after timeoutSeconds; silence well past that means the
        # connection died without a FIN (a half-open TCP connection).
        timeout = httpx.Timeout(self.client.timeout.connect, read=self.watch_timeout + 30.0,
                                write=self.client.timeout.write, pool=self.client.timeout.pool)
        response = self._open(params, timeout)
        self.stats.watches += 1
        try:
            for line in response.iter_lines():
                if line.strip():
                    self._event(_json(line.encode(), f"watch {self.path}"))
                    self.backoff.reset()  # the connection works: a later failure starts small
        except httpx.HTTPError as exc:
            if self._stop.is_set():
                raise Stopped from None
            raise ApiError(f"watch {self.path}: connection lost at resourceVersion "
                           f"{self.resource_version}: {type(exc).__name__}") from None
        finally:
            self._close(response)
        if self._stop.is_set():
            raise Stopped

    def _event(self, event: Mapping[str, Any]) -> None:
        kind, raw = event.get("type"), event.get("object")
        if not isinstance(raw, Mapping):
            raise ApiError(f"watch {self.path}: an event without an object")
        if kind == "ERROR":
            code = raw.get("code")
            if code == 410:
                raise Gone
            raise ApiError(f"watch {self.path}: ERROR event {code}: {raw.get('message')}")
        meta = raw.get("metadata")
        version = _str(meta.get("resourceVersion")) if isinstance(meta, Mapping) else None
        if kind == "BOOKMARK":
            self.stats.bookmarks += 1
        elif kind in ("ADDED", "MODIFIED", "DELETED"):
            self._object_event(EventType(kind), raw)
            self.stats.events += 1
        else:
            raise ApiError(f"watch {self.path}: unknown event type {kind!r}")
        if version:
            self.resource_version = version

    def _object_event(self, kind: EventType, raw: Mapping[str, Any]) -> None:
        obj = self._parse(raw)
        if obj is not None:
            self.store.apply(Event(kind, obj), self.source)
        elif kind is EventType.DELETED:
            key = _key(raw, self.kind)
            if key is not None:
                self.store.delete(self.kind, key)
        # A MODIFIED object that no longer parses keeps its previous value: what the agent last
        # understood of it stays in force (and the problem is logged).


def _key(raw: Mapping[str, Any], kind: Kind) -> objects.Key | None:
    meta = raw.get("metadata")
    if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str):
        return None
    if not kind.namespaced:
        return str(meta["name"])
    ns = meta.get("namespace")
    return (ns, str(meta["name"])) if isinstance(ns, str) else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _json(data: bytes, what: str) -> Mapping[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        raise ApiError(f"{what}: the server sent something that is not JSON") from None
    if not isinstance(value, Mapping):
        raise ApiError(f"{what}: the server sent JSON that is not an object")
    return value


def _status_message(response: httpx.Response) -> str:
    try:
        body = json.loads(response.read()[:65536])
    except (ValueError, httpx.HTTPError):
        return ""
    message = body.get("message") if isinstance(body, Mapping) else None
    return f": {message}" if isinstance(message, str) and message else ""
