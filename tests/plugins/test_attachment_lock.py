"""The per-attachment file lock without root: one holder at a time across threads (each call opens
the file itself, as separate processes and the daemon's threads do), and a DEL removing the file
never lets a waiter and a newcomer hold the lock together."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from podnet.cni.errors import TryAgainLater
from podnet.plugins import attachment_lock
from podnet.plugins.attachment_lock import attachment_lock as lock
from podnet.plugins.attachment_lock import network_lock


def test_one_holder_and_forget_keeps_waiters_ordered(tmp_path: Path) -> None:
    env = {"PODNET_LOCK_DIR": str(tmp_path / "locks")}
    events: list[str] = []
    released_by_newcomer = threading.Event()

    def waiter() -> None:
        with lock(env, "net", "cid", "eth0"):
            events.append("waiter holds" if released_by_newcomer.is_set() else "waiter holds WITH newcomer")

    with lock(env, "net", "cid", "eth0") as held:
        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.05)  # the waiter now blocks on this file
        held.forget()  # a DEL ends the attachment: the file goes while still locked
    # A newcomer creates a new file at the same path and locks it; the waiter, woken on the old
    # file, must notice and queue behind it.
    with lock(env, "net", "cid", "eth0"):
        events.append("newcomer holds")
        time.sleep(0.05)
        released_by_newcomer.set()
    thread.join(timeout=10)
    assert events == ["newcomer holds", "waiter holds"]


def test_other_attachments_do_not_wait(tmp_path: Path) -> None:
    env = {"PODNET_LOCK_DIR": str(tmp_path)}
    with lock(env, "net", "cid", "eth0"), lock(env, "net", "cid", "eth1"), lock(env, "net2", "cid", "eth0"):
        assert len(list(tmp_path.iterdir())) == 3


def test_a_stuck_holder_is_code_11(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attachment_lock, "WAIT_SECONDS", 0.2)
    env = {"PODNET_LOCK_DIR": str(tmp_path)}
    failed: list[BaseException] = []

    def second() -> None:
        try:
            with lock(env, "net", "cid", "eth0"):
                pass
        except TryAgainLater as exc:
            failed.append(exc)

    with lock(env, "net", "cid", "eth0"):
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(timeout=10)
    assert len(failed) == 1 and failed[0].code == 11


def test_sweep_removes_only_unheld_files(tmp_path: Path) -> None:
    env = {"PODNET_LOCK_DIR": str(tmp_path)}
    with lock(env, "net", "idle", "eth0"):
        pass
    with lock(env, "net", "busy", "eth0"):
        assert attachment_lock.sweep(env) == 1
        busy = attachment_lock.lock_path(env, "net", "busy", "eth0")
        assert [str(p) for p in tmp_path.iterdir()] == [busy]
    assert attachment_lock.sweep({"PODNET_LOCK_DIR": str(tmp_path / "none")}) == 0


def test_network_lock_shared_by_calls_exclusive_for_gc(tmp_path: Path) -> None:
    env = {"PODNET_LOCK_DIR": str(tmp_path)}
    events: list[str] = []

    def gc() -> None:
        with network_lock(env, "net", exclusive=True):
            events.append("gc")

    with network_lock(env, "net", exclusive=False), network_lock(env, "net", exclusive=False):
        thread = threading.Thread(target=gc)
        thread.start()
        time.sleep(0.05)
        events.append("calls done")  # two calls hold it together; GC waits for both
    thread.join(timeout=10)
    with network_lock(env, "other", exclusive=True), network_lock(env, "net", exclusive=False):
        events.append("other networks never wait")
    assert events == ["calls done", "gc", "other networks never wait"]


def test_a_waiting_gc_goes_before_calls_that_come_after_it(tmp_path: Path) -> None:
    # flock has no writer preference: without the gate a steady stream of overlapping ADDs would
    # keep the shared lock held and starve GC.
    env = {"PODNET_LOCK_DIR": str(tmp_path)}
    events: list[str] = []

    def gc() -> None:
        with network_lock(env, "net", exclusive=True):
            events.append("gc")
            time.sleep(0.05)

    def late_call() -> None:
        with network_lock(env, "net", exclusive=False):
            events.append("late call")

    with network_lock(env, "net", exclusive=False):
        gc_thread = threading.Thread(target=gc)
        gc_thread.start()
        time.sleep(0.05)  # GC holds the gate and waits for this call
        late = threading.Thread(target=late_call)
        late.start()
        time.sleep(0.05)
        events.append("early call done")
    gc_thread.join(timeout=10)
    late.join(timeout=10)
    assert events == ["early call done", "gc", "late call"]
