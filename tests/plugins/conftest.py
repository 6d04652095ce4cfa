"""Every plugin test that uses the ``node`` namespace runs three times: through a podnet daemon
running in the node namespace, reached by the native shim (``[daemon]``) and by the Python shim
(``[daemon-py]``), and with no daemon, the shims running the plugin in-process (``[inprocess]``).

The plugin executables in .venv/bin are links to the native shim (scripts/build-shim.sh); the mode
is chosen with ``PODNET_SOCKET`` (which daemon, if any) and ``PODNET_SHIM`` (``python``: the native
shim hands every call to the Python shim next to it) in this process's environment, which every way
of running a plugin here passes on (``CniEnv.env()``, the helpers' ``plugin_env()``). A test that
must run only one way says so with ``@pytest.mark.inprocess_only`` (e.g. one whose subject is the
plugin process dying: through the daemon, the process killed is the shim; tests/daemon kills the
daemon mid-ADD instead).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cnienv import NO_DAEMON, NodeDaemon

MODES = ("inprocess", "daemon", "daemon-py")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "inprocess_only: do not repeat this plugin test through the daemon")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "node" in metafunc.fixturenames and not metafunc.definition.get_closest_marker("inprocess_only"):
        metafunc.parametrize("podnet_mode", MODES, indirect=True)


@pytest.fixture(autouse=True)
def podnet_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    mode: str = getattr(request, "param", "inprocess")
    where = tmp_path_factory.mktemp("podnet-daemon")
    # The attachment locks of this test's plugin calls, in either mode (passed on like PODNET_SOCKET).
    monkeypatch.setenv("PODNET_LOCK_DIR", str(where / "locks"))
    monkeypatch.setenv("PODNET_SHIM", "python" if mode == "daemon-py" else "native")
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
