"""No work for requests whose callers have given up: Recommend over an in-process gRPC gateway whose
Triton user encoder (a gated fake) and Milvus search (a fake) sit behind the coalescers, as in the
gateway. Functional, not timed: the fake calls wait until a test releases them."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from gateway_fixtures import (
    GatedUserEncoder,
    calls_since,
    dependency_calls,
    gateway,
    ids,
    recommend,
    rpcs_ended,
    rpcs_in_flight,
    until,
)

pytestmark = pytest.mark.anyio


async def queued_behind(encoder: GatedUserEncoder, in_flight_rpcs: float) -> None:
    """Wait until `in_flight_rpcs` Recommends are being served (the later ones queued behind the first
    user encoder call, which the test holds), and let them settle."""
    await until(lambda: rpcs_in_flight() >= in_flight_rpcs and len(encoder.batches) == 1)
    await asyncio.sleep(0.05)


async def test_a_request_cancelled_while_queued_is_not_sent_and_the_live_one_is_served() -> None:
    async with gateway() as gw:
        before, cancelled_before = dependency_calls(), rpcs_ended(grpc.StatusCode.CANCELLED)
        live = recommend(gw.stub)
        await until(lambda: len(gw.encoder.batches) == 1)
        gone = recommend(gw.stub)
        await queued_behind(gw.encoder, 2)
        gone.cancel()
        await until(lambda: rpcs_ended(grpc.StatusCode.CANCELLED) == cancelled_before + 1)
        gw.encoder.release(0)
        assert ids(await live) == ["c", "b"]
        await asyncio.sleep(0.05)  # a second encoder call would start now
    assert gw.encoder.batches == [1]  # the cancelled request's row never went out
    assert gw.index.searches == [1]
    assert calls_since(before) == {("triton", "ok"): 1, ("milvus", "ok"): 1}


async def test_a_deadline_passing_while_queued_is_deadline_exceeded_without_a_call() -> None:
    async with gateway() as gw:
        before = dependency_calls()
        live = recommend(gw.stub)
        await until(lambda: len(gw.encoder.batches) == 1)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await recommend(gw.stub, timeout=0.3)  # queued behind the call the test holds
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        gw.encoder.release(0)
        assert ids(await live) == ["c", "b"]
        await asyncio.sleep(0.05)  # a second encoder call would start now
    assert gw.encoder.batches == [1]
    assert gw.index.searches == [1]
    assert calls_since(before) == {("triton", "ok"): 1, ("milvus", "ok"): 1}


async def test_the_gateways_own_deadline_passing_stops_queued_and_in_flight_calls() -> None:
    """The gateway's request deadline (0.3 s), shorter than the client's: the first request's call is held
    in flight past it, the second's row waits in the queue past it; both end DEADLINE_EXCEEDED."""
    async with gateway(request_timeout_s=0.3) as gw:
        before = dependency_calls()
        first = recommend(gw.stub)
        await until(lambda: len(gw.encoder.batches) == 1)
        second = recommend(gw.stub)
        for call in (first, second):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.sleep(0.05)
    assert gw.encoder.endings[0] == "cancelled"  # the call in flight stopped when its only caller gave up
    assert gw.index.searches == []
    calls = calls_since(before)
    assert set(calls) == {("triton", "wasted")}  # the second row went out only if it still had time left
    assert calls[("triton", "wasted")] == len(gw.encoder.batches)


async def test_a_client_cancelling_while_its_call_is_in_flight_stops_the_call_and_starts_no_other() -> None:
    async with gateway() as gw:
        before = dependency_calls()
        gone = recommend(gw.stub)
        await until(lambda: len(gw.encoder.batches) == 1)
        gone.cancel()
        await until(lambda: bool(gw.encoder.endings))
        await asyncio.sleep(0.05)
    assert gw.encoder.endings == ["cancelled"]
    assert gw.index.searches == []
    assert calls_since(before) == {("triton", "wasted"): 1}


async def test_live_requests_sharing_a_batch_with_a_cancelled_one_get_their_results() -> None:
    async with gateway() as gw:
        before, cancelled_before = dependency_calls(), rpcs_ended(grpc.StatusCode.CANCELLED)
        first = recommend(gw.stub)
        await until(lambda: len(gw.encoder.batches) == 1)
        second, gone = recommend(gw.stub), recommend(gw.stub)
        await queued_behind(gw.encoder, 3)
        gw.encoder.release(0)
        await until(lambda: len(gw.encoder.batches) == 2)
        assert gw.encoder.batches == [1, 2]  # the queued two went out together
        gone.cancel()
        await until(lambda: rpcs_ended(grpc.StatusCode.CANCELLED) == cancelled_before + 1)
        gw.encoder.release(1)
        assert ids(await first) == ids(await second) == ["c", "b"]
    assert gw.encoder.endings == ["done", "done"]  # the shared call went on for the live request
    assert sum(gw.index.searches) == 2
    assert calls_since(before) == {("triton", "ok"): 2, ("triton", "wasted"): 1, ("milvus", "ok"): 2}
