"""One node's route controller for bench_multinode, in a process of its own as each node's agent is
(so the nodes' syncs do not queue behind one interpreter lock): a :class:`RouteSync` for the node's
namespace, its store fed by lines on stdin, each a JSON list:

* ``["replace", [node, ...]]``, ``["add", node]``, ``["delete", node]``: the store changed; answered
  at once;
* ``["synced"]``: answered once a sync pass has finished since the last change (it does not ask for
  one, so waiting adds no work to the node);
* ``["settle"]``: asks for a pass and answers when it is done.

A node is ``[name, pod_cidr, internal_ip]``. Answers are ``ok`` or ``error: ...``; ``ready`` first.

    python -m bench.multinode_agent NODE_NAME NETNS_PATH
"""

from __future__ import annotations

import json
import sys
import time
from ipaddress import ip_address, ip_network
from typing import Any

from podnet.agent.model import Node
from podnet.agent.objects import Kind
from podnet.agent.routes import RouteSync, RoutingOptions
from podnet.agent.store import Event, EventType, Store

SOURCE = "bench"
CHECK_PERIOD = 10.0  # the agent's default: no periodic check runs inside a measurement


def node_of(raw: list[str]) -> Node:
    name, cidr, ip = raw
    return Node(name, (ip_network(cidr),), (ip_address(ip),))


def node_json(node: Node) -> list[str]:
    return [node.name, str(node.pod_cidrs[0]), str(node.internal_ips[0])]


class Agent:
    def __init__(self, name: str, netns: str) -> None:
        self.store = Store(name)
        self.store.register_source(SOURCE, [Kind.NODE])
        self.sync = RouteSync(self.store, RoutingOptions(check_period=CHECK_PERIOD, netns=netns))
        # The count of passes before the last change. A pass already running at the change would
        # count too: the bench changes a node only once its controller is settled.
        self.mark = 0

    def handle(self, cmd: list[Any]) -> str:
        op = cmd[0]
        if op in ("replace", "add", "delete"):
            self.mark = self.sync.syncs
            if op == "replace":
                self.store.replace(Kind.NODE, SOURCE, [node_of(n) for n in cmd[1]])
            else:
                kind = EventType.ADDED if op == "add" else EventType.DELETED
                self.store.apply(Event(kind, node_of(cmd[1])), SOURCE)
            return "ok"
        if op == "synced":
            deadline = time.monotonic() + 10
            while self.sync.syncs <= self.mark:  # read only: no extra pass is asked for
                if time.monotonic() > deadline:
                    return f"error: no pass in 10 s ({self.sync.last_error})"
                time.sleep(0.002)
            return "ok"
        if op == "settle":
            done = self.sync.wait_for(self.sync.request(), 10)
            return "ok" if done else f"error: no pass in 10 s ({self.sync.last_error})"
        return f"error: unknown command {op!r}"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m bench.multinode_agent NODE_NAME NETNS_PATH", file=sys.stderr)
        return 2
    agent = Agent(*argv)
    agent.sync.start()
    print("ready", flush=True)
    try:
        for line in sys.stdin:
            print(agent.handle(json.loads(line)), flush=True)
    finally:
        agent.sync.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
