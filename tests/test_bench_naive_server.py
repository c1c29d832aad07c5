"""The naive baseline server with tiny random-init checkpoints: its answers equal NumPy computations from
the same models, it validates like the gateway, and the load generator runs cleanly against it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import grpc
import numpy as np
import pytest
import torch
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_serving import over_grpc
from prometheus_client import REGISTRY

from benchmarks.loadgen import LoadConfig, run_load
from benchmarks.naive_server import (
    SYNTHETIC_EPOCH,
    NaiveGateway,
    NaiveModels,
    NaiveServerConfig,
    build_gateway,
    naive_server_process,
    synthetic_vectors,
)
from benchmarks.serving import start_server
from benchmarks.workload import SYNTHETIC_CATEGORIES, load_catalog, synthetic_ids
from devstack.process import free_port
from recstack.v1 import gateway_pb2 as pb
from recstack.v1 import gateway_pb2_grpc as pb_grpc
from training.checkpoint import Checkpoint
from training.config import NRMSModelConfig, NRMSRunConfig, TwoTowerModelConfig, TwoTowerRunConfig
from training.data.build import DatasetPaths
from training.data.mind import write_news
from training.data.msmarco import write_collection, write_passage_meta
from training.data.types import NewsArticle, PassageMeta
from training.models.nrms import NRMS
from training.models.two_tower import TwoTower
from training.text import minilm_ref, text_tokenizer

ITEMS = 300
SEED = 5
T = TypeVar("T")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Tiny random-init NRMS (news_dim 8) and two-tower (word_dim 8) checkpoints on MiniLM's vocabulary."""
    base = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    nrms_config = NRMSModelConfig(
        word_dim=16, heads=2, head_dim=4, attention_hidden=8, pretrained_embeddings=False, max_title_tokens=16
    )
    nrms = Checkpoint(
        run=NRMSRunConfig(model=nrms_config),
        state_dict=NRMS(nrms_config).state_dict(),
        tokenizers={"title": minilm_ref(16)},
    )
    tower_config = TwoTowerModelConfig(
        word_dim=8, hidden_dim=16, heads=2, pretrained_embeddings=False, max_query_tokens=16
    )
    tower = Checkpoint(
        run=TwoTowerRunConfig(model=tower_config),
        state_dict=TwoTower(tower_config).state_dict(),
        tokenizers={"query": minilm_ref(16), "passage": minilm_ref(32)},
    )
    return nrms.save(base / "nrms.pt"), tower.save(base / "two_tower.pt")


@pytest.fixture(scope="module")
def models(checkpoints: tuple[Path, Path]) -> NaiveModels:
    return NaiveModels.load(*checkpoints)


@pytest.fixture
def gateway(models: NaiveModels) -> NaiveGateway:
    gateway = NaiveGateway(models)
    gateway.fill_synthetic(ITEMS, seed=SEED)
    return gateway


def status_of(gateway: NaiveGateway, call: Callable[[pb_grpc.GatewayStub], Awaitable[object]]) -> grpc.RpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        over_grpc(gateway, call)
    return raised.value


def expected_top(vectors: np.ndarray, query: np.ndarray, k: int, keep: np.ndarray) -> list[int]:
    """Rows of the k highest inner products among rows where `keep` is true, computed here in NumPy."""
    scores = vectors @ query
    rows = np.flatnonzero(keep)
    return rows[np.argsort(-scores[rows])][:k].tolist()


# ------------------------------------------------------------------------------ Recommend


def test_recommend_equals_the_model_and_a_numpy_brute_force(gateway: NaiveGateway, models: NaiveModels):
    news = synthetic_vectors(ITEMS, models.news_dim, SEED, unit=False)
    ids = synthetic_ids("news", ITEMS)
    history = [7, 150, 42, 3]
    request = pb.RecommendRequest(user_id="u", history=[pb.HistoryItem(id=ids[r]) for r in history], k=10)
    response = over_grpc(gateway, lambda stub: stub.Recommend(request, timeout=10))

    with torch.no_grad():
        user = models.nrms.user_encoder(torch.from_numpy(news[history])[None], torch.ones(1, 4))[0].numpy()
    keep = np.ones(ITEMS, dtype=bool)
    keep[history] = False
    top = expected_top(news, user, 10, keep)
    assert [item.id for item in response.items] == [ids[r] for r in top]
    assert [item.score for item in response.items] == pytest.approx((news[top] @ user).tolist(), rel=1e-4)
    assert response.history_used == 4 and not response.cold_start
    assert [t.stage for t in response.timings] == ["lookup.history", "torch.user_encoder", "numpy.brute_force"]


