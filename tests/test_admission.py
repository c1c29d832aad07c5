"""The adaptive concurrency limiter, as pure logic with a fake clock: no server, no sleeping."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

from server.admission import DO_NOT_RETRY_MS, AdaptiveLimiter, Admission, Rejection
from server.config import AdmissionSettings, load_settings
from server.errors import DependencyTimeout, DependencyUnavailable, Overloaded


@dataclass
class FakeClock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


def limiter(**overrides: float) -> tuple[AdaptiveLimiter, FakeClock]:
    settings = {
        "min_limit": 4,
        "initial_limit": 10,
        "max_limit": 20,
        "target_latency_s": 0.1,
        "backoff_ratio": 0.5,
        "window_s": 0.25,
        "min_window_samples": 10,
        **overrides,
    }
    clock = FakeClock()
    return AdaptiveLimiter(AdmissionSettings.model_validate(settings), clock), clock


def run_window(lim: AdaptiveLimiter, clock: FakeClock, latency_s: float, concurrency: int) -> None:
    """10 requests each taking `latency_s`, in rounds of `concurrency` at once, 0.15 s per round: with
    concurrency below 10 that is one window (0.25 s and 10 samples) judged on its last request."""
    left = 10
    while left:
        admitted = [lim.try_acquire(None) for _ in range(min(concurrency, left))]
        assert admitted == [None] * len(admitted)
        clock.now += 0.15
        for _ in admitted:
            lim.release(latency_s)
        left -= len(admitted)


def test_the_limit_grows_by_one_per_window_under_good_latency_when_it_is_used() -> None:
    lim, clock = limiter()
    limits = []
    for _ in range(3):
        run_window(lim, clock, latency_s=0.05, concurrency=8)
        limits.append(lim.limit)
    assert limits == [11, 12, 13]
    assert lim.recent_latency_s == 0.05


def test_the_limit_does_not_grow_while_mostly_unused() -> None:
    lim, clock = limiter()
    for _ in range(3):
        run_window(lim, clock, latency_s=0.05, concurrency=2)  # 2 in flight of 10 allowed
    assert lim.limit == 10


def test_the_limit_shrinks_multiplicatively_under_bad_latency_down_to_min_limit() -> None:
    lim, clock = limiter()
    limits = []
    for _ in range(3):
        run_window(lim, clock, latency_s=0.3, concurrency=2)
        limits.append(lim.limit)
    assert limits == [5, 4, 4]  # 10 * 0.5, then 2.5 held at min_limit
    assert lim.recent_latency_s == 0.3


def test_the_limit_stops_at_max_limit() -> None:
    lim, clock = limiter(initial_limit=19)
    for _ in range(3):
        run_window(lim, clock, latency_s=0.01, concurrency=10)
    assert lim.limit == 20


def test_a_window_is_judged_only_after_window_s_and_min_window_samples() -> None:
    lim, clock = limiter()
    for _ in range(20):  # plenty of slow samples, but all within the first second
        assert lim.try_acquire(None) is None
        lim.release(0.3)
    assert lim.limit == 10
    clock.now += 1.0
    for _ in range(9):  # the next window: time enough, samples not yet
        assert lim.try_acquire(None) is None
        lim.release(0.3)
    assert lim.limit == 5  # the first window was judged on the first release after it ended
    clock.now += 1.0
    assert lim.try_acquire(None) is None
    lim.release(None)  # a fast failure is no sample
    assert lim.limit == 5


def test_requests_beyond_the_limit_are_rejected_until_one_ends() -> None:
    lim, _ = limiter(min_limit=2, initial_limit=2)
    assert [lim.try_acquire(None) for _ in range(3)] == [None, None, Rejection.LIMIT]
    assert lim.in_flight == 2
    lim.release(0.01)
    assert lim.try_acquire(None) is None
    assert lim.pushback_ms(Rejection.LIMIT) == 100  # no latency observed yet: the target


def test_a_deadline_shorter_than_the_recent_latency_is_rejected_with_do_not_retry() -> None:
    lim, clock = limiter()
    assert lim.try_acquire(0.001) is None  # no latency observed yet: nothing to judge by
    lim.release(None)
    run_window(lim, clock, latency_s=0.08, concurrency=5)
    assert lim.try_acquire(0.05) is Rejection.DEADLINE
    assert lim.in_flight == 0
    assert lim.try_acquire(0.5) is None
    assert lim.pushback_ms(Rejection.DEADLINE) == DO_NOT_RETRY_MS
    assert lim.pushback_ms(Rejection.LIMIT) == 80  # the recent median latency


def test_the_same_inputs_give_the_same_limits() -> None:
    def trace() -> list[float]:
        lim, clock = limiter(initial_limit=8)
        limits = []
        for latency_s in (0.05, 0.2, 0.05, 0.05, 0.3, 0.01):
            run_window(lim, clock, latency_s, concurrency=4)
            limits.append(lim.limit)
        return limits

    assert trace() == trace() == [9, 4.5, 5.5, 6.5, 4, 5]


def test_settings_need_ordered_limits_and_are_a_gateway_section() -> None:
    with pytest.raises(ValidationError, match="min_limit <= initial_limit <= max_limit"):
        AdmissionSettings(min_limit=10, initial_limit=5)
    settings = load_settings(gateway={"admission": {"enabled": False, "max_limit": 64}})
    assert settings.gateway.admission.enabled is False
    assert settings.gateway.admission.max_limit == 64
    with pytest.raises(ValidationError, match=r"gateway\.admission\.max_limitt"):
        load_settings(gateway={"admission": {"max_limitt": 64}})


def test_the_recent_latency_expires_so_deadline_rejections_cannot_last_forever() -> None:
    lim, clock = limiter()
    run_window(lim, clock, latency_s=0.08, concurrency=5)
    assert lim.try_acquire(0.05) is Rejection.DEADLINE
    clock.now += 10 * 0.25  # ten windows without a judgment (nothing admitted finished)
    assert lim.try_acquire(0.05) is Rejection.DEADLINE
    clock.now += 0.01
    assert lim.try_acquire(0.05) is None


class NoDeadline:
    """The part of a grpc.aio context that admission reads: a caller without a deadline."""

    def time_remaining(self) -> None:
        return None


def timeouts_seen_by(outage: bool) -> AdaptiveLimiter:
    """Ten slow Recommends that end on a dependency's deadline, with a dependency down or not."""
    lim, clock = limiter()
    admission = Admission({"Recommend": lim}, outage=lambda: "milvus" if outage else None)

    async def one() -> None:
        async with admission.permit("Recommend", NoDeadline()):  # type: ignore[arg-type]
            clock.now += 0.15  # above the 0.1 s target, then the dependency's deadline passes
            raise DependencyTimeout("milvus", "no answer within the deadline")

    for _ in range(10):
        with pytest.raises(DependencyTimeout):
            asyncio.run(one())
    return lim


