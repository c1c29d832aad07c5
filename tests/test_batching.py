"""Micro-batching: a lone call goes out at once, concurrent ones share a call, failures reach everyone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable

import numpy as np
import pytest

from server.batching import BatchedEncoders, BatchedSearch, Coalescer
from server.domain import Filters, Hit, Hits
from server.errors import DependencyTimeout

pytestmark = pytest.mark.anyio


async def settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(10):
        await asyncio.sleep(0)


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.fail = fail

    async def run(self, key: Hashable, calls: list[int]) -> list[int]:
        self.batches.append(calls)
        await self.release.wait()
        if self.fail:
            raise RuntimeError(f"batch {calls} failed")
        return [call * 10 for call in calls]


async def test_a_lone_call_is_sent_at_once_and_later_ones_wait_and_share_a_call() -> None:
    recorder = Recorder()
    coalescer = Coalescer(recorder.run, "test", max_batch=8, max_in_flight=1)
    first = asyncio.create_task(coalescer.submit("k", 1))
    await settle()
    assert recorder.batches == [[1]]  # sent without waiting for company
    rest = [asyncio.create_task(coalescer.submit("k", n)) for n in (2, 3, 4)]
    await settle()
    assert recorder.batches == [[1]]  # queued behind the call in flight
    recorder.release.set()
    assert await asyncio.gather(first, *rest) == [10, 20, 30, 40]
    assert recorder.batches == [[1], [2, 3, 4]]


async def test_a_call_to_an_idle_dependency_runs_in_its_callers_task() -> None:
    """No batch task for a lone call: at concurrency 1 that task cost ~55 us of CPU and a loop turn per call."""
    tasks: list[asyncio.Task[object] | None] = []

    async def run(key: Hashable, calls: list[int]) -> list[int]:
        tasks.append(asyncio.current_task())
        return calls

    coalescer = Coalescer(run, "test", max_batch=8, max_in_flight=1)
    caller = asyncio.create_task(coalescer.submit("k", 1))
    assert await caller == 1
    assert tasks == [caller]


async def test_different_keys_never_share_a_call_and_batches_respect_max_batch() -> None:
    recorder = Recorder()
    coalescer = Coalescer(recorder.run, "test", max_batch=2, max_in_flight=1)
    calls = [
        asyncio.create_task(coalescer.submit(key, n)) for key, n in [("a", 1), ("b", 2), ("a", 3), ("a", 4), ("a", 5)]
    ]
    await settle()
    recorder.release.set()
    assert await asyncio.gather(*calls) == [10, 20, 30, 40, 50]
    assert all(len(batch) <= 2 for batch in recorder.batches)
    assert sorted(map(sorted, recorder.batches)) == [[1], [2], [3, 4], [5]]


async def test_a_failed_batch_fails_each_of_its_calls_and_a_cancelled_caller_drops_out() -> None:
    recorder = Recorder(fail=True)
    coalescer = Coalescer(recorder.run, "test", max_batch=8, max_in_flight=1)
    first = asyncio.create_task(coalescer.submit("k", 1))
    await settle()
    second, gone = asyncio.create_task(coalescer.submit("k", 2)), asyncio.create_task(coalescer.submit("k", 3))
    await settle()
    gone.cancel()
    recorder.release.set()
    for task in (first, second):
        with pytest.raises(RuntimeError, match="failed"):
            await task
    assert recorder.batches == [[1], [2]]


class FakeSearcher:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        self.timeouts: list[float | None] = []

    async def search(self, collection, vectors, limit, filters=None, output_fields=(), timeout=None):
        self.calls.append((len(vectors), limit))
        self.timeouts.append(timeout)
        await asyncio.sleep(0.01)
        return [Hits.of(Hit(f"{row[0]:.0f}-{i}", float(-i), {}) for i in range(limit)) for row in vectors]


async def test_batched_search_gives_each_caller_its_own_rows_and_limit() -> None:
    searcher = FakeSearcher()
    batched = BatchedSearch(searcher, max_batch=8, max_in_flight=1)
    results = await asyncio.gather(
        *(batched.search("news", np.full((1, 2), n, np.float32), limit=n, filters=Filters()) for n in (1, 2, 3, 4))
    )
    assert [[hit.id for hit in rows[0]] for rows in results] == [
        ["1-0"],
        ["2-0", "2-1"],
        ["3-0", "3-1", "3-2"],
        ["4-0", "4-1", "4-2", "4-3"],
    ]
    assert searcher.calls == [(1, 1), (3, 4)]  # the first alone, then the rest as one nq=3 call


class FakeEncoders:
    def __init__(self) -> None:
        self.user_batches: list[tuple[int, ...]] = []

    async def encode_users(self, history, mask, timeout_s=None):
        self.user_batches.append(history.shape)
        await asyncio.sleep(0.01)
        return (history * mask[..., None]).sum(axis=1)

    async def encode_texts(self, text_field, texts, timeout_s=None):
        return np.array([[len(t)] for t in texts], dtype=np.float32)


async def test_batched_user_encoding_pads_histories_without_changing_answers() -> None:
    encoders = FakeEncoders()
    batched = BatchedEncoders(encoders, max_rows=8, max_in_flight=1)
    lengths = [1, 3, 2]
    calls = [batched.encode_users(np.ones((1, n, 4), np.float32), np.ones((1, n), np.int64)) for n in lengths]
    results = await asyncio.gather(*calls)
    assert [float(r[0, 0]) for r in results] == [1.0, 3.0, 2.0]
    assert encoders.user_batches == [(1, 1, 4), (2, 3, 4)]
    texts = await asyncio.gather(batched.encode_texts("query", ["ab"]), batched.encode_texts("query", ["abcd"]))
    assert [float(t[0, 0]) for t in texts] == [2.0, 4.0]


async def test_a_call_whose_deadline_passes_while_queued_fails_then_and_is_never_sent() -> None:
    recorder = Recorder()
    coalescer = Coalescer(recorder.run, "test", max_batch=8, max_in_flight=1)
    first = asyncio.create_task(coalescer.submit("k", 1))
    await settle()
    with pytest.raises(DependencyTimeout, match="test"):
        await coalescer.submit("k", 2, deadline=time.monotonic() + 0.05)  # queued behind the first
    recorder.release.set()
    assert await first == 10
    await settle()
    assert recorder.batches == [[1]]


async def test_a_call_already_past_its_deadline_is_not_sent_even_to_an_idle_dependency() -> None:
    recorder = Recorder()
    recorder.release.set()
    coalescer = Coalescer(recorder.run, "test", max_batch=8, max_in_flight=1)
    with pytest.raises(DependencyTimeout):
        await coalescer.submit("k", 1, deadline=time.monotonic() - 0.001)
    assert recorder.batches == []


class Held:
    """A batch call that waits until released and records how it ended."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.endings: list[str] = []

    async def run(self, key: Hashable, calls: list[int]) -> list[int]:
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.endings.append("cancelled")
            raise
        self.endings.append("done")
        return calls


