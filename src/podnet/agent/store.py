"""The agent's one in-memory model: the objects of every kind (``objects.Kind``) the sources feed.

Sources register themselves and feed events (:meth:`Store.apply`) or full lists
(:meth:`Store.replace`, which synthesizes deletes for what vanished). Subscribers get a
:class:`Change` per real change, in the order the changes were made, called outside the store's
lock so that they may read the store. Nothing is programmed from the store until
:attr:`Store.synced`: every registered source has completed its first full list of each of its
kinds, so a half-listed cluster is never mistaken for a cluster without policies.
"""

from __future__ import annotations

import collections
import enum
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from podnet.agent.model import EndpointSlice, Namespace, NetworkPolicy, Node, Pod, Service
from podnet.agent.objects import Key, Kind, Object, describe_key, key_of, kind_of

log = logging.getLogger(__name__)


class EventType(enum.Enum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


@dataclass(frozen=True)
class Event:
    """One object's change as a source saw it (DELETED carries the last known object)."""

    type: EventType
    object: Object


@dataclass(frozen=True)
class Change:
    """What changed in the store: ``old`` None = added, ``new`` None = deleted."""

    kind: Kind
    key: Key
    old: Object | None
    new: Object | None
    generation: int = field(default=0, compare=False)  # the store's generation once it was made


_EMPTY: Mapping[Any, Any] = MappingProxyType({})
ServiceKey = tuple[str, str]  # (namespace, service name)


@dataclass(frozen=True)
class Snapshot:
    """A consistent view of the whole store at one moment (immutable)."""

    namespaces: Mapping[str, Namespace]
    pods: Mapping[tuple[str, str], Pod]
    policies: Mapping[tuple[str, str], NetworkPolicy]
    synced: bool
    generation: int
    services: Mapping[tuple[str, str], Service] = field(default_factory=lambda: _EMPTY)
    endpoint_slices: Mapping[tuple[str, str], EndpointSlice] = field(default_factory=lambda: _EMPTY)
    nodes: Mapping[str, Node] = field(default_factory=lambda: _EMPTY)
    # (namespace, service) -> the keys of its slices, sorted (slices without a service: omitted)
    slice_keys: Mapping[ServiceKey, tuple[tuple[str, str], ...]] = field(default_factory=lambda: _EMPTY)

    def slices_for(self, namespace: str, service: str) -> tuple[EndpointSlice, ...]:
        """The EndpointSlices of one Service, in name order."""
        return tuple(self.endpoint_slices[k] for k in self.slice_keys.get((namespace, service), ()))


Subscriber = Callable[[Change], None]


class Store:
    """Thread-safe; every reader gets an immutable copy."""

    def __init__(self, node_name: str | None = None) -> None:
        self._node_name = node_name or socket.gethostname()
        self._lock = threading.Lock()
        self._objects: dict[Kind, dict[Key, Object]] = {k: {} for k in Kind}
        # (namespace, service) -> its slices' keys (sorted), kept with every put and delete of a
        # slice; tuples, so that a snapshot shares them instead of copying each.
        self._slices: dict[ServiceKey, tuple[tuple[str, str], ...]] = {}
        # Which source last set each object: a full list from one source deletes only its own.
        self._owner: dict[Kind, dict[Key, str]] = {k: {} for k in Kind}
        self._pending_lists: set[tuple[str, Kind]] = set()
        self._registered = False
        self._synced = threading.Event()
        self._generation = 0
        self._delivered = 0  # the generation of the last change every subscriber has been told
        self._subscribers: list[Subscriber] = []
        self._synced_callbacks: list[Callable[[], None]] = []
        self._queue: collections.deque[Change | Callable[[], None]] = collections.deque()
        self._deliver = threading.RLock()

    @property
    def node_name(self) -> str:
        return self._node_name

    # --- sources ---------------------------------------------------------------------------
    def register_source(self, source: str, kinds: Iterable[Kind] = tuple(Kind)) -> None:
        """A source that will feed ``kinds``: the store is not synced until it has replaced each.
        Sources register when they are made, so that all are known before any lists; one that
        registers after the store is synced does not make it unsynced."""
        with self._lock:
            self._registered = True
            if not self._synced.is_set():
                self._pending_lists.update((source, k) for k in kinds)

    def apply(self, event: Event, source: str = "") -> bool:
        """Apply one event; whether the store changed (a repeated event changes nothing)."""
        kind, key = kind_of(event.object), key_of(event.object)
        with self._lock:
            if event.type is EventType.DELETED:
                change = self._delete(kind, key)
            else:
                change = self._put(kind, key, event.object, source)
        self._deliver_queued()
        return change

    def delete(self, kind: Kind, key: Key) -> bool:
        """Delete by key (for a source that cannot read the deleted object's last state)."""
        with self._lock:
            change = self._delete(kind, key)
        self._deliver_queued()
        return change

    def replace(self, kind: Kind, source: str, objects: Iterable[Object]) -> int:
        """Make ``source``'s objects of ``kind`` exactly ``objects`` (a full list): objects it set
        before that are not listed are deleted. Returns how many objects changed."""
        wanted: dict[Key, Object] = {}
        for obj in objects:
            if kind_of(obj) is not kind:
                raise ValueError(f"replace({kind.kind}) got a {kind_of(obj).kind}")
            wanted[key_of(obj)] = obj
        changed = 0
        with self._lock:
            owners = self._owner[kind]
            for key in [k for k, owner in owners.items() if owner == source and k not in wanted]:
                changed += self._delete(kind, key)
            for key, obj in wanted.items():
                changed += self._put(kind, key, obj, source)
            self._pending_lists.discard((source, kind))
            self._check_synced()
        self._deliver_queued()
        return changed

    # Both run under self._lock and only queue the notifications.
    def _put(self, kind: Kind, key: Key, obj: Object, source: str) -> bool:
        old = self._objects[kind].get(key)
        owner = self._owner[kind].get(key)
        if owner is not None and owner != source:
            log.warning("%s is set by both %s and %s; the latest wins", describe_key(kind, key),
                        owner, source)
        self._owner[kind][key] = source
        if old == obj:
            return False
        self._objects[kind][key] = obj
        if kind is Kind.ENDPOINT_SLICE:
            self._index_slice(old, obj)
        self._generation += 1
        self._queue.append(Change(kind, key, old, obj, self._generation))
        return True

    def _delete(self, kind: Kind, key: Key) -> bool:
        old = self._objects[kind].pop(key, None)
        self._owner[kind].pop(key, None)
        if old is None:
            return False
        if kind is Kind.ENDPOINT_SLICE:
            self._index_slice(old, None)
        self._generation += 1
        self._queue.append(Change(kind, key, old, None, self._generation))
        return True

    def _index_slice(self, old: Object | None, new: Object | None) -> None:
        if isinstance(old, EndpointSlice) and old.service:
            service = (old.namespace, old.service)
            keys = tuple(k for k in self._slices.get(service, ()) if k != old.key)
            if keys:
                self._slices[service] = keys
            else:
                self._slices.pop(service, None)
        if isinstance(new, EndpointSlice) and new.service:
            service = (new.namespace, new.service)
            self._slices[service] = tuple(sorted({*self._slices.get(service, ()), new.key}))

    def _check_synced(self) -> None:
        if self._registered and not self._pending_lists and not self._synced.is_set():
            self._synced.set()
            self._queue.extend(self._synced_callbacks)
            self._synced_callbacks = []

    def _deliver_queued(self) -> None:
        # One deliverer at a time drains the queue in order, so subscribers see changes in the
        # order they were made even when several source threads apply at once. A thread that
        # finds another one delivering leaves its changes to it instead of waiting (no thread
        # ever waits on a subscriber it does not run); the recheck after release catches a
        # change queued just as the deliverer finished.
        while self._queue:
            if not self._deliver.acquire(blocking=False):
                return
            try:
                self._drain()
            finally:
                self._deliver.release()

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    return
                item = self._queue.popleft()
                subscribers = list(self._subscribers)
            if isinstance(item, Change):
                for callback in subscribers:
                    self._call(callback, item)
                self._delivered = item.generation
            else:
                self._call(item, None)

    @staticmethod
    def _call(callback: Callable[..., None], change: Change | None) -> None:
        try:
            callback() if change is None else callback(change)
        except Exception:
            # A subscriber's bug must not stop a source thread or starve the other subscribers.
            log.exception("store subscriber %r failed", callback)

    # --- subscribers -----------------------------------------------------------------------
    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(change)`` after every change from now on; returns an unsubscribe."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)
        return unsubscribe

    def on_synced(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once, when the store becomes synced (now, if it already is)."""
        with self._lock:
            if self._synced.is_set():
                self._queue.append(callback)
            else:
                self._synced_callbacks.append(callback)
        self._deliver_queued()

    # --- readers ---------------------------------------------------------------------------
    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout: float | None = None) -> bool:
        return self._synced.wait(timeout)

    @property
    def generation(self) -> int:
        """Counts changes; equal generations mean equal contents."""
        with self._lock:
            return self._generation

    @property
    def delivered_generation(self) -> int:
        """Every change up to this generation has been told to every subscriber."""
        return self._delivered

    def pending_lists(self) -> frozenset[tuple[str, Kind]]:
        """(source, kind) pairs whose first full list has not completed yet."""
        with self._lock:
            return frozenset(self._pending_lists)

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                self._copy(Kind.NAMESPACE), self._copy(Kind.POD), self._copy(Kind.NETWORK_POLICY),
                self._synced.is_set(), self._generation,
                services=self._copy(Kind.SERVICE), endpoint_slices=self._copy(Kind.ENDPOINT_SLICE),
                nodes=self._copy(Kind.NODE),
                slice_keys=MappingProxyType(dict(self._slices)))

    def _copy(self, kind: Kind) -> Mapping[Any, Any]:
        # Under self._lock: the values are frozen, so a shallow copy is an immutable view.
        return MappingProxyType(dict(self._objects[kind]))

    def _view(self, kind: Kind) -> Mapping[Any, Any]:
        with self._lock:
            return self._copy(kind)

    def namespaces(self) -> Mapping[str, Namespace]:
        return self._view(Kind.NAMESPACE)

    def pods(self) -> Mapping[tuple[str, str], Pod]:
        return self._view(Kind.POD)

    def policies(self) -> Mapping[tuple[str, str], NetworkPolicy]:
        return self._view(Kind.NETWORK_POLICY)

    def services(self) -> Mapping[tuple[str, str], Service]:
        return self._view(Kind.SERVICE)

    def endpoint_slices(self) -> Mapping[tuple[str, str], EndpointSlice]:
        return self._view(Kind.ENDPOINT_SLICE)

    def nodes(self) -> Mapping[str, Node]:
        return self._view(Kind.NODE)

    def slices_for(self, namespace: str, service: str) -> tuple[EndpointSlice, ...]:
        """The EndpointSlices labelled for one Service, in name order (from the index, not a scan)."""
        with self._lock:
            keys = self._slices.get((namespace, service), ())
            found = [self._objects[Kind.ENDPOINT_SLICE][k] for k in keys]
        return tuple(s for s in found if isinstance(s, EndpointSlice))

    def get(self, kind: Kind, key: Key) -> Object | None:
        with self._lock:
            return self._objects[kind].get(key)

    def namespace(self, name: str) -> Namespace | None:
        obj = self.get(Kind.NAMESPACE, name)
        return obj if isinstance(obj, Namespace) else None

    def pod(self, namespace: str, name: str) -> Pod | None:
        obj = self.get(Kind.POD, (namespace, name))
        return obj if isinstance(obj, Pod) else None

    def policy(self, namespace: str, name: str) -> NetworkPolicy | None:
        obj = self.get(Kind.NETWORK_POLICY, (namespace, name))
        return obj if isinstance(obj, NetworkPolicy) else None

    def service(self, namespace: str, name: str) -> Service | None:
        obj = self.get(Kind.SERVICE, (namespace, name))
        return obj if isinstance(obj, Service) else None

    def endpoint_slice(self, namespace: str, name: str) -> EndpointSlice | None:
        obj = self.get(Kind.ENDPOINT_SLICE, (namespace, name))
        return obj if isinstance(obj, EndpointSlice) else None

    def node(self, name: str) -> Node | None:
        obj = self.get(Kind.NODE, name)
        return obj if isinstance(obj, Node) else None

    def local_pods(self) -> tuple[Pod, ...]:
        """Pods scheduled to this node (spec.nodeName == node_name), in key order."""
        with self._lock:
            pods = [p for p in self._objects[Kind.POD].values()
                    if isinstance(p, Pod) and p.node_name == self._node_name]
        return tuple(sorted(pods, key=lambda p: p.key))

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {k.kind: len(v) for k, v in self._objects.items()}
