"""Telling the node agent about a pod's addresses as its ADD finishes (and forgetting them at DEL).

The agent holds back every address of the node's pod ranges it has not classified (see
``podnet.agent.admission_rules``); an ADD that carries the pod's name (``K8S_POD_NAMESPACE`` and
``K8S_POD_NAME`` in CNI_ARGS, as kubelet passes them) asks it to classify the new addresses and
waits, bounded, until the policy table holds them. The answer never fails the ADD:

* no agent socket: no agent on this node, nothing is held back, nothing to wait for;
* the agent does not answer in time, or does not list the pod yet: the ADD succeeds and the pod
  stays unreachable until the agent classifies it (fail closed), which the message on stderr says.

One JSON object per line each way, over a root-only unix socket.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterable, Mapping
from typing import IO, Any

DEFAULT_SOCKET = "/run/podnet/agent.sock"
CONF_KEY = "podnetAgentSocket"
ENV_KEY = "PODNET_AGENT_SOCKET"
WAIT_SECONDS = 2.0
MAX_LINE = 1 << 20


def socket_path(conf: Mapping[str, Any], env: Mapping[str, str]) -> str:
    """The network config's ``podnetAgentSocket`` wins (it reaches every call), then the env."""
    value = conf.get(CONF_KEY)
    if isinstance(value, str) and value:
        return value
    return env.get(ENV_KEY) or DEFAULT_SOCKET


def pod_name(args: Iterable[tuple[str, str]]) -> tuple[str, str] | None:
    found = dict(args)
    namespace, name = found.get("K8S_POD_NAMESPACE", ""), found.get("K8S_POD_NAME", "")
    return (namespace, name) if namespace and name else None


def ask(path: str, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One request and its answer (OSError / ValueError when there is none in time)."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
            if len(buf) > MAX_LINE:
                raise ValueError("answer too long")
    answer = json.loads(buf or b"null")
    if not isinstance(answer, dict):
        raise ValueError("no answer")
    return answer


def admit(conf: Mapping[str, Any], env: Mapping[str, str], args: Iterable[tuple[str, str]],
          container_id: str, ips: Iterable[str], stderr: IO[str], plugin: str) -> None:
    who = pod_name(args)
    path = socket_path(conf, env)
    if who is None or not os.path.exists(path):
        return
    request = {"op": "admit", "namespace": who[0], "name": who[1], "containerID": container_id,
               "ips": [ip.split("/")[0] for ip in ips]}
    try:
        answer = ask(path, request, WAIT_SECONDS)
    except (OSError, ValueError) as exc:
        stderr.write(f"{plugin}: the node agent did not confirm pod {who[0]}/{who[1]} ({exc}): its "
                     "traffic is held back until the agent classifies it\n")
        return
    if not answer.get("classified"):
        stderr.write(f"{plugin}: the node agent has not classified pod {who[0]}/{who[1]} yet "
                     f"({answer.get('error') or 'not listed by its sources yet'}): its traffic is held "
                     "back until it does\n")


def release(conf: Mapping[str, Any], env: Mapping[str, str], container_id: str) -> None:
    """Best effort and quick: the agent also forgets a pod when its sources delete it."""
    path = socket_path(conf, env)
    if not os.path.exists(path):
        return
    with contextlib.suppress(OSError, ValueError):
        ask(path, {"op": "release", "containerID": container_id}, 0.5)
