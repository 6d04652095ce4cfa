"""``podnet daemon``: the node daemon that serves the plugin shims (see podnet.daemon.server)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

HELP = """\
Serve CNI plugin calls from podnet's plugin shims over a unix socket that only root can use.

The shims (installed by 'podnet install') forward each call here; the plugin code runs warm in
this process instead of a fresh interpreter per call. When the daemon is not running the shims
run the plugin in-process, so stopping it never stops pod networking.

Logs are JSON lines on stderr (or --log-file). With --metrics-addr, Prometheus metrics are
served on http://ADDR/metrics. SIGTERM stops accepting, finishes the calls in flight and exits 0;
calls still running after --stop-timeout are abandoned and it exits 1.
"""


def register(sub: Any) -> None:
    from podnet.daemon.protocol import DEFAULT_SOCKET

    p = sub.add_parser("daemon", help="run the node daemon that serves the plugin shims", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--socket", default=DEFAULT_SOCKET, help=f"unix socket path (default {DEFAULT_SOCKET})")
    p.add_argument("--workers", type=count, default=default_workers(),
                   help=f"requests served at once (default {default_workers()}: twice the CPUs, 4 to 8)")
    p.add_argument("--metrics-addr", metavar="HOST:PORT",
                   help="serve Prometheus metrics here, e.g. 127.0.0.1:9617 (default: off)")
    p.add_argument("--log-file", help="append JSON log lines here instead of stderr")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    p.add_argument("--read-timeout", type=seconds, default=5.0,
                   help="seconds a client has to send its whole request (default 5)")
    p.add_argument("--queue-timeout", type=seconds, default=3.0,
                   help="seconds a received request may wait for a free worker; then it is refused and "
                        "the shim runs it in-process (default 3)")
    p.add_argument("--exchange-timeout", type=seconds, default=60.0,
                   help="seconds for a whole exchange: read, locks, work and answer (default 60)")
    p.add_argument("--readers", type=count, default=16,
                   help="threads receiving requests, apart from the workers (default 16)")
    p.add_argument("--max-waiting", type=count, default=256,
                   help="connections that have sent nothing yet kept at once; past it the one silent "
                        "longest is refused (default 256)")
    p.add_argument("--plugin-dir", action="append", metavar="DIR", dest="plugin_dirs",
                   help="a directory a delegated plugin (an ipam type podnet does not implement) may be "
                        "run from; repeat for more (default /opt/cni/bin and /usr/lib/cni). A call whose "
                        "CNI_PATH would find it elsewhere is refused and runs in the shim instead")
    p.add_argument("--delegate-timeout", type=seconds, default=60.0,
                   help="seconds a delegated plugin may run before it is killed with its process group "
                        "(default 60)")
    p.add_argument("--stop-timeout", type=seconds, default=10.0,
                   help="on SIGTERM, seconds calls in flight may run on before it exits (default 10)")
    p.add_argument("--profile", metavar="FILE",
                   help="profile every request (cProfile) and write the pstats to FILE at exit")
    p.set_defaults(func=run)


def default_workers() -> int:
    """Plugin work holds the GIL most of the time it is not waiting for the kernel: threads beyond
    a couple per CPU only add GIL hand-overs (measured with bench/bench_cni.py bursts)."""
    return min(8, max(4, 2 * (os.cpu_count() or 1)))


def seconds(text: str) -> float:
    """A duration option: a finite number of seconds above zero and at most a day."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 86400:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds above 0 and at most 86400")
    return value


def count(text: str) -> int:
    """A count option: a whole number from 1 to 4096."""
    if not text.strip().isdigit() or not 1 <= int(text) <= 4096:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number from 1 to 4096")
    return int(text)


def parse_addr(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--metrics-addr {text!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def run(ns: argparse.Namespace) -> int:
    from podnet.daemon.logs import JsonLog, route_stdlib_logging
    from podnet.daemon.metrics import Metrics, NoMetrics, PrometheusMetrics
    from podnet.daemon.server import Config, Daemon, notify_systemd

    stream = open(ns.log_file, "a", encoding="utf-8") if ns.log_file else sys.stderr  # noqa: SIM115
    log = JsonLog(stream, ns.log_level)
    route_stdlib_logging(log)
    metrics: Metrics = NoMetrics()
    try:
        if ns.metrics_addr:
            host, port = parse_addr(ns.metrics_addr)
            prom = PrometheusMetrics()
            prom.serve(host, port)
            log.info("metrics", addr=f"{host}:{port}")
            metrics = prom
        config = Config(socket_path=ns.socket, workers=ns.workers, read_timeout=ns.read_timeout,
                        queue_timeout=ns.queue_timeout, exchange_timeout=ns.exchange_timeout,
                        readers=ns.readers, max_waiting=ns.max_waiting, profile_path=ns.profile,
                        delegate_timeout=ns.delegate_timeout, stop_timeout=ns.stop_timeout)
        if ns.plugin_dirs:
            config.plugin_dirs = tuple(ns.plugin_dirs)
        daemon = Daemon(config, log=log, metrics=metrics)
        daemon.install_signal_handlers()
        daemon.start()
    except (OSError, RuntimeError, ValueError) as exc:
        log.error("cannot-start", msg=str(exc))
        return 1
    notify_systemd("READY=1")
    finished = daemon.serve_forever()
    notify_systemd("STOPPING=1")
    if not finished:
        # Calls still running past --stop-timeout sit in threads nothing can stop, and the
        # interpreter would wait for them at exit: leave now. Their shims see the connection
        # break and redo the call in-process; DEL and GC clean up anything half-made. Delegated
        # plugins still running go with it (each runs in its own process group).
        from podnet.runtime.invoke import kill_running

        log.error("exiting", delegates_killed=kill_running())
        sys.stderr.flush()
        stream.flush()
        os._exit(1)
    return 0