def test_recommend_filters_mask_categories_and_publication_time(gateway: NaiveGateway, models: NaiveModels):
    news = synthetic_vectors(ITEMS, models.news_dim, SEED, unit=False)
    ids = synthetic_ids("news", ITEMS)
    cutoff = 200  # rows published strictly after SYNTHETIC_EPOCH + 200
    filters = pb.Filters(categories=["cat1", "cat3"], published_after=Timestamp(seconds=SYNTHETIC_EPOCH + cutoff))
    request = pb.RecommendRequest(history=[pb.HistoryItem(id=ids[9])], k=5, filters=filters, exclude_seen=False)
    response = over_grpc(gateway, lambda stub: stub.Recommend(request, timeout=10))

    rows = np.arange(ITEMS)
    keep = np.isin(rows % SYNTHETIC_CATEGORIES, [1, 3]) & (rows > cutoff)
    with torch.no_grad():
        user = models.nrms.user_encoder(torch.from_numpy(news[[9]])[None], torch.ones(1, 1))[0].numpy()
    assert [item.id for item in response.items] == [ids[r] for r in expected_top(news, user, 5, keep)]
    assert {item.category for item in response.items} <= {"cat1", "cat3"}


def test_recommend_without_usable_history_is_the_cold_start_vector(gateway: NaiveGateway, models: NaiveModels):
    request = pb.RecommendRequest(history=[pb.HistoryItem(id="unknown")], k=3)
    response = over_grpc(gateway, lambda stub: stub.Recommend(request, timeout=10))
    assert response.cold_start and response.history_used == 0
    assert len(response.items) == 3


def test_recommend_encodes_the_title_of_an_unknown_history_item(gateway: NaiveGateway):
    request = pb.RecommendRequest(history=[pb.HistoryItem(id="fresh", title="markets fall after the election")], k=3)
    response = over_grpc(gateway, lambda stub: stub.Recommend(request, timeout=10))
    assert response.history_used == 1 and not response.cold_start
    assert "torch.news_encoder" in [t.stage for t in response.timings]