def test_timeouts_teach_the_limit_except_while_a_dependency_is_down() -> None:
    loaded = timeouts_seen_by(outage=False)
    assert loaded.limit == 5 and loaded.recent_latency_s == pytest.approx(0.15)  # load: backs off
    during_outage = timeouts_seen_by(outage=True)
    assert during_outage.limit == 10 and during_outage.recent_latency_s is None  # an outage teaches nothing


def test_a_full_limit_while_a_dependency_is_down_is_unavailable_not_resource_exhausted() -> None:
    lim, _ = limiter(min_limit=1, initial_limit=1)
    down: list[str] = []
    admission = Admission({"Search": lim}, outage=lambda: down[0] if down else None)

    async def two_at_once() -> None:
        async with (
            admission.permit("Search", NoDeadline()),  # type: ignore[arg-type]
            admission.permit("Search", NoDeadline()),  # type: ignore[arg-type]
        ):
            pass

    with pytest.raises(Overloaded):
        asyncio.run(two_at_once())
    down.append("milvus")
    with pytest.raises(DependencyUnavailable, match="milvus unavailable: Search not admitted"):
        asyncio.run(two_at_once())


@dataclass
class Deadline:
    """The part of a grpc.aio context that admission reads: a caller with `left_s` of its deadline left."""

    left_s: float

    def time_remaining(self) -> float:
        return self.left_s


def deadline_left(method: str, suffix: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(
        f"recstack_admission_deadline_left_seconds_{suffix}", {"method": method, **labels}
    )
    return value or 0.0


def test_the_deadline_left_at_admission_is_recorded_for_callers_that_set_one_admitted_or_not() -> None:
    """Under overload, calls wait in gRPC's queue before their handler: this histogram is where that shows."""
    lim, _ = limiter(min_limit=1, initial_limit=1)
    admission = Admission({"Recommend": lim})
    count, total = deadline_left("Recommend", "count"), deadline_left("Recommend", "sum")
    below = {le: deadline_left("Recommend", "bucket", le=le) for le in ("0.05", "0.1", "0.125")}

    async def admitted_then_shed() -> None:
        async with admission.permit("Recommend", Deadline(0.12)):  # type: ignore[arg-type]
            with pytest.raises(Overloaded):
                async with admission.permit("Recommend", Deadline(0.04)):  # type: ignore[arg-type]
                    pass
        async with admission.permit("Recommend", NoDeadline()):  # type: ignore[arg-type]
            pass

    asyncio.run(admitted_then_shed())
    assert deadline_left("Recommend", "count") == count + 2  # not the caller without a deadline
    assert deadline_left("Recommend", "sum") == pytest.approx(total + 0.16)
    added = {le: deadline_left("Recommend", "bucket", le=le) - before for le, before in below.items()}
    assert added == {"0.05": 1, "0.1": 1, "0.125": 2}  # 0.04 and 0.12 (cumulative buckets)
