"""A local list/watch server that speaks the Kubernetes API protocol the agent's informer uses.

No kube-apiserver can run here, so this stands in for one, faithfully where the informer cares:
- HTTP/1.1 on 127.0.0.1 (ephemeral port); JSON bodies; Status objects for errors;
- one global resourceVersion counter (etcd's revision): every change bumps it and stamps the
  object's metadata.resourceVersion; a history of every change is kept;
- list: the current state and its resourceVersion; ``limit`` pages through one snapshot with
  ``continue`` tokens (a token whose snapshot was compacted away answers 410 Expired);
- ``watch=1``: a chunked stream of JSON lines (ADDED/MODIFIED/DELETED/BOOKMARK/ERROR) starting
  after the requested resourceVersion, replaying history the watcher missed; a resourceVersion
  older than the compaction floor answers 410 Gone, as an ERROR event in the stream (what the
  real server does) or as the HTTP status (``gone_as_status``); ``timeoutSeconds`` ends it;
- test controls: mutate objects, compact history, send bookmarks, drop every watch connection
  (optionally in the middle of a chunk), inject an ERROR event, fail the next requests with 500.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import select
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

# Collection path -> (kind, list kind)
COLLECTIONS = {
    "/api/v1/namespaces": ("Namespace", "NamespaceList"),
    "/api/v1/pods": ("Pod", "PodList"),
    "/apis/networking.k8s.io/v1/networkpolicies": ("NetworkPolicy", "NetworkPolicyList"),
    "/api/v1/services": ("Service", "ServiceList"),
    "/apis/discovery.k8s.io/v1/endpointslices": ("EndpointSlice", "EndpointSliceList"),
    "/api/v1/nodes": ("Node", "NodeList"),
}
API_VERSIONS = {"Namespace": "v1", "Pod": "v1", "NetworkPolicy": "networking.k8s.io/v1", "Service": "v1",
                "EndpointSlice": "discovery.k8s.io/v1", "Node": "v1"}

Key = tuple[str, str]  # (namespace or "", name)


@dataclass
class Change:
    rv: int
    type: str  # ADDED / MODIFIED / DELETED
    kind: str
    key: Key
    obj: dict[str, Any]


class KubeServer:
    def __init__(self, tls_dir: Path | None = None, host: str = "127.0.0.1") -> None:
        """Plain HTTP, or HTTPS with a fresh self-signed certificate for 127.0.0.1 made in
        ``tls_dir`` (``ca_file`` is then the certificate to trust). ``host``: the address to listen
        on (another than loopback for clients in other network namespaces)."""
        self.host = host
        self.cond = threading.Condition()
        self.rv = 100
        self.floor = 0  # watches and continue tokens from an rv below this get 410 (history ends here)
        self.history: list[Change] = []
        self.objects: dict[str, dict[Key, dict[str, Any]]] = {k: {} for k, _ in COLLECTIONS.values()}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.authorizations: list[str] = []
        self.gone_as_status = False
        self.fail_next = 0  # answer this many requests with 500
        self.expire_next_continue = 0  # answer this many continued list requests with 410
        self.epoch = 0  # bumped to drop every watch connection
        self.drop_mid_chunk = False
        self.inject: dict[str, Any] | None = None  # an ERROR status to send on open watches
        self.inject_epoch = 0
        self.active_watches = 0
        self._sockets: set[socket.socket] = set()
        handler = type("Handler", (_Handler,), {"server_ref": self})
        self.httpd = ThreadingHTTPServer((host, 0), handler)
        self.httpd.daemon_threads = True
        self.ca_file: Path | None = None
        if tls_dir is not None:
            self.ca_file = self._tls(tls_dir)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def _tls(self, directory: Path) -> Path:
        cert, key = directory / "server.crt", directory / "server.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        return cert

    @property
    def url(self) -> str:
        scheme = "https" if self.ca_file is not None else "http"
        return f"{scheme}://{self.host}:{self.httpd.server_address[1]}"

    def kubeconfig(self, path: Path, *, ca_file: Path | None = None) -> Path:
        """A kubeconfig pointing lightkube at this server (trusting ``ca_file``, by default the
        server's own certificate)."""
        cluster: dict[str, Any] = {"server": self.url}
        ca = ca_file or self.ca_file
        if ca is not None:
            cluster["certificate-authority-data"] = base64.b64encode(ca.read_bytes()).decode()
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": cluster}],
            "users": [{"name": "test", "user": {"token": "test-token"}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}]}))
        return path

    def close(self) -> None:
        with self.cond:
            self.epoch += 1
            self.cond.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()
        for sock in list(self._sockets):
            _shutdown(sock)

    # --- mutations (from the test) ---------------------------------------------------------
    def put(self, obj: dict[str, Any]) -> int:
        """Create or update an object (by its kind, namespace and name); returns its new rv."""
        obj = copy.deepcopy(obj)
        kind, meta = obj["kind"], obj.setdefault("metadata", {})
        key = (meta.get("namespace", ""), meta["name"])
        with self.cond:
            self.rv += 1
            meta["resourceVersion"] = str(self.rv)
            kind_type = "MODIFIED" if key in self.objects[kind] else "ADDED"
            self.objects[kind][key] = obj
            self.history.append(Change(self.rv, kind_type, kind, key, copy.deepcopy(obj)))
            self.cond.notify_all()
            return self.rv

    def delete(self, kind: str, name: str, namespace: str = "") -> int:
        with self.cond:
            obj = self.objects[kind].pop((namespace, name))
            self.rv += 1
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self.history.append(Change(self.rv, "DELETED", kind, (namespace, name), obj))
            self.cond.notify_all()
            return self.rv

    def compact(self) -> None:
        """Forget history: any rv before now is too old to watch from."""
        with self.cond:
            self.floor = self.rv
            self.history = [c for c in self.history if c.rv > self.floor]

    def bump(self) -> int:
        """An unrelated change elsewhere in the cluster (another kind): the rv moves on."""
        with self.cond:
            self.rv += 1
            self.cond.notify_all()
            return self.rv

    def bookmark(self) -> None:
        with self.cond:
            self.bookmark_rv = self.rv
            self.cond.notify_all()

    bookmark_rv = 0

    def drop_watches(self, *, mid_chunk: bool = False) -> None:
        with self.cond:
            self.drop_mid_chunk = mid_chunk
            self.epoch += 1
            self.cond.notify_all()

    def inject_error(self, code: int = 410, message: str = "too old resource version") -> None:
        with self.cond:
            self.inject = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
                           "reason": "Expired" if code == 410 else "InternalError", "message": message}
            self.inject_epoch += 1
            self.cond.notify_all()

    def wait_watches(self, count: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.active_watches < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.active_watches} watches open, wanted {count}")
                self.cond.wait(left)

    def watch_requests(self, path: str) -> list[dict[str, str]]:
        return [q for p, q in self.requests if p == path and q.get("watch") in ("1", "true")]

    # --- state at a resourceVersion --------------------------------------------------------
    def state_at(self, kind: str, rv: int) -> dict[Key, dict[str, Any]]:
        """The kind's objects as they were at ``rv`` (rebuilt from current state and history)."""
        state = {k: copy.deepcopy(v) for k, v in self.objects[kind].items()}
        for change in reversed(self.history):
            if change.rv <= rv:
                break
            if change.kind != kind:
                continue
            before = self._before(change)
            if before is None:
                state.pop(change.key, None)
            else:
                state[change.key] = before
        return state

    def _before(self, change: Change) -> dict[str, Any] | None:
        for older in reversed(self.history):
            if older.rv < change.rv and older.kind == change.kind and older.key == change.key:
                return None if older.type == "DELETED" else copy.deepcopy(older.obj)
        return None


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_ref: KubeServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        srv = self.server_ref
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        with srv.cond:
            srv.requests.append((url.path, query))
            srv.authorizations.append(self.headers.get("Authorization", ""))
            failing = srv.fail_next > 0
            srv.fail_next -= 1 if failing else 0
        if failing:
            return self._json(500, _status(500, "InternalError", "injected failure"))
        if url.path not in COLLECTIONS:
            return self._json(404, _status(404, "NotFound", f"no collection {url.path}"))
        kind, list_kind = COLLECTIONS[url.path]
        if query.get("watch") in ("1", "true"):
            return self._watch(kind, query)
        return self._list(kind, list_kind, query)

    def _json(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    # --- list ------------------------------------------------------------------------------
    def _list(self, kind: str, list_kind: str, query: dict[str, str]) -> None:
        srv = self.server_ref
        limit = int(query.get("limit", "0") or 0)
        with srv.cond:
            if "continue" in query:
                token = json.loads(base64.b64decode(query["continue"]))
                snapshot_rv, start = int(token["rv"]), int(token["start"])
                expire = srv.expire_next_continue > 0
                srv.expire_next_continue -= 1 if expire else 0
                if snapshot_rv < srv.floor or expire:
                    return self._json(410, _status(410, "Expired", "The provided continue parameter "
                                                   "is too old"))
            else:
                snapshot_rv, start = srv.rv, 0
            state = srv.state_at(kind, snapshot_rv)
        items = [state[k] for k in sorted(state)]
        page = items[start:start + limit] if limit else items[start:]
        meta: dict[str, Any] = {"resourceVersion": str(snapshot_rv)}
        if limit and start + limit < len(items):
            meta["continue"] = base64.b64encode(json.dumps(
                {"rv": snapshot_rv, "start": start + limit}).encode()).decode()
        # List items carry no kind/apiVersion, as from the real server.
        for item in page:
            item.pop("kind", None)
            item.pop("apiVersion", None)
        self._json(200, {"kind": list_kind, "apiVersion": API_VERSIONS[kind], "metadata": meta,
                         "items": page})

    # --- watch -----------------------------------------------------------------------------
    def _watch(self, kind: str, query: dict[str, str]) -> None:
        srv = self.server_ref
        since = int(query.get("resourceVersion", "0") or 0)
        bookmarks = query.get("allowWatchBookmarks") == "true"
        deadline = time.monotonic() + float(query.get("timeoutSeconds", "3600"))
        too_old = since < srv.floor
        if too_old and srv.gone_as_status:
            return self._json(410, _status(410, "Expired", f"too old resource version: {since}"))
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        # Said, not only done: a client that is not told would pool the connection the server
        # closes after the stream, and its next request could race that close.
        self.send_header("Connection", "close")
        self.end_headers()
        srv._sockets.add(self.connection)
        with srv.cond:
            srv.active_watches += 1
            srv.cond.notify_all()
        try:
            if too_old:
                self._chunk({"type": "ERROR", "object": _status(
                    410, "Expired", f"too old resource version: {since} ({srv.floor})")})
            else:
                self._stream(kind, since, bookmarks, deadline)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass
        finally:
            srv._sockets.discard(self.connection)
            with srv.cond:
                srv.active_watches -= 1
                srv.cond.notify_all()

    def _stream(self, kind: str, since: int, bookmarks: bool, deadline: float) -> None:
        srv = self.server_ref
        sent = since
        with srv.cond:
            epoch, inject_epoch, bookmark_rv = srv.epoch, srv.inject_epoch, srv.bookmark_rv
        while True:
            with srv.cond:
                events = [c for c in srv.history if c.rv > sent and c.kind == kind]
                if not events and srv.epoch == epoch and srv.inject_epoch == inject_epoch and (
                        srv.bookmark_rv == bookmark_rv):
                    left = deadline - time.monotonic()
                    if left <= 0 or self._client_gone():
                        return
                    srv.cond.wait(min(left, 0.05))
                    continue
                dropped, injected = srv.epoch != epoch, srv.inject_epoch != inject_epoch
                mid_chunk, error = srv.drop_mid_chunk, srv.inject
                new_bookmark = srv.bookmark_rv if srv.bookmark_rv != bookmark_rv else None
                bookmark_rv, inject_epoch = srv.bookmark_rv, srv.inject_epoch
            if dropped:
                return self._drop(mid_chunk)
            for change in events:
                self._chunk({"type": change.type, "object": change.obj})
                sent = change.rv
            if injected and error is not None:
                self._chunk({"type": "ERROR", "object": error})
                return
            if new_bookmark is not None and bookmarks:
                sent = max(sent, new_bookmark)
                self._chunk({"type": "BOOKMARK", "object": {
                    "kind": kind, "apiVersion": API_VERSIONS[kind],
                    "metadata": {"resourceVersion": str(sent)}}})

    def _client_gone(self) -> bool:
        # The client closed its end (a watch the informer stopped): readable with nothing to read.
        # Peeked on a plain socket sharing the descriptor: a TLS socket refuses recv flags.
        ready, _, _ = select.select([self.connection], [], [], 0)
        if not ready:
            return False
        raw = socket.socket(fileno=os.dup(self.connection.fileno()))
        try:
            return raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            raw.close()

    def _chunk(self, event: dict[str, Any]) -> None:
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _drop(self, mid_chunk: bool) -> None:
        if mid_chunk:
            # Half of an event that is never completed: the client must not apply any of it.
            data = json.dumps({"type": "ADDED", "object": {"metadata": {"name": "half"}}}).encode()
            self.wfile.write(b"%x\r\n%s" % (len(data) + 1, data[: len(data) // 2]))
            self.wfile.flush()
        _shutdown(self.connection)
        raise OSError("dropped by the test")

