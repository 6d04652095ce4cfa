"""podnet.daemon: the node daemon and the plugin shims that talk to it.

* :mod:`~podnet.daemon.shim` — what ``podnet install`` puts into the CNI bin dir. Starts with
  ``python -IS`` and imports only builtins and :mod:`~podnet.daemon.protocol`; forwards env + stdin
  as one binary frame to the daemon and prints its answer; runs the plugin in-process when the
  daemon is down, refuses, or died mid-request (ADD: DEL first, then ADD; see the module).
* :mod:`~podnet.daemon.protocol` — the frames (no imports, no JSON on the hot path).
* :mod:`~podnet.daemon.server` — ``podnet daemon``: root-only socket (0600 from creation, then
  SO_PEERCRED; callers in another network namespace are refused), a thread pool running
  :func:`podnet.cni.skel.run` with the request's env and stdin, graceful SIGTERM.
* :mod:`~podnet.daemon.locks` — per-network readers-writer locks (ADD/DEL/CHECK shared plus their
  attachment exclusive; GC exclusive).
* :mod:`~podnet.daemon.registry` — ``podnet-NAME`` is ``podnet.plugins.NAME.PLUGIN``.
* :mod:`~podnet.daemon.logs`, :mod:`~podnet.daemon.metrics` — JSON-lines logs; Prometheus metrics
  when asked for.
"""