@pytest.mark.parametrize(
    ("request_message", "field"),
    [(pb.RecommendRequest(k=0), "k"), (pb.RecommendRequest(k=5, diversity=2.0), "diversity")],
)
def test_recommend_validates_like_the_gateway(gateway: NaiveGateway, request_message: pb.RecommendRequest, field: str):
    error = status_of(gateway, lambda stub: stub.Recommend(request_message, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(f"{field}:")


def unimplemented_recommends() -> float:
    labels = {"method": "Recommend", "code": "UNIMPLEMENTED"}
    return REGISTRY.get_sample_value("recstack_rpc_seconds_count", labels) or 0.0


def test_unsupported_features_are_unimplemented_not_ignored(gateway: NaiveGateway):
    diverse = pb.RecommendRequest(k=5, diversity=0.5)
    recorded_before = unimplemented_recommends()
    assert status_of(gateway, lambda stub: stub.Recommend(diverse, timeout=10)).code() == grpc.StatusCode.UNIMPLEMENTED
    assert unimplemented_recommends() == recorded_before + 1  # the aborted RPC is measured with its code, not OK

    async def answer(stub: pb_grpc.GatewayStub) -> list[pb.AnswerChunk]:
        return [chunk async for chunk in stub.Answer(pb.AnswerRequest(question="why"), timeout=10)]

    assert status_of(gateway, answer).code() == grpc.StatusCode.UNIMPLEMENTED


# ------------------------------------------------------------------------------ Search and UpsertItems


def test_search_equals_the_query_tower_and_a_numpy_brute_force(gateway: NaiveGateway, models: NaiveModels):
    passages = synthetic_vectors(ITEMS, models.passage_dim, SEED + 1, unit=True)
    request = pb.SearchRequest(query="storm damage in the city", k=8)
    response = over_grpc(gateway, lambda stub: stub.Search(request, timeout=10))

    ids, mask = text_tokenizer(minilm_ref(16)).encode([request.query])
    with torch.no_grad():
        query = models.two_tower.query_tower(torch.from_numpy(ids), torch.from_numpy(mask))[0].numpy()
    top = expected_top(passages, query, 8, np.ones(ITEMS, dtype=bool))
    assert [p.id for p in response.passages] == [synthetic_ids("passage", ITEMS)[r] for r in top]
    assert [p.score for p in response.passages] == pytest.approx((passages[top] @ query).tolist(), abs=1e-5)


def test_search_rejects_an_empty_query(gateway: NaiveGateway):
    error = status_of(gateway, lambda stub: stub.Search(pb.SearchRequest(query=" ", k=3), timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_upserted_items_are_encoded_and_idempotent(gateway: NaiveGateway, models: NaiveModels):
    news = pb.NewsItem(id="fresh", title="a brand new story", category="cat9")
    passage = pb.PassageItem(id="p-fresh", text="a passage about a brand new story", category="cat9")
    request = pb.UpsertItemsRequest(news=[news], passages=[passage])

    async def upsert_twice(stub: pb_grpc.GatewayStub) -> pb.UpsertItemsResponse:
        await stub.UpsertItems(request, timeout=10)
        return await stub.UpsertItems(request, timeout=10)

    response = over_grpc(gateway, upsert_twice)
    assert (response.news_upserted, response.passages_upserted) == (1, 1)
    assert (len(gateway.news), len(gateway.passages)) == (ITEMS + 1, ITEMS + 1)
    stored = gateway.news.vector(gateway.news.row("fresh"))
    np.testing.assert_allclose(stored, models.encode_titles([news.title])[0], rtol=1e-5)
    only_new = pb.SearchRequest(query="brand new", k=5, filters=pb.Filters(categories=["cat9"]))
    found = over_grpc(gateway, lambda stub: stub.Search(only_new, timeout=10))
    assert [(p.id, p.text) for p in found.passages] == [("p-fresh", passage.text)]


def test_the_catalog_grows_past_its_initial_capacity(models: NaiveModels):
    gateway = NaiveGateway(models)
    gateway.fill_synthetic(3000, seed=1)  # beyond the 1024 preallocated rows
    assert len(gateway.news) == 3000
    np.testing.assert_array_equal(
        gateway.news.vector(2999), synthetic_vectors(3000, models.news_dim, 1, unit=False)[2999]
    )


def test_demo_catalog_loads_from_the_data_files(checkpoints: tuple[Path, Path], tmp_path: Path):
    published = datetime(2017, 2, 1)
    articles = [NewsArticle(f"N{i}", "sports", "football", f"match report {i}", published=published) for i in range(5)]
    write_news(tmp_path / "mind" / "dev" / "news.tsv", articles)
    msmarco = tmp_path / "msmarco"
    write_collection(msmarco / "collection.tsv", {"P1_0": "the final score was two to one", "P2_0": "rain"})
    write_passage_meta(msmarco / "passage_meta.tsv", {"P1_0": PassageMeta("D1", "Final", "sports", published)})
    nrms, two_tower = checkpoints
    gateway = build_gateway(NaiveServerConfig(nrms=nrms, two_tower=two_tower, data_dir=tmp_path))
    assert (len(gateway.news), len(gateway.passages)) == (5, 2)
    request = pb.SearchRequest(query="score", k=1, filters=pb.Filters(categories=["sports"]))
    (passage,) = over_grpc(gateway, lambda stub: stub.Search(request, timeout=10)).passages
    assert (passage.id, passage.doc_id, passage.title) == ("P1_0", "D1", "Final")


def test_the_data_builders_catalog_loads(checkpoints: tuple[Path, Path], tiny_data: DatasetPaths):
    nrms, two_tower = checkpoints
    gateway = build_gateway(NaiveServerConfig(nrms=nrms, two_tower=two_tower, data_dir=tiny_data.root))
    catalog = load_catalog(tiny_data.root)
    assert (len(gateway.news), len(gateway.passages)) == (len(catalog.news), len(catalog.passages))
    response = over_grpc(gateway, lambda stub: stub.Search(pb.SearchRequest(query="election", k=3), timeout=10))
    assert len(response.passages) == 3


# ------------------------------------------------------------------------------ under load


def test_load_generator_runs_cleanly_against_it(gateway: NaiveGateway):
    async def scenario() -> dict:
        server, port = await start_server(gateway)
        try:
            config = LoadConfig(
                target=f"127.0.0.1:{port}",
                mix={"recommend": 2.0, "search": 1.0, "upsert": 1.0},
                concurrency=4,
                duration_s=2.0,
                warmup_s=0.2,
                synthetic_items=ITEMS,
                deadline_ms=5000,
            )
            return (await run_load(config)).to_dict()
        finally:
            await server.stop(0)

    result = asyncio.run(scenario())
    assert result["ok"] > 0
    assert result["errors"] == {}
    assert {"torch.user_encoder", "torch.query_encoder", "numpy.brute_force"} <= set(result["stages"])


@pytest.mark.slow
def test_subprocess_serves_and_stops(checkpoints: tuple[Path, Path], tmp_path: Path):
    nrms, two_tower = checkpoints
    config = NaiveServerConfig(nrms=nrms, two_tower=two_tower, synthetic_items=100, port=free_port())
    log = tmp_path / "naive.log"
    with naive_server_process(config, log, startup_timeout_s=120) as process:
        with grpc.insecure_channel(f"127.0.0.1:{config.port}") as channel:
            request = pb.RecommendRequest(history=[pb.HistoryItem(id=synthetic_ids("news", 1)[0])], k=3)
            response = pb_grpc.GatewayStub(channel).Recommend(request, timeout=10)
        assert len(response.items) == 3
    assert not process.running()
    assert "ready 127.0.0.1:" in log.read_text()
