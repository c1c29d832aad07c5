"""The per-dependency circuit, as pure logic with a fake clock: a stall opens it, an answer closes it."""

from __future__ import annotations

import asyncio

import pytest
from test_admission import FakeClock

from server.circuit import Circuit
from server.errors import DependencyTimeout, DependencyUnavailable, InvalidArgument


def circuit(stall_after_s: float = 1.0) -> tuple[Circuit, FakeClock]:
    clock = FakeClock()
    return Circuit("milvus", stall_after_s, clock), clock


def timed_out(c: Circuit) -> None:
    c.check()
    with pytest.raises(DependencyTimeout), c.watch():
        raise DependencyTimeout("milvus", "no answer")


def test_calls_outstanding_past_stall_after_s_with_none_answered_open_it() -> None:
    c, clock = circuit()
    with c.watch():
        clock.now += 0.9
        c.check()  # not yet: a slow call is not a stall
        clock.now += 0.2
        assert c.is_open
        with pytest.raises(DependencyUnavailable, match=r"milvus unavailable: calls stalled \(none answered for 1 s\)"):
            c.check()
    assert not c.is_open  # the stalled call answered in the end: closed again


def test_a_slow_dependency_that_keeps_answering_stays_closed() -> None:
    c, clock = circuit()
    slow = c.watch()
    slow.__enter__()
    for _ in range(30):  # one call pending throughout, others answered every 0.1 s
        clock.now += 0.1
        c.check()
        with c.watch():
            pass
    assert not c.is_open
    slow.__exit__(None, None, None)


def test_while_open_one_trial_call_goes_through_per_stall_after_s_and_an_answer_closes_it() -> None:
    c, clock = circuit()
    clock.now += 5.0
    pending = c.watch()
    pending.__enter__()
    clock.now += 1.5
    with pytest.raises(DependencyUnavailable):
        c.check()  # opens now: the pending call was the first trial
    assert pending.__exit__(DependencyTimeout, DependencyTimeout("milvus", "x"), None) is False  # it times out
    clock.now += 0.5
    with pytest.raises(DependencyUnavailable):
        c.check()  # still within the trial interval
    clock.now += 0.6
    c.check()  # the next trial
    with c.watch():
        pass  # answered
    assert not c.is_open
    c.check()


def test_a_lone_call_that_times_out_after_stall_after_s_opens_it_and_an_early_timeout_does_not() -> None:
    c, clock = circuit()
    c.check()
    with pytest.raises(DependencyTimeout), c.watch():
        clock.now += 0.5
        raise DependencyTimeout("milvus", "client deadline")
    assert not c.is_open
    with pytest.raises(DependencyTimeout), c.watch():
        clock.now += 2.0
        raise DependencyTimeout("milvus", "no answer")
    assert c.is_open


def test_an_error_answer_counts_as_an_answer_and_a_cancellation_changes_nothing() -> None:
    c, clock = circuit()
    with pytest.raises(InvalidArgument), c.watch():
        clock.now += 3.0
        raise InvalidArgument("filters", "cannot parse")
    assert not c.is_open
    with pytest.raises(asyncio.CancelledError), c.watch():
        clock.now += 3.0
        raise asyncio.CancelledError  # its caller gave up: nothing learnt about the dependency
    assert not c.is_open and c.outstanding == 0


def test_overload_that_ends_every_call_on_a_short_request_deadline_does_not_open_it() -> None:
    """At twice its capacity with 200 ms deadlines, calls overlap without pause and none is answered in time:
    each ends on its request's deadline, so no call is ever old enough to be a stall."""
    c, clock = circuit()
    pending = [c.watch() for _ in range(4)]
    for step in range(100):  # 10 s: a new call every 0.1 s, each timing out 0.1 s later, never a pause
        c.check()
        pending[step % 4].__enter__()
        clock.now += 0.1
        if step >= 1:
            done = pending[(step - 1) % 4]
            assert done.__exit__(DependencyTimeout, DependencyTimeout("triton", "request deadline"), None) is False
            pending[(step - 1) % 4] = c.watch()
    assert not c.is_open


def test_zero_stall_after_s_never_opens() -> None:
    c, clock = circuit(stall_after_s=0.0)
    with c.watch():
        clock.now += 100.0
        c.check()
    timed_out(c)
    assert not c.is_open and c.outstanding == 0
