"""The gateway end to end against the real stack: Triton (python backend over ONNX), Milvus 2.3.5, the LLM.

Rankings are compared with the same computation done offline with the PyTorch checkpoint.
"""

from __future__ import annotations

import asyncio
import uuid

import grpc
import httpx
import numpy as np
import pytest
import torch
from conftest import FEEDBACK_DIR
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from grpc_serving import listening_sockets
from prometheus_client import REGISTRY

from benchmarks.suite import wait_for_cache_warm
from contract.channel import OWN_CONNECTION_OPTION
from devstack.local import gateway_serving
from devstack.process import free_port
from recstack.v1 import gateway_pb2 as pb
from recstack.v1 import gateway_pb2_grpc
from server.config import GatewaySettings, MilvusSettings, RagSettings
from server.health import CACHE_SERVICE, SERVICE
from server.milvus import MilvusStore
from server.pipeline.search import PassageSearch, QueryVector
from server.requests import RequestValidator
from server.service import GatewayService
from training.checkpoint import Checkpoint
from training.data.build import DatasetPaths
from training.data.feedback import load_feedback_log
from training.data.mind import load_mind_split
from training.data.types import NewsArticle
from training.text import TokenTable, encode_table, text_tokenizer

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def catalog(tiny_data: DatasetPaths) -> dict[str, NewsArticle]:
    return {**load_mind_split(tiny_data.mind_train).news, **load_mind_split(tiny_data.mind_dev).news}


