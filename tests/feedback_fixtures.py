"""A gateway serving Recommend and LogFeedback over fakes (exact search over gateway_fixtures.NEWS, a user
encoder that averages the history), writing a real feedback log; in process, or as a subprocess
(`python tests/feedback_fixtures.py LOG_DIR`, with the repository, proto/ and tests/ on PYTHONPATH, prints
`port N` when serving) for the crash tests."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
from gateway_fixtures import NEWS, NewsIndex, recommend_service

from recstack.v1 import gateway_pb2_grpc
from server.config import FeedbackSettings
from server.feedback import FeedbackRecorder
from server.item_cache import CachedNews, ItemCache
from server.pipeline.recommend import (
    AnnCandidates,
    CatalogView,
    HistoryVectors,
    Recommender,
    UserVector,
)
from server.pipeline.recommend import personal_stages as personal
from server.service import GatewayService

TITLES = {"a": "Markets rally", "b": "Cup final\ttonight", "c": "Rates on hold"}


class MeanUserEncoder:
    """The user vector is the mean of the history's vectors."""

    async def encode_users(self, history: np.ndarray, mask: np.ndarray, timeout_s: float | None = None) -> np.ndarray:
        return history.mean(axis=1)

    async def encode_texts(self, text_field: str, texts: list[str], timeout_s: float | None = None) -> np.ndarray:
        return np.ones((len(texts), 4), np.float32)


def feedback_service(log_dir: Path, **settings: float) -> GatewayService:
    """Recommend (personal ranking only: requests need a history) and LogFeedback writing under `log_dir`."""
    cache = ItemCache(100, 600)
    cache.store({item: CachedNews(vector, TITLES[item], "news", 1) for item, vector in NEWS.items()})
    catalog = CatalogView(cache, None, "news")  # every id is in memory: Milvus get is never called
    encoder = MeanUserEncoder()
    recommender = Recommender(
        HistoryVectors(catalog, encoder, max_history=10),
        UserVector(encoder),
        personal(AnnCandidates(NewsIndex(), catalog)),
        [],
    )
    return recommend_service(
        recommender, feedback=FeedbackRecorder.from_settings(FeedbackSettings(log_dir=log_dir, **settings))
    )


@contextlib.asynccontextmanager
async def serving(log_dir: Path, **settings: float) -> AsyncIterator[int]:
    """The feedback gateway on a free loopback port, which is yielded."""
    server = grpc.aio.server()
    gateway_pb2_grpc.add_GatewayServicer_to_server(feedback_service(log_dir, **settings), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(grace=None)


async def serve_forever(log_dir: Path) -> None:
    async with serving(log_dir) as port:
        print(f"port {port}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve_forever(Path(sys.argv[1])))
