"""Netlink dump retry and give-up counters of the node daemon (:data:`podnet.kernel.dump.STATS`).

The counters live in the daemon's process; the daemon exports them on its Prometheus endpoint
(``podnet daemon --metrics-addr``) as ``podnet_netlink_dump_*``. Doctor reads them from
``--metrics-url``, connecting from inside the inspected namespace (where the daemon listens);
without the option it says the counters are not available. A dump that gave up failed the
caller's operation (every attempt saw the kernel's tables change): something churns links or
routes on this node.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request

from podnet.doctor.findings import Finding
from podnet.kernel.netns import run_in_netns

PREFIX = "podnet_netlink_dump_"
KEYS = ("dumps", "attempts", "interrupted", "retries", "gave_up", "inconsistent_returned")
_LINE = re.compile(rf"^{PREFIX}([a-z_]+?)(?:_total)?(?:\{{[^}}]*\}})?\s+([0-9.eE+-]+)\s*$")
MAX_BYTES = 4 << 20


def parse(text: str) -> dict[str, int]:
    """The dump counters from Prometheus text exposition (``_total`` suffix or not)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m and m.group(1) in KEYS:
            out[m.group(1)] = int(float(m.group(2)))
    return out


def _fetch(url: str, timeout: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        data: bytes = resp.read(MAX_BYTES)
    return data.decode(errors="replace")


def read(url: str, netns: str | None, timeout: float = 5.0) -> dict[str, int]:
    """The counters at ``url``; OSError / ValueError when the endpoint cannot be read."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--metrics-url {url!r}: expected http://HOST:PORT/metrics")
    text = run_in_netns(netns, _fetch, url, timeout) if netns is not None else _fetch(url, timeout)
    counters = parse(text)
    if not counters:
        raise ValueError(f"{url} serves no {PREFIX}* metrics (is it podnet's daemon?)")
    return counters


def check(url: str | None, netns: str | None) -> list[Finding]:
    if not url:
        return [Finding("dump-counters", "note", "daemon", "netlink dump retry and give-up counters are not "
                        "available: pass --metrics-url of the daemon (podnet daemon --metrics-addr)",
                        "none needed")]
    try:
        counters = read(url, netns)
    except (OSError, ValueError, urllib.error.URLError) as exc:
        return [Finding("dump-counters", "note", url, f"netlink dump counters not available: {exc}",
                        "check that the daemon runs with --metrics-addr and the URL")]
    summary = ", ".join(f"{k} {counters.get(k, 0)}" for k in KEYS)
    out = [Finding("dump-counters", "note", url, f"netlink dumps since the daemon started: {summary}",
                   "none needed", data=counters)]
    gave_up = counters.get("gave_up", 0)
    if gave_up:
        out.append(Finding(
            "dump-gave-up", "risk", url,
            f"{gave_up} netlink dump(s) gave up: every attempt was interrupted by changing kernel "
            "tables, and the operation that needed it failed",
            "not fixable by doctor: find what churns links, addresses or routes on the node"))
    return out
