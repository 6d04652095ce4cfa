"""consistent_dump's retry logic on scripted kernel replies (no root, no kernel)."""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import threading
from collections.abc import Callable, Iterator

import pytest

from podnet.kernel import DUMP_STATS, DumpInterrupted, InvalidArgument, RetryPolicy, Snapshot, model, wire
from podnet.kernel.dump import DumpRequest, consistent_dump

INTR = wire.NLM_F_DUMP_INTR
MULTI = wire.NLM_F_MULTI
NO_WAIT = RetryPolicy(attempts=3, backoff=0.0, max_backoff=0.0)
Reply = Callable[[int], list[bytes]]  # seq -> receive buffers of one attempt


def addr(seq: int, last_octet: int, flags: int = MULTI) -> bytes:
    ip = bytes([10, 0, 0, last_octet])
    body = model.IFADDRMSG.pack(socket.AF_INET, 32, 0, 0, 1) + wire.attr(model.IFA_LOCAL, ip)
    return wire.message(model.RTM_NEWADDR, flags, seq, body)


def done(seq: int, flags: int = MULTI, err: int = 0, reason: str = "") -> bytes:
    body = struct.pack("=i", -err)
    if reason:
        flags |= wire.NLM_F_ACK_TLVS
        body += wire.attr(wire.NLMSGERR_ATTR_MSG, reason.encode() + b"\0")
    return wire.message(wire.NLMSG_DONE, flags, seq, body)


def error(seq: int, err: int) -> bytes:
    echoed = wire.NLMSG_HDR.pack(24, model.RTM_GETADDR, 0x301, seq, 0)
    return wire.message(wire.NLMSG_ERROR, wire.NLM_F_CAPPED, seq, struct.pack("=i", -err) + echoed)


def one_part(seq: int) -> list[bytes]:
    """A small dump: every object and DONE in one receive buffer."""
    return [addr(seq, 1) + addr(seq, 2) + addr(seq, 3) + done(seq)]


def repeated(seq: int) -> list[bytes]:
    """A resumed walk that went back one position: 10.0.0.2 twice, and no flag to say so."""
    return [addr(seq, 1) + addr(seq, 2), addr(seq, 2) + addr(seq, 3) + done(seq)]


def missed(seq: int) -> list[bytes]:
    return [addr(seq, 1), addr(seq, 3) + done(seq)]


def clean(seq: int) -> list[bytes]:
    """Two receive buffers, like a dump too big for one: 10.0.0.1-2, then .3 and DONE."""
    return [addr(seq, 1) + addr(seq, 2), addr(seq, 3) + done(seq)]


def flagged_middle(seq: int) -> list[bytes]:
    return [addr(seq, 1) + addr(seq, 2), addr(seq, 3, MULTI | INTR) + done(seq)]


def flagged_done_only(seq: int) -> list[bytes]:
    return [addr(seq, 1) + addr(seq, 2), addr(seq, 3) + done(seq, MULTI | INTR)]


class FakeSocket:
    """Stands in for RouteSocket: each send() starts the next scripted attempt."""

    def __init__(self, *attempts: Reply) -> None:
        self.lock = threading.Lock()
        self.script = list(attempts)
        self.pending: list[bytes] = []
        self.seq = 100
        self.sent = 0
        self.changed: list[bool] = []

    def send(self, msg_type: int, flags: int, body: bytes) -> int:
        assert msg_type == model.RTM_GETADDR and flags & wire.NLM_F_DUMP
        self.seq += 1
        self.sent += 1
        self.pending = self.script.pop(0)(self.seq)
        return self.seq

    def recv(self) -> bytes:
        return self.pending.pop(0)

    def finished(self, seq: int) -> None:
        pass

    @contextlib.contextmanager
    def watching(self, groups: object) -> Iterator[Callable[[], bool]]:
        """Whether a change was announced during the attempt: ``changed``'s next entry."""
        announced = self.changed.pop(0) if self.changed else False
        yield lambda: announced


# A dump the kernel flags (unfiltered addresses), and one it does not, checked by comparison
# (as neighbours are).
REQ = DumpRequest("addresses", model.RTM_GETADDR, model.address_request(), model.parse_address,
                  flags_interrupts=True)
UNFLAGGED = DumpRequest("addresses of lo", model.RTM_GETADDR, model.address_request(index=1),
                        model.parse_address, compare=True)


