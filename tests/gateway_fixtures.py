"""An in-process gRPC gateway serving Recommend over fakes: Triton's user encoder is gated (each call waits
until the test releases it) and Milvus search is exact, both behind the coalescers, as in the gateway.
Shared by the functional tests of deadlines and admission control."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
import numpy as np
from prometheus_client import REGISTRY

from recstack.v1 import gateway_pb2 as pb
from recstack.v1 import gateway_pb2_grpc
from server.admission import Admission
from server.batching import BatchedEncoders, BatchedSearch
from server.config import GatewaySettings, RagSettings
from server.domain import Hit, Hits
from server.feedback import FeedbackRecorder
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

    async def search(self, collection, vectors, limit, filters=None, output_fields=(), timeout=None) -> list[Hits]:
        self.searches.append(len(vectors))
        ranked = sorted(NEWS, key=lambda item: -float(NEWS[item] @ vectors[0]))
        return [Hits.of(Hit(item, float(NEWS[item] @ row), {}) for item in ranked[:limit]) for row in vectors]


@dataclass
class Gateway:
    stub: gateway_pb2_grpc.GatewayStub
    encoder: GatedUserEncoder
    index: NewsIndex


def recommend_service(
    recommender: Recommender,
    request_timeout_s: float = 10.0,
    admission: Admission | None = None,
    feedback: FeedbackRecorder | None = None,
) -> GatewayService:
    """A GatewayService with Recommend (and LogFeedback, given `feedback`) wired; the other RPCs have nothing."""
    return GatewayService(
        RequestValidator(GatewaySettings()),
        recommender,
        search=None,
        ingest=None,
        answerer=None,
        rag=RagSettings(),
        request_timeout_s=request_timeout_s,
        answer_timeout_s=request_timeout_s,
        admission=admission,
        feedback=feedback,
    )


@contextlib.asynccontextmanager
async def gateway(request_timeout_s: float = 10.0, admission: Admission | None = None) -> AsyncIterator[Gateway]:
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
    service = recommend_service(recommender, request_timeout_s, admission=admission)
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


def ids(response: pb.RecommendResponse) -> list[str]:
    return [item.id for item in response.items]
