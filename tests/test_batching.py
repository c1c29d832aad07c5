"""Micro-batching: a lone call goes out at once, concurrent ones share a call, failures reach everyone."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

import numpy as np
import pytest

from server.batching import BatchedEncoders, BatchedSearch, Coalescer
from server.domain import Filters, Hit

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


async def test_different_keys_never_share_a_call_and_batches_respect_max_batch() -> None:
    recorder = Recorder()
    recorder.release.set()
    coalescer = Coalescer(recorder.run, "test", max_batch=2, max_in_flight=1)
    results = await asyncio.gather(
        *(coalescer.submit(key, n) for key, n in [("a", 1), ("b", 2), ("a", 3), ("a", 4), ("a", 5)])
    )
    assert results == [10, 20, 30, 40, 50]
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

    async def search(self, collection, vectors, limit, filters=None, output_fields=(), timeout=None):
        self.calls.append((len(vectors), limit))
        await asyncio.sleep(0.01)
        return [[Hit(f"{row[0]:.0f}-{i}", float(-i), {}) for i in range(limit)] for row in vectors]


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
