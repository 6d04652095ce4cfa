"""A failing test here shows the log of every ``podnet agent`` this run started (the tail)."""

from __future__ import annotations

from collections.abc import Generator

import pluggy
import pytest

from .agentproc import LOGS

Outcome = pluggy.Result[pytest.TestReport]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, Outcome, None]:
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for log in LOGS:
        if log.exists():
            tail = log.read_text(errors="replace").splitlines()[-80:]
            report.sections.append((f"podnet agent log {log} (tail)", "\n".join(tail)))
