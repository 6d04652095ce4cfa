"""DEL starts no thread of its own: unregister() hands the kernel's long wait to a few long-lived
helpers, and deletes in the caller's thread when no helper can be had (a pids limit)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from nsutil import Netns, NetnsFactory
from podnet.kernel import Netlink, random_mac
from podnet.kernel import unregister as unregister_mod
from podnet.kernel.unregister import open_netns, unregister

pytestmark = pytest.mark.root


@pytest.fixture
def nl(node: Netns) -> Iterator[Netlink]:
    with Netlink(node.name) as session:
        yield session


_REAL_START = threading.Thread.start


def _in_worker(fn: Callable[[], None]) -> None:
    """Run ``fn`` in a thread that is not the main one, as the daemon's workers do (in the main
    thread the kernel layer enters namespaces from short-lived threads, for signal safety)."""
    errors: list[BaseException] = []

    def body() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=body, name="test-worker")
    _REAL_START(worker)
    worker.join(60)
    if errors:
        raise errors[0]


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the threads started from now on."""
    names: list[str] = []
    real = threading.Thread.start

    def start(self: threading.Thread) -> None:
        names.append(self.name)
        real(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    return names


def _delete_pair(nl: Netlink, pod: Netns, name: str) -> None:
    link = nl.add_veth(name, "eth0", mac=random_mac(), peer_mac=random_mac(), peer_netns=pod.name)
    handle = open_netns(pod.path)
    assert handle is not None
    try:
        unregister(nl, link, handle)
    finally:
        handle.close()
    assert nl.find_link(name) is None and pod.links() == ["lo"]


def test_dels_start_no_thread_each(netns: NetnsFactory, nl: Netlink, started: list[str]) -> None:
    pod = netns("pod")

    def many() -> None:
        for i in range(2 * unregister_mod.HELPERS + 8):
            _delete_pair(nl, pod, f"vh{i}")

    _in_worker(many)
    assert len(started) <= unregister_mod.HELPERS, started


def test_del_succeeds_without_a_thread_to_spare(netns: NetnsFactory, nl: Netlink,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    pod = netns("pod")
    monkeypatch.setattr(unregister_mod, "_helpers", unregister_mod._Helpers())  # none started yet

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    _in_worker(lambda: _delete_pair(nl, pod, "vh0"))