def ips(snap: Snapshot[model.Address]) -> list[str]:
    return [a.address for a in snap]


def test_clean_dump_is_one_attempt() -> None:
    snap = consistent_dump(FakeSocket(clean), REQ, retry=NO_WAIT)  # type: ignore[arg-type]
    assert snap.consistent and snap.attempts == 1
    assert ips(snap) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert DUMP_STATS.as_dict() == {"dumps": 1, "attempts": 1, "interrupted": 0, "retries": 0,
                                    "gave_up": 0, "inconsistent_returned": 0}


@pytest.mark.parametrize("interrupted", [flagged_middle, flagged_done_only], ids=["message", "done"])
def test_flag_on_any_message_retries_the_whole_dump(interrupted: Reply) -> None:
    sock = FakeSocket(interrupted, clean)
    snap = consistent_dump(sock, REQ, retry=NO_WAIT)  # type: ignore[arg-type]
    assert snap.consistent and snap.attempts == 2 and sock.sent == 2
    assert ips(snap) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]  # nothing of the first attempt kept
    stats = DUMP_STATS.as_dict()
    assert stats["interrupted"] == 1 and stats["retries"] == 1 and stats["dumps"] == 1


def test_budget_spent_raises_with_attempts() -> None:
    calls: list[int] = []
    sock = FakeSocket(flagged_middle, flagged_done_only, flagged_middle)
    with pytest.raises(DumpInterrupted) as info:
        consistent_dump(sock, REQ, retry=NO_WAIT, on_interrupt=calls.append)  # type: ignore[arg-type]
    assert info.value.attempts == 3 and info.value.code == 11
    assert calls == [1, 2, 3]
    stats = DUMP_STATS.as_dict()
    assert stats["gave_up"] == 1 and stats["interrupted"] == 3 and stats["dumps"] == 0


def test_best_effort_returns_last_attempt_marked_inconsistent() -> None:
    sock = FakeSocket(flagged_middle, flagged_middle, flagged_middle)
    snap = consistent_dump(sock, REQ, retry=NO_WAIT, best_effort=True)  # type: ignore[arg-type]
    assert not snap.consistent and snap.attempts == 3
    assert ips(snap) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert DUMP_STATS.inconsistent_returned == 1


@pytest.mark.parametrize("reply", [
    lambda seq: [addr(seq, 1) + done(seq, err=errno.EINTR)],
    lambda seq: [error(seq, errno.EBUSY)],
], ids=["done-eintr", "error-ebusy"])
def test_eintr_and_ebusy_are_retried(reply: Reply) -> None:
    snap = consistent_dump(FakeSocket(reply, clean), REQ, retry=NO_WAIT)  # type: ignore[arg-type]
    assert snap.consistent and snap.attempts == 2


def test_kernel_error_is_translated_with_its_reason() -> None:
    sock = FakeSocket(lambda seq: [done(seq, err=errno.EINVAL, reason="Invalid header")])
    with pytest.raises(InvalidArgument) as info:
        consistent_dump(sock, REQ, retry=NO_WAIT)  # type: ignore[arg-type]
    assert info.value.errno == errno.EINVAL and "Invalid header" in str(info.value)


def test_messages_of_another_request_are_ignored() -> None:
    def stale_then_clean(seq: int) -> list[bytes]:
        return [addr(seq - 1, 9, MULTI | INTR) + done(seq - 1, MULTI | INTR), *clean(seq)]

    snap = consistent_dump(FakeSocket(stale_then_clean), REQ, retry=NO_WAIT)  # type: ignore[arg-type]
    assert snap.consistent and ips(snap) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


