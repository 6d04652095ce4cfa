"""Every plugin test that uses the ``node`` namespace runs twice: through a podnet daemon running
in the node namespace (``[daemon]``) and with no daemon, the shims running the plugin in-process
(``[inprocess]``).

The mode is chosen with ``PODNET_SOCKET`` in this process's environment, which every way of
running a plugin here passes on (``CniEnv.env()``, the helpers' ``plugin_env()``). A test that
must run only one way says so with ``@pytest.mark.inprocess_only``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cnienv import NO_DAEMON, NodeDaemon

MODES = ("inprocess", "daemon")
# Tests whose subject is the plugin *process* dying mid-ADD: through the daemon, the process killed
# is the shim and the daemon finishes the ADD, so their premise does not hold. tests/daemon kills
# the daemon mid-ADD instead. (Their authors may mark them ``inprocess_only`` instead.)
INPROCESS_ONLY = frozenset({"test_bridge_crash.py::test_sigkill_during_add"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "inprocess_only: do not repeat this plugin test through the daemon")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    name = f"{metafunc.definition.path.name}::{metafunc.definition.originalname}"
    if ("node" in metafunc.fixturenames and name not in INPROCESS_ONLY
            and not metafunc.definition.get_closest_marker("inprocess_only")):
        metafunc.parametrize("podnet_mode", MODES, indirect=True)


@pytest.fixture(autouse=True)
def podnet_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    mode: str = getattr(request, "param", "inprocess")
    where = tmp_path_factory.mktemp("podnet-daemon")
    if mode == "inprocess":
        monkeypatch.setenv("PODNET_SOCKET", str(where / NO_DAEMON))
        yield mode
        return
    daemon = NodeDaemon(request.getfixturevalue("node"), where / "podnet.sock", where / "daemon.log").start()
    monkeypatch.setenv("PODNET_SOCKET", str(daemon.socket))
    try:
        yield mode
    finally:
        code = daemon.stop()
    records = daemon.records()
    assert code == 0, daemon.log_text()
    assert not [r for r in records if r["event"] == "internal-error"], daemon.log_text()
    assert any(r["event"] == "request" for r in records), "no plugin call went through the daemon"