async def test_a_batch_in_flight_is_cancelled_once_all_its_callers_have_gone_and_not_before() -> None:
    held = Held()
    coalescer = Coalescer(held.run, "test", max_batch=8, max_in_flight=1)
    alone = asyncio.create_task(coalescer.submit("k", 1))
    await settle()
    alone.cancel()
    await settle()
    assert held.endings == ["cancelled"]
    kept, gone = asyncio.create_task(coalescer.submit("k", 2)), asyncio.create_task(coalescer.submit("k", 3))
    await settle()
    gone.cancel()
    await settle()
    assert held.endings == ["cancelled"]  # the shared call goes on for the caller still waiting
    held.release.set()
    assert await kept == 2
    assert held.endings == ["cancelled", "done"]


async def test_a_batch_runs_until_its_latest_callers_deadline() -> None:
    searcher = FakeSearcher()
    batched = BatchedSearch(searcher, max_batch=8, max_in_flight=1)
    vector = np.zeros((1, 2), np.float32)
    first = asyncio.create_task(batched.search("news", vector, 1, timeout=5.0))
    await settle()
    await asyncio.gather(first, *(batched.search("news", vector, 1, timeout=t) for t in (1.0, 9.0)))
    assert searcher.timeouts[1] is not None and 8.0 < searcher.timeouts[1] <= 9.0