@pytest.fixture(scope="module")
def offline(tiny_models: dict[str, Checkpoint], catalog: dict[str, NewsArticle]):
    """NRMS computed in PyTorch: (news ids, news vectors, user_vector(history rows or titles))."""
    checkpoint = tiny_models["nrms"]
    model = checkpoint.build_model()
    tokenizer = text_tokenizer(checkpoint.tokenizers["title"])
    table = TokenTable.build({news_id: a.title for news_id, a in catalog.items()}, tokenizer)
    vectors = encode_table(model.news_encoder, table)

    def user_vector(history: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model.user_encoder(history[None], torch.ones(1, history.shape[0], dtype=torch.long))[0]

    def encode_titles(titles: list[str]) -> torch.Tensor:
        ids, mask = tokenizer.encode(titles)
        with torch.no_grad():
            return model.news_encoder(torch.from_numpy(ids), torch.from_numpy(mask))

    return table.keys, vectors, user_vector, encode_titles


def top_k(ids: list[str], scores: torch.Tensor, k: int, exclude: set[str]) -> list[tuple[str, float]]:
    order = torch.argsort(scores, descending=True).tolist()
    return [(ids[i], float(scores[i])) for i in order if ids[i] not in exclude][:k]


def assert_same_ranking(items, expected: list[tuple[str, float]]) -> None:
    assert [item.id for item in items] == [news_id for news_id, _ in expected]
    np.testing.assert_allclose([item.score for item in items], [score for _, score in expected], atol=1e-3)


def test_health_reports_serving(stack) -> None:
    with grpc.insecure_channel(stack.gateway_address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE):
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_gateway(stack) -> None:
    with grpc.insecure_channel(stack.gateway_address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert "recstack.v1.Gateway" in database.get_services()
        methods = {m.name for m in database.FindFileContainingSymbol("recstack.v1.Gateway").service[0].method}
        assert {"Recommend", "Search", "Answer", "UpsertItems", "DeleteItems", "LogFeedback"} <= methods


def test_recommend_equals_the_offline_pytorch_ranking(gateway, offline) -> None:
    ids, vectors, user_vector, _ = offline
    history = ids[:5]
    response = gateway.Recommend(
        pb.RecommendRequest(user_id="u1", history=[pb.HistoryItem(id=h) for h in history], k=10), timeout=10
    )
    assert not response.cold_start and response.history_used == 5
    user = user_vector(vectors[:5])
    assert_same_ranking(response.items, top_k(ids, vectors @ user, 10, exclude=set(history)))
    stages = [t.stage for t in response.timings]
    assert {"triton.user_encoder", "milvus.search"} <= set(stages)


def test_clicks_on_a_recommendation_are_logged_as_mind_data(stack, gateway, catalog, offline) -> None:
    ids = offline[0]
    answer = gateway.Recommend(
        pb.RecommendRequest(user_id="u7", history=[pb.HistoryItem(id=h) for h in ids[:3]], k=5), timeout=10
    )
    clicked = answer.items[2].id
    event = pb.FeedbackEvent(impression_id=answer.impression_id, clicked_item_ids=[clicked])
    logged = gateway.LogFeedback(pb.LogFeedbackRequest(events=[event]), timeout=10)
    assert (logged.impressions_logged, logged.clicks_logged) == (1, 1)
    split = load_feedback_log(stack.config.state_dir / FEEDBACK_DIR)
    line = next(imp for imp in split.impressions if imp.impression_id == answer.impression_id)
    assert (line.user_id, line.history, line.candidates) == ("u7", tuple(ids[:3]), tuple(i.id for i in answer.items))
    assert line.labels == tuple(int(i.id == clicked) for i in answer.items)
    assert all(split.news[i].title == catalog[i].title for i in (*ids[:3], clicked))


def test_seen_items_come_back_only_when_asked(gateway, offline) -> None:
    ids, vectors, user_vector, _ = offline
    history = ids[10:40]
    request = pb.RecommendRequest(history=[pb.HistoryItem(id=h) for h in history], k=20, exclude_seen=False)
    response = gateway.Recommend(request, timeout=10)
    assert_same_ranking(response.items, top_k(ids, vectors @ user_vector(vectors[10:40]), 20, exclude=set()))
    excluded = gateway.Recommend(pb.RecommendRequest(history=request.history, k=20), timeout=10)
    assert not {item.id for item in excluded.items} & set(history)


def test_unknown_items_are_encoded_from_their_titles(gateway, offline) -> None:
    ids, vectors, user_vector, encode_titles = offline
    titles = ["Election results spark protests", "Storm hits the coast overnight"]
    history = [pb.HistoryItem(id=ids[0]), *(pb.HistoryItem(id=f"external-{i}", title=t) for i, t in enumerate(titles))]
    response = gateway.Recommend(pb.RecommendRequest(history=history, k=5), timeout=10)
    assert response.history_used == 3
    user = user_vector(torch.cat([vectors[:1], encode_titles(titles)]))
    assert_same_ranking(response.items, top_k(ids, vectors @ user, 5, exclude={ids[0]}))


def test_filters_restrict_categories_and_publication_time(gateway, catalog, offline) -> None:
    ids = offline[0]
    category = max({a.category for a in catalog.values()}, key=lambda c: sum(a.category == c for a in catalog.values()))
    response = gateway.Recommend(
        pb.RecommendRequest(history=[pb.HistoryItem(id=ids[0])], k=50, filters=pb.Filters(categories=[category])),
        timeout=10,
    )
    assert response.items and all(item.category == category for item in response.items)
    times = sorted(int(a.published.timestamp()) for a in catalog.values())
    after = times[len(times) // 2]
    response = gateway.Recommend(
        pb.RecommendRequest(
            history=[pb.HistoryItem(id=ids[0])], k=50, filters=pb.Filters(published_after=Timestamp(seconds=after))
        ),
        timeout=10,
    )
    assert response.items and all(item.published.seconds > after for item in response.items)


def test_cold_start_ranks_popular_recent_items_and_says_so(gateway, catalog) -> None:
    response = gateway.Recommend(pb.RecommendRequest(user_id="new-user", k=10), timeout=10)
    assert response.cold_start and response.history_used == 0
    assert len(response.items) == 10
    scores = [item.score for item in response.items]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    newest = max(a.published.timestamp() for a in catalog.values())
    assert all(item.published.seconds >= newest - 3 * 86_400 for item in response.items)


def test_search_returns_passages_with_scores_in_order(gateway) -> None:
    response = gateway.Search(pb.SearchRequest(query="election results", k=7), timeout=10)
    assert len(response.passages) == 7
    scores = [p.score for p in response.passages]
    assert scores == sorted(scores, reverse=True)
    assert all(p.text and p.doc_id for p in response.passages)
    assert "triton.query_encoder" in [t.stage for t in response.timings]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_upsert_is_immediately_searchable_idempotent_and_deletable(gateway) -> None:
    category = unique("e2e")
    passage = pb.PassageItem(id=unique("P"), text="A freshly written passage.", title="Fresh", category=category)
    only_new = pb.SearchRequest(query="fresh passage", k=5, filters=pb.Filters(categories=[category]))
    for _ in range(2):  # the same write twice is one row
        written = gateway.UpsertItems(pb.UpsertItemsRequest(passages=[passage]), timeout=10)
        assert written.passages_upserted == 1
        assert [p.id for p in gateway.Search(only_new, timeout=10).passages] == [passage.id]
    deleted = gateway.DeleteItems(pb.DeleteItemsRequest(passage_ids=[passage.id]), timeout=10)
    assert deleted.passages_deleted == 1
    assert list(gateway.Search(only_new, timeout=10).passages) == []


def test_upserted_news_is_recommendable_and_usable_as_history_at_once(gateway, offline) -> None:
    category = unique("e2e")
    news = pb.NewsItem(id=unique("N"), title="A story nobody has read yet", category=category, popularity=3)
    assert gateway.UpsertItems(pb.UpsertItemsRequest(news=[news]), timeout=10).news_upserted == 1
    recommended = gateway.Recommend(
        pb.RecommendRequest(history=[pb.HistoryItem(id=offline[0][0])], k=5, filters=pb.Filters(categories=[category])),
        timeout=10,
    )
    assert [item.id for item in recommended.items] == [news.id]
    as_history = gateway.Recommend(pb.RecommendRequest(history=[pb.HistoryItem(id=news.id)], k=3), timeout=10)
    assert as_history.history_used == 1 and not as_history.cold_start
    gateway.DeleteItems(pb.DeleteItemsRequest(news_ids=[news.id]), timeout=10)
    gone = gateway.Recommend(pb.RecommendRequest(history=[pb.HistoryItem(id=news.id)], k=3), timeout=10)
    assert gone.cold_start and gone.history_used == 0  # a deleted id is no longer known


LONG = "x" * 2001

INVALID = [
    ("Search", pb.SearchRequest(query="", k=5), "query"),
    ("Search", pb.SearchRequest(query="   ", k=5), "query"),
    ("Search", pb.SearchRequest(query="ok", k=0), "k"),
    ("Search", pb.SearchRequest(query="ok", k=-3), "k"),
    ("Search", pb.SearchRequest(query="ok", k=101), "k"),
    ("Search", pb.SearchRequest(query=LONG, k=5), "query"),
    ("Search", pb.SearchRequest(query="ok", k=5, filters=pb.Filters(categories=[""])), "filters.categories[0]"),
    ("Search", pb.SearchRequest(query="ok", k=5, filters=pb.Filters(categories=["a\nb"])), "filters.categories[0]"),
    (
        "Search",
        pb.SearchRequest(query="ok", k=5, filters=pb.Filters(published_after=Timestamp(seconds=-5))),
        "filters.published_after",
    ),
    ("Recommend", pb.RecommendRequest(k=0), "k"),
    ("Recommend", pb.RecommendRequest(k=5, diversity=1.5), "diversity"),
    ("Recommend", pb.RecommendRequest(k=5, history=[pb.HistoryItem(id="has space")]), "history[0].id"),
    ("Recommend", pb.RecommendRequest(k=5, history=[pb.HistoryItem(id="N" * 65)]), "history[0].id"),
    ("Recommend", pb.RecommendRequest(k=5, history=[pb.HistoryItem(id="N1")] * 501), "history"),
    ("Recommend", pb.RecommendRequest(k=5, history=[pb.HistoryItem(title=LONG)]), "history[0].title"),
    ("UpsertItems", pb.UpsertItemsRequest(), "news"),
    ("UpsertItems", pb.UpsertItemsRequest(news=[pb.NewsItem(id="", title="t")]), "news[0].id"),
    ("UpsertItems", pb.UpsertItemsRequest(news=[pb.NewsItem(id="N1", title="")]), "news[0].title"),
    ("UpsertItems", pb.UpsertItemsRequest(news=[pb.NewsItem(id="N1", title="t", popularity=-1)]), "news[0].popularity"),
    ("UpsertItems", pb.UpsertItemsRequest(news=[pb.NewsItem(id="N1", title="t")] * 2), "news[1].id"),
    ("UpsertItems", pb.UpsertItemsRequest(passages=[pb.PassageItem(id="P1", text="")]), "passages[0].text"),
    ("UpsertItems", pb.UpsertItemsRequest(passages=[pb.PassageItem(id="P1", text="y" * 8001)]), "passages[0].text"),
    ("UpsertItems", pb.UpsertItemsRequest(news=[pb.NewsItem(id=f"N{i}", title="t") for i in range(1001)]), "news"),
    ("DeleteItems", pb.DeleteItemsRequest(), "news_ids"),
    ("DeleteItems", pb.DeleteItemsRequest(news_ids=[""]), "news_ids[0]"),
]


@pytest.mark.parametrize(("method", "request_message", "field"), INVALID, ids=[f"{m}:{f}" for m, _, f in INVALID])
def test_bad_requests_get_invalid_argument_naming_the_field(gateway, method, request_message, field) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        getattr(gateway, method)(request_message, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"{field}:"), caught.value.details()


def test_a_deadline_too_short_to_serve_ends_at_once_and_is_not_worth_retrying(gateway) -> None:
    """0.5 ms: the deadline passes (DEADLINE_EXCEEDED), or, when the request reaches admission control with a
    little time left and a recent latency is known, it is refused at once as RESOURCE_EXHAUSTED with the
    do-not-retry pushback (-1): a retry within the same deadline cannot succeed either."""
    with pytest.raises(grpc.RpcError) as caught:
        gateway.Search(pb.SearchRequest(query="anything", k=5), timeout=0.0005)
    code = caught.value.code()
    assert code in {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}, code
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        pushback = dict(caught.value.trailing_metadata() or ())
        assert pushback.get("grpc-retry-pushback-ms") == "-1", caught.value.details()


class SlowEncoders:
    """A query encoder that takes `delay_s` whatever timeout it is given; records the timeout and how the
    call ended ("done", or "cancelled" when the gateway stopped waiting for it)."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.timeouts: list[float | None] = []
        self.endings: list[str] = []

    async def encode_texts(self, field: str, texts: list[str], timeout_s: float | None = None) -> np.ndarray:
        self.timeouts.append(timeout_s)
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.endings.append("cancelled")
            raise
        self.endings.append("done")
        return np.zeros((len(texts), 4), np.float32)


SERVER_SIDE_ENDINGS = (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED)


def rpc_count(method: str, code: grpc.StatusCode) -> float:
    """How many `method` RPCs this process's gateway metrics have recorded with `code`."""
    labels = {"method": method, "code": code.name}
    return REGISTRY.get_sample_value("recstack_rpc_seconds_count", labels) or 0.0


@pytest.mark.anyio
async def test_a_deadline_passing_while_the_gateway_works_stops_the_work() -> None:
    """300 ms deadline, 1 s dependency: the client gets DEADLINE_EXCEEDED, and the gateway (here in this
    process, over a slow fake Triton) passed the deadline on, stopped waiting and recorded the RPC."""
    encoders = SlowEncoders(delay_s=1.0)
    search = PassageSearch(QueryVector(encoders), None, "passages")  # the store is never reached
    service = GatewayService(
        RequestValidator(GatewaySettings()),
        recommender=None,  # Search uses only the validator and the search pipeline
        search=search,
        ingest=None,
        answerer=None,
        rag=RagSettings(),
        request_timeout_s=10.0,
        answer_timeout_s=10.0,
    )
    server = grpc.aio.server()
    gateway_pb2_grpc.add_GatewayServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    ended_before = {code: rpc_count("Search", code) for code in SERVER_SIDE_ENDINGS}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await gateway_pb2_grpc.GatewayStub(channel).Search(pb.SearchRequest(query="slow", k=5), timeout=0.3)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        async with asyncio.timeout(0.5):  # well before the dependency's own 1 s
            while not encoders.endings:
                await asyncio.sleep(0.01)
    finally:
        await server.stop(grace=None)
    assert encoders.endings == ["cancelled"]
    (timeout,) = encoders.timeouts
    # The caller's deadline, not the 10 s cap. The gateway sees it as the wire timeout added to its own clock, and
    # the wire form is rounded up, so the remainder may exceed 0.3 s by a hair (0.300125 s in one CI run).
    assert timeout is not None and timeout < 0.35
    ended = {code: rpc_count("Search", code) - before for code, before in ended_before.items()}
    assert sum(ended.values()) == 1, ended


def test_prometheus_metrics_count_rpcs_and_stages(gateway, stack) -> None:
    gateway.Search(pb.SearchRequest(query="metrics", k=3), timeout=10)
    text = httpx.get(stack.metrics_url, timeout=5).text
    assert 'recstack_rpc_seconds_count{code="OK",method="Search"}' in text
    assert 'recstack_stage_seconds_count{stage="milvus.search"}' in text


def test_the_cache_warm_up_is_reported_by_metrics_and_the_cache_health_service(stack) -> None:
    outcome = wait_for_cache_warm(stack.metrics_url, timeout_s=60)
    assert outcome["event"] == "cache_warm" and not outcome["failed"] and outcome["seconds"] >= 0
    assert gateway_serving(stack.gateway_address, CACHE_SERVICE)


def test_an_upserted_abstract_is_stored_with_the_news_item(gateway, stack) -> None:
    news = pb.NewsItem(id=unique("N"), title="Abstracts are kept", abstract="What the story says, ünïcode included.")
    assert gateway.UpsertItems(pb.UpsertItemsRequest(news=[news]), timeout=10).news_upserted == 1

    async def stored_abstract() -> str:
        async with MilvusStore(MilvusSettings(uri=stack.milvus.uri)) as store:
            rows = await store.get(MilvusSettings().news_collection, [news.id], ["abstract"])
        return rows[news.id]["abstract"]

    assert asyncio.run(stored_abstract()) == news.abstract
    gateway.DeleteItems(pb.DeleteItemsRequest(news_ids=[news.id]), timeout=10)


@pytest.fixture(scope="module")
def one_rpc_gateway(stack, tmp_path_factory):
    """A second gateway on the same Triton/Milvus/LLM, configured for one RPC at a time."""
    port = free_port()
    log = tmp_path_factory.mktemp("limited") / "gateway.log"
    process = stack.gateway_process("gateway-limited", port, log, {"RECSTACK_GATEWAY__MAX_CONCURRENT_RPCS": "1"})
    with process, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield gateway_pb2_grpc.GatewayStub(channel)


def test_over_the_concurrency_limit_is_resource_exhausted(one_rpc_gateway) -> None:
    holding = one_rpc_gateway.Answer(
        pb.AnswerRequest(question="What happened?", max_tokens=1024, temperature=2.0), timeout=60
    )
    next(holding)  # the sources: the Answer is now in flight and holds the only slot
    try:
        with pytest.raises(grpc.RpcError) as caught:
            one_rpc_gateway.Search(pb.SearchRequest(query="markets", k=3), timeout=5)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        holding.cancel()


def test_listeners_share_the_port_and_each_serves_the_same_answers(stack, offline, tmp_path) -> None:
    """`gateway.listeners: 3`: three gRPC servers of the one process listen on its port; Recommends on separate
    connections (spread over them by the kernel) get the same answer from any."""
    ids = offline[0]
    request = pb.RecommendRequest(history=[pb.HistoryItem(id=h) for h in ids[5:20]], k=5)
    port = free_port()
    listening = stack.gateway_process(
        "gateway-listeners", port, tmp_path / "gateway.log", {"RECSTACK_GATEWAY__LISTENERS": "3"}
    )
    with listening:
        assert listening_sockets(port) == 3
        answers = set()
        for _ in range(9):
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=[(OWN_CONNECTION_OPTION, 1)]) as channel:
                response = gateway_pb2_grpc.GatewayStub(channel).Recommend(request, timeout=10)
            answers.add(tuple(item.id for item in response.items))
        assert len(answers) == 1 and len(next(iter(answers))) == 5
