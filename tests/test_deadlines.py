"""No work for requests whose callers have given up: Recommend over an in-process gRPC gateway whose
Triton user encoder (a gated fake) and Milvus search (a fake) sit behind the coalescers, as in the
gateway. Functional, not timed: the fake calls wait until a test releases them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY

from recstack.v1 import gateway_pb2 as pb
from recstack.v1 import gateway_pb2_grpc
from server.batching import BatchedEncoders, BatchedSearch
from server.config import GatewaySettings, RagSettings
from server.domain import Hit
from server.item_cache import CachedNews, ItemCache
from server.pipeline.common import CatalogClock
from server.pipeline.recommend import (
    AnnCandidates,
    CatalogView,
    ColdStart,
    HistoryVectors,
    Recommender,
    UserVector,
    personal_stages,
)
from server.requests import RequestValidator
from server.service import GatewayService

pytestmark = pytest.mark.anyio

NEWS = {
    "a": np.array([1, 0, 0, 0], np.float32),
    "b": np.array([0, 1, 0, 0], np.float32),
    "c": np.array([0.9, 0.1, 0, 0], np.float32),
}


class GatedUserEncoder:
    """Triton's user encoder: each call waits until the test releases it; records the rows it carried
    and how it ended ("done", or "cancelled" when the gateway stopped it)."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.endings: list[str] = []
        self._gates: list[asyncio.Event] = []

    async def encode_users(self, history: np.ndarray, mask: np.ndarray, timeout_s: float | None = None) -> np.ndarray:
        self.batches.append(len(history))
        gate = asyncio.Event()
        self._gates.append(gate)
        try:
            await gate.wait()
        except asyncio.CancelledError:
            self.endings.append("cancelled")
            raise
        self.endings.append("done")
        return history.mean(axis=1)

    async def encode_texts(self, text_field: str, texts: list[str], timeout_s: float | None = None) -> np.ndarray:
        raise AssertionError("every history item is in the catalog")

    def release(self, call: int) -> None:
        self._gates[call].set()


@dataclass
class NewsIndex:
    """Milvus's news search: exact inner product over NEWS; records the number of query rows per call."""

    searches: list[int] = field(default_factory=list)

    async def search(self, collection, vectors, limit, filters=None, output_fields=(), timeout=None) -> list[list[Hit]]:
        self.searches.append(len(vectors))
        ranked = sorted(NEWS, key=lambda item: -float(NEWS[item] @ vectors[0]))
        return [[Hit(item, float(NEWS[item] @ row), {}) for item in ranked[:limit]] for row in vectors]


@dataclass
class Gateway:
    stub: gateway_pb2_grpc.GatewayStub
    encoder: GatedUserEncoder
    index: NewsIndex


@contextlib.asynccontextmanager
async def gateway(request_timeout_s: float = 10.0) -> AsyncIterator[Gateway]:
    """A gateway serving Recommend in this process; one Triton and one Milvus call in flight at a time."""
    encoder, index = GatedUserEncoder(), NewsIndex()
    cache = ItemCache(100, 600)
    cache.store({item: CachedNews(vector, item, "news", 1) for item, vector in NEWS.items()})
    catalog = CatalogView(cache, None, "news")  # every id is in memory: Milvus get is never called
    recommender = Recommender(
        HistoryVectors(catalog, encoder, max_history=10),
        UserVector(BatchedEncoders(encoder, max_rows=8, max_in_flight=1)),
        personal_stages(AnnCandidates(BatchedSearch(index, max_batch=8, max_in_flight=1), catalog)),
        [ColdStart(None, "news", CatalogClock(), window_days=1, pool=10)],
    )
    service = GatewayService(
        RequestValidator(GatewaySettings()),
        recommender,
        search=None,
        ingest=None,
        answerer=None,
        rag=RagSettings(),
        request_timeout_s=request_timeout_s,
        answer_timeout_s=request_timeout_s,
    )
    server = grpc.aio.server()
    gateway_pb2_grpc.add_GatewayServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Gateway(gateway_pb2_grpc.GatewayStub(channel), encoder, index)
    finally:
        await server.stop(grace=None)


def recommend(stub: gateway_pb2_grpc.GatewayStub, timeout: float = 10.0) -> grpc.aio.UnaryUnaryCall:
    return stub.Recommend(pb.RecommendRequest(history=[pb.HistoryItem(id="a")], k=2), timeout=timeout)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def rpcs_ended(code: grpc.StatusCode) -> float:
    return sample("recstack_rpc_seconds_count", method="Recommend", code=code.name)


def rpcs_in_flight() -> float:
    return sample("recstack_inflight_rpcs", method="Recommend")


def dependency_calls() -> dict[tuple[str, str], float]:
    return {
        (dependency, outcome): sample("recstack_dependency_calls_total", dependency=dependency, outcome=outcome)
        for dependency in ("triton", "milvus")
        for outcome in ("ok", "wasted")
    }


def calls_since(before: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    return {key: count - before[key] for key, count in dependency_calls().items() if count != before[key]}


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.005)


async def queued_behind(encoder: GatedUserEncoder, in_flight_rpcs: float) -> None:
    """Wait until `in_flight_rpcs` Recommends are being served (the later ones queued behind the first
    user encoder call, which the test holds), and let them settle."""
    await until(lambda: rpcs_in_flight() >= in_flight_rpcs and len(encoder.batches) == 1)
    await asyncio.sleep(0.05)


def ids(response: pb.RecommendResponse) -> list[str]:
    return [item.id for item in response.items]


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
