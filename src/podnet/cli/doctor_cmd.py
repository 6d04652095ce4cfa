"""``podnet doctor``: find podnet's debris and risks on a live node, repair what is safe with --fix."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

HELP = """\
Examine this node (or the namespace --netns) for what podnet's four founding failures leave
behind, and with --fix repair what is safe to repair:

  result cache   empty or torn entries, entries and pending markers of pods that are gone
  IPAM           host-local reservations of pods that are gone; live pods without one
  MACs           podnet host veths with a kernel-chosen (random) MAC; routed pods whose pinned
                 gateway entry no longer matches their host veth's MAC
  nftables       podnet-bridge elements owned by pods that are gone
  udev           the MACAddressPolicy veths get (a risk report)
  netlink dumps  the daemon's retry and give-up counters (with --metrics-url)

Only networks of the conf dir that use podnet's plugins are judged, and only what podnet owns.
--fix never touches a live pod: what belongs to one is reported with the command to run.
Files changed within --grace seconds are left alone (an ADD or DEL may be under way).

Exit status: 0 no problems (left), 1 problems, 2 doctor could not examine the node.
"""


def register(sub: Any) -> None:
    from podnet.cli.cni_cmd import DEFAULT_CONF_DIR
    from podnet.doctor.context import DEFAULT_GRACE_S
    from podnet.runtime.cache import DEFAULT_CACHE_DIR

    p = sub.add_parser("doctor", help="find (and with --fix repair) podnet debris and risks on this node",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--conf-dir", default=DEFAULT_CONF_DIR,
                   help=f"CNI config directory (default {DEFAULT_CONF_DIR})")
    p.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR,
                   help=f"CNI cache directory (default {DEFAULT_CACHE_DIR})")
    p.add_argument("--netns", help="examine this named network namespace (or path) instead of the caller's")
    p.add_argument("--fix", action="store_true", help="repair what is safe to repair")
    p.add_argument("--json", action="store_true", help="print a JSON document instead of text")
    p.add_argument("--metrics-url", help="the daemon's metrics endpoint, e.g. http://127.0.0.1:9617/metrics")
    p.add_argument("--grace", type=float, default=DEFAULT_GRACE_S, metavar="SECONDS",
                   help=f"leave files younger than this alone (default {DEFAULT_GRACE_S:g})")
    p.set_defaults(func=run)


def _fail(ns: argparse.Namespace, message: str) -> int:
    if ns.json:
        print(json.dumps({"clean": False, "error": message}))
    print(f"podnet doctor: {message}", file=sys.stderr)
    return 2


def run(ns: argparse.Namespace) -> int:
    from podnet.cni.errors import CNIError
    from podnet.doctor import report
    from podnet.doctor.examine import Options, examine
    from podnet.doctor.scope import ScopeError

    if ns.grace < 0:
        return _fail(ns, f"--grace {ns.grace:g}: must be 0 or more seconds")
    opts = Options(conf_dir=ns.conf_dir, cache_dir=ns.cache_dir, netns=ns.netns, fix=ns.fix,
                   metrics_url=ns.metrics_url, grace=ns.grace)
    try:
        result = examine(opts)
    except (ScopeError, CNIError, OSError) as exc:
        return _fail(ns, f"cannot examine the node: {exc}")
    except Exception as exc:  # a bug in doctor: one line, never a traceback
        if os.environ.get("PODNET_DEBUG"):
            raise
        return _fail(ns, f"internal error: {type(exc).__name__}: {exc}")
    sys.stdout.write(report.as_json(result) if ns.json else report.text(result, ns.fix))
    return result.exit_code
