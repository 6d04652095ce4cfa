"""Doctor's logic without a node: the udev policy reader, the metrics parser, the grace period,
the exit status, and how bad options are refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from podnet.doctor import dump_counters, udev
from podnet.doctor.examine import Report
from podnet.doctor.findings import Finding


def _link(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def test_debian_default_link_policy_is_a_risk(tmp_path: Path) -> None:
    usr = tmp_path / "usr"
    _link(usr, "99-default.link", "[Match]\nOriginalName=*\n\n[Link]\nNamePolicy=keep kernel\n"
          "MACAddressPolicy=persistent\n")
    (finding,) = udev.check([str(tmp_path / "etc"), str(usr)])
    assert finding.severity == "risk" and "MACAddressPolicy=persistent" in finding.what
    assert finding.where == str(usr / "99-default.link")


def test_link_policy_override_mask_and_match(tmp_path: Path) -> None:
    etc, usr = tmp_path / "etc", tmp_path / "usr"
    _link(usr, "99-default.link", "[Match]\nOriginalName=*\n[Link]\nMACAddressPolicy=persistent\n")
    # An earlier file for veths only, with the policy off, wins for veths.
    _link(etc, "10-veth.link", "[Match]\nKind=veth\n[Link]\nMACAddressPolicy=none\n")
    # A file that does not match veths is skipped.
    _link(etc, "05-eth.link",
          "[Match]\nKind=!veth bridge\nOriginalName=eth*\n[Link]\nMACAddressPolicy=random\n")
    (finding,) = udev.check([str(etc), str(usr)])
    assert finding.severity == "note" and finding.where == str(etc / "10-veth.link")
    # Masking the /usr file with an empty one of the same name in /etc leaves no policy at all.
    (etc / "10-veth.link").unlink()
    _link(etc, "99-default.link", "")
    (finding,) = udev.check([str(etc), str(usr)])
    assert finding.severity == "note" and "no udev .link file applies" in finding.what


def test_link_policy_with_undecidable_match_is_reported_as_possible(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    _link(etc, "20-pci.link", "[Match]\nPath=pci-0000:00:1f.6\n[Link]\nMACAddress=02:00:00:00:00:01\n")
    findings = udev.check([str(etc)])
    assert [f.severity for f in findings] == ["risk", "note"]
    assert "may apply" in findings[0].what and "MACAddress=02:00:00:00:00:01" in findings[0].what


def test_metrics_parser_reads_prometheus_counters() -> None:
    text = ("# HELP podnet_netlink_dump_retries_total x\n# TYPE podnet_netlink_dump_retries_total counter\n"
            "podnet_netlink_dump_retries_total 7.0\npodnet_netlink_dump_gave_up_total 2.0\n"
            "podnet_netlink_dump_retries_created 1.7e9\npodnet_daemon_requests_total{a=\"b\"} 3.0\n")
    assert dump_counters.parse(text) == {"retries": 7, "gave_up": 2}


def test_counters_not_available_without_url() -> None:
    (note,) = dump_counters.check(None, None)
    assert note.severity == "note" and "not available" in note.what


def test_exit_status_counts_open_problems_only() -> None:
    report = Report(findings=[Finding("udev-policy", "risk", "x", "y", "z"),
                              Finding("dump-counters", "note", "x", "y", "z")])
    assert report.exit_code == 0
    problem = Finding("cache-torn", "problem", "x", "y", "z")
    report.findings.append(problem)
    assert report.exit_code == 1
    problem.status = "fixed"
    assert report.exit_code == 0
    problem.status = "changed"  # left alone because it changed under the repair: look again
    assert report.exit_code == 1


@pytest.mark.parametrize(("args", "message"), [
    (["--grace", "-1"], "--grace"),
    (["--conf-dir", "/nonexistent/podnet-doctor"], "does not exist"),
])
def test_doctor_cannot_run_exits_2(tmp_path: Path, args: list[str], message: str) -> None:
    argv = [sys.executable, "-m", "podnet.cli.main", "doctor", "--cache-dir", str(tmp_path), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "PODNET_DEBUG": ""})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
