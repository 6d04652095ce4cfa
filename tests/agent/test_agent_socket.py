"""The agent's socket and the plugins' client of it: bad requests answered by name, a silent
caller holds nothing up, non-root callers are refused, and an ADD never fails or hangs on it."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from podnet.agent.admission import AdmissionServer, BadRequest, parse_admit
from podnet.plugins import agent_notify

pytestmark = pytest.mark.root  # SO_PEERCRED/pidfd checks want a root caller


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    def admit(request: dict[str, Any]) -> dict[str, Any]:
        pod = parse_admit(request)
        seen.append(request)
        return {"ok": True, "classified": pod.name != "unknown"}

    path = str(tmp_path / "agent.sock")
    srv = AdmissionServer(path, {"admit": admit, "status": lambda r: {"ok": True, "status": {}}},
                          workers=2, deadline=1.0)
    srv.start()
    yield path, seen
    srv.stop()


def test_the_socket_is_root_only(server: tuple[str, list[dict[str, Any]]]) -> None:
    assert os.stat(server[0]).st_mode & 0o777 == 0o600


@pytest.mark.parametrize(("request_", "error"), [
    ({"op": "nope"}, "op 'nope'"),
    ({"op": "admit", "namespace": "x", "name": "a", "containerID": "c", "ips": ["10.0.0.300"]}, "ips"),
    ({"op": "admit", "namespace": "", "name": "a", "containerID": "c", "ips": ["10.0.0.3"]}, "namespace"),
    ({"op": "admit", "namespace": "x", "name": "a", "containerID": "c", "ips": []}, "ips"),
    (["not", "an", "object"], "JSON object"),
])
def test_bad_requests_are_answered_by_name(server: tuple[str, list[dict[str, Any]]], request_: Any,
                                           error: str) -> None:
    answer = agent_notify.ask(server[0], request_, 5)
    assert answer["ok"] is False and error in answer["error"]


def test_a_silent_caller_does_not_hold_up_the_others(server: tuple[str, list[dict[str, Any]]]) -> None:
    silent = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
    try:
        for s in silent:
            s.connect(server[0])
        start = time.monotonic()
        answer = agent_notify.ask(server[0], {"op": "status"}, 5)
        assert answer["ok"] and time.monotonic() - start < 3
    finally:
        for s in silent:
            s.close()


def test_admit_from_an_add(server: tuple[str, list[dict[str, Any]]]) -> None:
    err = io.StringIO()
    who = [("K8S_POD_NAMESPACE", "x"), ("K8S_POD_NAME", "a")]
    agent_notify.admit({agent_notify.CONF_KEY: server[0]}, {}, who, "cid1", ["10.0.0.3/24", "fd00::3/64"],
                       err,
                       "podnet-bridge")
    assert err.getvalue() == ""
    assert server[1][-1]["ips"] == ["10.0.0.3", "fd00::3"] and server[1][-1]["containerID"] == "cid1"
    agent_notify.admit({}, {agent_notify.ENV_KEY: server[0]}, [("K8S_POD_NAMESPACE", "x"),
                                                               ("K8S_POD_NAME", "unknown")],
                       "cid2", ["10.0.0.4/24"], err, "podnet-bridge")
    assert "has not classified pod x/unknown" in err.getvalue() and "held back" in err.getvalue()


def test_no_agent_no_pod_name_no_wait(tmp_path: Path) -> None:
    err = io.StringIO()
    start = time.monotonic()
    agent_notify.admit({}, {agent_notify.ENV_KEY: str(tmp_path / "none.sock")},
                       [("K8S_POD_NAMESPACE", "x"), ("K8S_POD_NAME", "a")], "c", ["10.0.0.3/24"], err, "p")
    agent_notify.admit({}, {}, [], "c", ["10.0.0.3/24"], err, "p")  # no pod name: not a kubelet call
    assert err.getvalue() == "" and time.monotonic() - start < 0.5


def test_an_agent_that_never_answers_costs_a_bounded_wait(tmp_path: Path) -> None:
    path = str(tmp_path / "stuck.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(4)  # accepts into the backlog, never answers
        err = io.StringIO()
        start = time.monotonic()
        who = [("K8S_POD_NAMESPACE", "x"), ("K8S_POD_NAME", "a")]
        agent_notify.admit({}, {agent_notify.ENV_KEY: path}, who, "c", ["10.0.0.3/24"], err, "podnet-bridge")
        took = time.monotonic() - start
    assert agent_notify.WAIT_SECONDS - 0.1 < took < agent_notify.WAIT_SECONDS + 1.5
    assert "did not confirm pod x/a" in err.getvalue()


_NOBODY = """
import json, os, sys
from podnet.plugins.agent_notify import ask
os.setgroups([]); os.setgid(65534); os.setuid(65534)
print(json.dumps(ask(sys.argv[1], {"op": "status"}, 5)))
"""


def test_a_caller_without_root_is_refused() -> None:
    where = tempfile.mkdtemp(prefix="podnet-agent-sock-")  # world-traversable, unlike pytest's tmp
    path = os.path.join(where, "agent.sock")
    srv = AdmissionServer(path, {"status": lambda r: {"ok": True, "status": {}}})
    srv.start()
    try:
        os.chmod(where, 0o755)
        os.chmod(path, 0o666)  # as if loosened: the peer check still says no
        proc = subprocess.run([sys.executable, "-c", _NOBODY, path], capture_output=True, text=True,
                              timeout=30, check=False)
        assert proc.returncode == 0, proc.stderr
        assert '"ok": false' in proc.stdout and "uid 65534" in proc.stdout
    finally:
        srv.stop()
        shutil.rmtree(where)


def test_parse_admit_bounds() -> None:
    with pytest.raises(BadRequest, match="ips"):
        parse_admit({"namespace": "x", "name": "a", "containerID": "c", "ips": ["10.0.0.1"] * 17})
    with pytest.raises(BadRequest, match="name"):
        parse_admit({"namespace": "x", "name": "a" * 300, "containerID": "c", "ips": ["10.0.0.1"]})
