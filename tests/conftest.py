"""Shared fixtures: namespaces that always clean up, and skip rules that say why."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from nsutil import Netns, NetnsFactory, namespaces

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
GO_PLUGINS = Path("/usr/lib/cni")


def pytest_configure(config: pytest.Config) -> None:
    # Plugin calls that a test makes without choosing a lock directory (interop, daemon, doctor
    # tests) must not leave lock files in the machine's /run/podnet.
    if "PODNET_LOCK_DIR" not in os.environ:
        locks = tempfile.mkdtemp(prefix="podnet-test-locks-")
        os.environ["PODNET_LOCK_DIR"] = locks
        config.add_cleanup(lambda: shutil.rmtree(locks, ignore_errors=True))


def _root_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2's ip command (make test installs it)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _root_reason()
    go_reason = None if (GO_PLUGINS / "bridge").exists() else (
        "needs Debian's containernetworking-plugins under /usr/lib/cni (make test installs it)")
    for item in items:
        if reason and "root" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))
        if go_reason and "interop" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=go_reason))


@pytest.fixture
def netns() -> Iterator[NetnsFactory]:
    """Factory for throw-away namespaces: ``netns("pod")``; all removed after the test."""
    with namespaces() as factory:
        yield factory


@pytest.fixture
def node(netns: NetnsFactory) -> Netns:
    """A namespace standing in for the node (host); runtimes and plugins run inside it."""
    return netns("node")