def test_backoff_is_short_bounded_and_jittered(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("podnet.kernel.dump.time.sleep", slept.append)
    policy = RetryPolicy(attempts=6, backoff=0.001, max_backoff=0.004)
    with pytest.raises(DumpInterrupted):
        consistent_dump(FakeSocket(*[flagged_middle] * 6), REQ, retry=policy)  # type: ignore[arg-type]
    assert len(slept) == 5  # none after the last attempt
    caps = [0.001, 0.002, 0.004, 0.004, 0.004]
    assert all(cap / 2 <= s <= cap for s, cap in zip(slept, caps, strict=True))


def test_snapshot_is_a_sequence() -> None:
    snap = Snapshot([1, 2, 3], attempts=2, consistent=True)
    assert len(snap) == 3 and snap[0] == 1 and snap[1:] == [2, 3] and list(snap) == [1, 2, 3]
    assert 2 in snap and "consistent" in repr(snap)


# -- dumps the kernel does not flag: one part, or two attempts that agree ----------------------


def test_unflagged_dump_in_one_part_is_one_attempt() -> None:
    sock = FakeSocket(one_part)
    snap = consistent_dump(sock, UNFLAGGED, retry=NO_WAIT)  # type: ignore[arg-type]
    assert snap.consistent and snap.attempts == 1 and sock.sent == 1
    assert ips(snap) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


def test_unflagged_dump_in_parts_is_accepted_when_a_second_attempt_agrees() -> None:
    sock = FakeSocket(clean, clean)
    snap = consistent_dump(sock, UNFLAGGED, retry=NO_WAIT)  # type: ignore[arg-type]
    assert snap.consistent and snap.attempts == 2 and sock.sent == 2
    assert DUMP_STATS.as_dict() == {"dumps": 1, "attempts": 2, "interrupted": 0, "retries": 0,
                                    "gave_up": 0, "inconsistent_returned": 0}


@pytest.mark.parametrize("torn", [repeated, missed], ids=["repeated", "missed"])
def test_unflagged_torn_dump_is_never_returned(torn: Reply) -> None:
    """A walk resumed at a shifted position, which no flag reports: it disagrees with the
    next attempt, and the answer is the pair that agrees."""
    calls: list[int] = []
    sock = FakeSocket(torn, clean, clean)
    snap = consistent_dump(sock, UNFLAGGED, retry=NO_WAIT, on_interrupt=calls.append)  # type: ignore[arg-type]
    assert snap.consistent and snap.attempts == 3 and calls == [2]
    assert ips(snap) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert DUMP_STATS.interrupted == 1 and DUMP_STATS.retries == 1


def test_unflagged_dump_that_never_agrees_raises() -> None:
    sock = FakeSocket(clean, repeated, clean)
    with pytest.raises(DumpInterrupted) as info:
        consistent_dump(sock, UNFLAGGED, retry=NO_WAIT)  # type: ignore[arg-type]
    assert info.value.attempts == 3 and "disagreement" in info.value.details
    assert DUMP_STATS.gave_up == 1 and DUMP_STATS.dumps == 0


def test_unflagged_dump_gets_two_attempts_even_with_a_budget_of_one() -> None:
    sock = FakeSocket(clean, clean)
    snap = consistent_dump(sock, UNFLAGGED, retry=RetryPolicy(attempts=1))  # type: ignore[arg-type]
    assert snap.consistent and snap.attempts == 2


def test_unflagged_best_effort_returns_the_last_attempt_unchecked() -> None:
    sock = FakeSocket(clean, missed)
    snap = consistent_dump(sock, UNFLAGGED, retry=RetryPolicy(attempts=2, backoff=0.0),  # type: ignore[arg-type]
                           best_effort=True)
    assert not snap.consistent and ips(snap) == ["10.0.0.1", "10.0.0.3"]


def test_unflagged_dump_with_a_change_announced_while_it_was_made_is_repeated() -> None:
    """Agreeing with the attempt before is not enough when the kernel announced a change while
    the parts were made: both could be torn the same way."""
    sock = FakeSocket(clean, clean, clean)
    sock.changed = [False, True, False]
    snap = consistent_dump(sock, UNFLAGGED, retry=NO_WAIT)  # type: ignore[arg-type]
    assert snap.consistent and snap.attempts == 3 and DUMP_STATS.interrupted == 1


def test_unflagged_dump_in_one_part_needs_no_quiet_table() -> None:
    sock = FakeSocket(one_part)
    sock.changed = [True]
    snap = consistent_dump(sock, UNFLAGGED, retry=NO_WAIT)  # type: ignore[arg-type]
    assert snap.consistent and snap.attempts == 1


def test_flagged_dump_in_parts_with_a_change_announced_but_no_flag_is_repeated() -> None:
    """The kernel's flag misses a change that races with the making of a part (dumps run under
    RCU): the announcement catches it."""
    sock = FakeSocket(clean, clean)
    sock.changed = [True, False]
    snap = consistent_dump(sock, REQ, retry=NO_WAIT)  # type: ignore[arg-type]
    assert snap.consistent and snap.attempts == 2 and DUMP_STATS.interrupted == 1
