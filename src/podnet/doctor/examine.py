"""One doctor run: examine the node, repair what is safe when asked, and say what is left."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from podnet.cni.errors import CNIError
from podnet.doctor import cache_entries, dump_counters, macs, nft_elements, reservations, udev
from podnet.doctor.context import DEFAULT_GRACE_S, Context
from podnet.doctor.findings import Changed, Finding
from podnet.doctor.scope import load_scope
from podnet.kernel.errors import KernelError
from podnet.kernel.netlink import Netlink


@dataclass(frozen=True)
class Options:
    conf_dir: str
    cache_dir: str
    netns: str | None = None
    fix: bool = False
    metrics_url: str | None = None
    grace: float = DEFAULT_GRACE_S
    link_dirs: Sequence[str] = udev.LINK_DIRS


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    unjudged_recent: int = 0  # files left alone because they changed within the grace period

    @property
    def open_problems(self) -> list[Finding]:
        return [f for f in self.findings if f.open]

    @property
    def exit_code(self) -> int:
        return 1 if self.open_problems else 0


def _node_findings(ctx: Context) -> list[Finding]:
    # Order: what a pod's traffic depends on first, then debris.
    return macs.check(ctx) + reservations.check(ctx) + nft_elements.check(ctx) + cache_entries.check(ctx)


def examine(opts: Options) -> Report:
    """Everything doctor finds; raises ScopeError / KernelError when it cannot look at all."""
    scope = load_scope(opts.conf_dir)
    report = Report(networks=[n.name for n in scope.networks])
    with Netlink(opts.netns) as nl:
        ctx = Context(nl, opts.netns, scope, Path(opts.cache_dir), grace=opts.grace)
        report.findings += _node_findings(ctx)
        if opts.fix:
            repair(report.findings)
        report.unjudged_recent = len(set(ctx.too_fresh))
    report.findings += udev.check(opts.link_dirs)
    report.findings += dump_counters.check(opts.metrics_url, opts.netns)
    report.findings += [Finding("config", "note", scope.conf_dir, text, "none") for text in scope.notes]
    return report


def repair(findings: list[Finding]) -> None:
    """Run each fixable finding's repair; one that fails does not stop the others."""
    for finding in findings:
        if finding.repair is None or finding.status != "found":
            continue
        try:
            finding.repair()
            finding.status = "fixed"
        except Changed as exc:
            finding.status, finding.error = "changed", str(exc)
        except (OSError, CNIError, KernelError) as exc:
            finding.status, finding.error = "fix-failed", str(exc)
