"""The Kubernetes API source: one informer thread per watched kind, into the shared Store.

The connection (server, TLS, credentials) comes from lightkube's configuration loading: a
kubeconfig file (``--kubeconfig PATH``) or the in-cluster service account of the DaemonSet pod.
The list/watch protocol itself is podnet's informer, because the agent needs what a generic
client's watch hides: bookmarks, 410 Gone told apart from other errors, and a re-list whose
deletes are synthesized.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

import httpx2 as httpx
from lightkube.config import client_adapter
from lightkube.config.kubeconfig import KubeConfig, SingleConfig
from lightkube.core.exceptions import ConfigError as LightkubeConfigError

from podnet.agent.objects import Kind
from podnet.agent.sources.informer import Backoff, Informer
from podnet.agent.store import Store

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class KubeConfigError(Exception):
    """No usable connection configuration; the message says what was tried."""


def load_config(kubeconfig: str | os.PathLike[str] | None = None, *, context: str | None = None,
                service_account_dir: str = SERVICE_ACCOUNT_DIR) -> SingleConfig:
    """The API server connection: from ``kubeconfig`` when given, else in-cluster."""
    try:
        if kubeconfig is not None:
            if not os.path.isfile(kubeconfig):
                raise KubeConfigError(f"kubeconfig {kubeconfig}: no such file")
            config = KubeConfig.from_file(kubeconfig).get(context_name=context)
        elif "KUBERNETES_SERVICE_HOST" in os.environ and "KUBERNETES_SERVICE_PORT" in os.environ:
            config = KubeConfig.from_service_account(service_account_dir).get()
        else:
            raise KubeConfigError("no --kubeconfig given and not running in a cluster "
                                  "(KUBERNETES_SERVICE_HOST is not set)")
    except KubeConfigError:
        raise
    except Exception as exc:  # lightkube's ConfigError, YAML syntax, missing keys: all mean "unusable"
        where = f"kubeconfig {kubeconfig}" if kubeconfig is not None else "in-cluster config"
        raise KubeConfigError(f"{where}: {exc}") from None
    if config is None:
        raise KubeConfigError(f"kubeconfig {kubeconfig}: no current context")
    return config


def make_client(config: SingleConfig, *, timeout: float = 10.0) -> httpx.Client:
    try:
        return client_adapter.Client(config, client_adapter.ConnectionParams(timeout=httpx.Timeout(timeout)))
    except (LightkubeConfigError, OSError, ValueError, AssertionError) as exc:
        raise KubeConfigError(f"cannot connect with this configuration: {exc}") from None


class KubeSource:
    """Lists and watches ``kinds`` from the API server named by ``config``."""

    def __init__(self, store: Store, config: SingleConfig, *, name: str = "kube",
                 kinds: Iterable[Kind] = tuple(Kind), page_size: int = 500, watch_timeout: int = 300,
                 backoff: Backoff | None = None, timeout: float = 10.0) -> None:
        self.store, self.name = store, name
        self.client = make_client(config, timeout=timeout)
        self.informers = {
            kind: Informer(self.client, kind, store, name, page_size=page_size, watch_timeout=watch_timeout,
                           backoff=Backoff(**_backoff_args(backoff)))
            for kind in kinds}
        # Registered when made, not when started: the store cannot become synced on another
        # source's list before this one has listed.
        store.register_source(name, tuple(self.informers))

    def start(self) -> None:
        for informer in self.informers.values():
            informer.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every informer (their threads joined, their connections closed)."""
        for informer in self.informers.values():
            informer.request_stop()  # all at once, then join each
        for informer in self.informers.values():
            informer.stop(timeout)

    def close(self) -> None:
        self.stop()
        self.client.close()

    def status(self) -> dict[str, dict[str, Any]]:
        """Per kind: the resourceVersion it is at, whether it has listed, and its counters."""
        out: dict[str, dict[str, Any]] = {}
        pending = self.store.pending_lists()
        for kind, informer in self.informers.items():
            stats = informer.stats
            out[kind.kind] = {
                "resource_version": informer.resource_version,
                "listed": (self.name, kind) not in pending,
                "lists": stats.lists, "relists_gone": stats.relists_gone, "watches": stats.watches,
                "events": stats.events, "bookmarks": stats.bookmarks, "errors": stats.errors,
                "last_error": stats.last_error}
        return out


def _backoff_args(template: Backoff | None) -> dict[str, Any]:
    # Each informer gets its own Backoff (its own step), with the template's parameters.
    if template is None:
        return {}
    return {"initial": template.initial, "cap": template.cap, "factor": template.factor,
            "jitter": template.jitter, "rand": template.rand}
