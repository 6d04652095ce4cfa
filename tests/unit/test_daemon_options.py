"""``podnet daemon`` options: every limit can be set, and a bad value is refused by name before
anything starts (exit 2, no traceback), never taken as a silent default."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest

from podnet.cli import daemon_cmd

PODNET = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "podnet"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    daemon_cmd.register(parser.add_subparsers())
    return parser.parse_args(["daemon", *argv])


def test_every_limit_reaches_the_options() -> None:
    ns = parse("--read-timeout", "2.5", "--queue-timeout", "0.5", "--exchange-timeout", "30",
               "--readers", "4", "--max-waiting", "64", "--workers", "2", "--stop-timeout", "1")
    assert (ns.read_timeout, ns.queue_timeout, ns.exchange_timeout) == (2.5, 0.5, 30.0)
    assert (ns.readers, ns.max_waiting, ns.workers, ns.stop_timeout) == (4, 64, 2, 1.0)


@pytest.mark.parametrize(("option", "value"), [
    ("--read-timeout", "0"), ("--read-timeout", "-1"), ("--queue-timeout", "nan"),
    ("--exchange-timeout", "inf"), ("--delegate-timeout", "abc"), ("--stop-timeout", "1e9"),
    ("--workers", "0"), ("--readers", "-3"), ("--max-waiting", "1.5"), ("--max-waiting", "100000"),
])
def test_a_bad_value_is_refused_by_name(option: str, value: str) -> None:
    proc = subprocess.run([str(PODNET), "daemon", "--socket", "/nonexistent/dir/d.sock", f"{option}={value}"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert option in proc.stderr and value in proc.stderr and "Traceback" not in proc.stderr
