"""Each gateway pipeline stage on its own, with in-memory fakes for Triton, Milvus and the LLM."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from recstack.v1 import gateway_pb2 as pb
from server.config import GatewaySettings, RagSettings
from server.domain import AnswerQuery, Filters, HistoryEntry, Hit, Hits, NewsRecord, RecommendQuery
from server.errors import DependencyTimeout
from server.item_cache import CachedNews, ItemCache, NewsBatch
from server.llm.prompt import NO_SOURCES_ANSWER
from server.llm.types import GenerationRequest, TokenChunk
from server.pipeline.answer import Answerer, Done, Sources, Token
from server.pipeline.common import CatalogClock, Item, RequestContext
from server.pipeline.ingest import Ingest
from server.pipeline.recommend import (
    AnnCandidates,
    Candidates,
    CatalogView,
    ColdStart,
    ExcludeSeen,
    HistoryVectors,
    MmrOrder,
    Recommender,
    RecommendState,
    Timed,
    UserVector,
    personal_stages,
)
from server.pipeline.search import PassageSearch, QueryVector
from server.requests import RequestValidator
from server.service import answer_chunk

pytestmark = pytest.mark.anyio
DIM = 4


@dataclass
class FakeStore:
    """Rows per collection; search is exact inner product with category/published filters."""

    rows: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    calls: list[tuple[str, Any]] = field(default_factory=list)

    def matches(self, row: dict[str, Any], filters: Filters | None) -> bool:
        if filters is None:
            return True
        if filters.categories and row.get("category") not in filters.categories:
            return False
        return filters.published_after is None or row.get("published", 0) > filters.published_after

    async def search(self, collection, vectors, limit, filters=None, output_fields=(), timeout=None):
        self.calls.append(("search", limit))
        rows = [r for r in self.rows.get(collection, {}).values() if self.matches(r, filters)]
        hits = sorted(((float(r["vector"] @ vectors[0]), r) for r in rows), key=lambda t: -t[0])[:limit]
        return [Hits.of([Hit(r["id"], s, {f: r[f] for f in output_fields if f in r}) for s, r in hits], output_fields)]

    async def get(self, collection, ids, output_fields=(), timeout=None):
        self.calls.append(("get", tuple(ids)))
        stored = self.rows.get(collection, {})
        return {i: {f: stored[i][f] for f in output_fields} for i in ids if i in stored}

    async def query(self, collection, filters, output_fields, limit, timeout=None):
        self.calls.append(("query", filters))
        rows = [r for r in self.rows.get(collection, {}).values() if self.matches(r, filters)]
        return [{"id": r["id"], **{f: r[f] for f in output_fields if f in r}} for r in rows[:limit]]

    async def upsert(self, collection, rows, timeout=None):
        self.calls.append(("upsert", len(rows)))
        self.rows.setdefault(collection, {}).update({r["id"]: dict(r) for r in rows})
        return len(rows)

    async def delete(self, collection, ids, timeout=None):
        stored = self.rows.get(collection, {})
        return sum(stored.pop(i, None) is not None for i in ids)


@dataclass
class FakeEncoders:
    """Text -> a vector from its length and first letter; users -> mean of history (mask respected)."""

    calls: list[tuple[str, int]] = field(default_factory=list)

    async def encode_texts(self, text_field: str, texts: list[str], timeout_s=None) -> np.ndarray:
        self.calls.append((text_field, len(texts)))
        return np.array([[len(t), ord(t[0]) if t else 0, 1.0, 0.0] for t in texts], dtype=np.float32)

    async def encode_users(self, history: np.ndarray, mask: np.ndarray, timeout_s=None) -> np.ndarray:
        self.calls.append(("user", history.shape[1]))
        weights = mask[..., None].astype(np.float32)
        return (history * weights).sum(1) / np.maximum(weights.sum(1), 1)


def news_row(item_id: str, vector: Sequence[float], **fields: Any) -> dict[str, Any]:
    row = {"id": item_id, "vector": np.asarray(vector, dtype=np.float32), "title": item_id, "category": "c"}
    return {"published": 100, "popularity": 0.0, **row, **fields}


def ctx() -> RequestContext:
    return RequestContext.with_budget(5.0)


@pytest.fixture
def store() -> FakeStore:
    rows = {
        "a": news_row("a", [1, 0, 0, 0], category="x"),
        "b": news_row("b", [0, 1, 0, 0], category="y"),
        "c": news_row("c", [0.9, 0.1, 0, 0], category="x", published=300),
        "d": news_row("d", [0, 0, 1, 0], category="y", published=50),
    }
    return FakeStore(rows={"news": rows})


def recommender(
    store: FakeStore, cache: ItemCache, encoders: FakeEncoders, clock: CatalogClock | None = None
) -> Recommender:
    catalog = CatalogView(cache, store, "news")
    return Recommender(
        HistoryVectors(catalog, encoders, max_history=3),
        UserVector(encoders),
        personal_stages(AnnCandidates(store, catalog)),
        [ColdStart(store, "news", clock or CatalogClock(), window_days=1, pool=100)],
    )


def state(k: int, diversity: float = 0.0, exclude: frozenset[str] = frozenset()) -> RecommendState:
    return RecommendState(RecommendQuery("u", (), k, Filters(), bool(exclude), diversity), exclude)


async def test_history_comes_from_memory_first_then_milvus_then_titles(store: FakeStore) -> None:
    cache = ItemCache(10, 60)
    cache.store({"a": CachedNews(np.ones(DIM, np.float32) * 7, "A", "x", 1)})
    encoders = FakeEncoders()
    stage = HistoryVectors(CatalogView(cache, store, "news"), encoders, max_history=3)
    entries = [HistoryEntry("dropped-old", ""), HistoryEntry("a", ""), HistoryEntry("b", ""),
               HistoryEntry("unknown", "Fresh title"), HistoryEntry("", "")]  # fmt: skip
    history = await stage(entries, ctx())
    assert history.vectors.shape == (3, DIM)  # the 3 most recent usable entries, oldest first
    np.testing.assert_array_equal(history.vectors[0], np.ones(DIM) * 7)  # from memory, not Milvus
    np.testing.assert_array_equal(history.vectors[1], store.rows["news"]["b"]["vector"])
    assert history.vectors[2][0] == len("Fresh title")  # encoded by Triton
    assert ("get", ("b", "unknown")) in store.calls and encoders.calls == [("title", 1)]
    assert history.seen == {"dropped-old", "a", "b", "unknown"}
    assert cache.lookup(["b"])[1] == []  # the Milvus answer is now cached


async def test_recommend_ranks_by_inner_product_and_drops_seen_items(store: FakeStore) -> None:
    rec = recommender(store, ItemCache(10, 60), FakeEncoders())
    query = RecommendQuery("u", (HistoryEntry("a", ""),), k=2, filters=Filters(), exclude_seen=True, diversity=0)
    result = await rec(query, ctx())
    assert not result.cold_start and result.history_used == 1
    assert [i.item_id for i in result.items] == ["c", "b"]  # user = a's vector: c is closest, a is seen
    kept = await rec(RecommendQuery("u", query.history, 2, Filters(), exclude_seen=False, diversity=0), ctx())
    assert [i.item_id for i in kept.items] == ["a", "c"]


async def test_filters_reach_the_candidate_search(store: FakeStore) -> None:
    rec = recommender(store, ItemCache(10, 60), FakeEncoders())
    query = RecommendQuery("u", (HistoryEntry("a", ""),), 5, Filters(categories=("y",)), True, 0)
    assert {i.item_id for i in (await rec(query, ctx())).items} == {"b", "d"}


async def test_no_usable_history_is_a_cold_start_of_popular_recent_items(store: FakeStore) -> None:
    day = 86_400
    store.rows["news"]["a"].update(popularity=5.0, published=int(9.5 * day))
    store.rows["news"]["b"].update(popularity=9.0, published=1 * day)  # popular but old
    store.rows["news"]["c"].update(popularity=1.0, published=10 * day)
    store.rows["news"]["d"].update(popularity=0.0, published=2 * day)
    clock = CatalogClock()
    rec = recommender(store, ItemCache(10, 60), FakeEncoders(), clock)  # window: 1 day
    clock.observe(10 * day)
    query = RecommendQuery("new", (HistoryEntry("not-in-catalog", ""),), 2, Filters(), True, 0)
    result = await rec(query, ctx())
    assert result.cold_start and result.history_used == 0
    assert [i.item_id for i in result.items] == ["a", "c"]  # recent first by popularity; b is old
    more = await rec(RecommendQuery("new", (), 4, Filters(), True, 0), ctx())
    assert [i.item_id for i in more.items][:3] == ["a", "c", "b"]  # older items fill up when too few


async def test_mmr_without_diversity_keeps_relevance_order_and_with_it_avoids_near_duplicates() -> None:
    vectors = {"top": [1, 0], "twin": [1, 0.01], "other": [0, 1]}
    rows = [{"id": name, "title": name.upper()} for name in vectors]
    news = replace(NewsBatch.from_rows(rows), vectors=np.array(list(vectors.values()), np.float32))
    items = Candidates(news, np.array([3.0, 2.9, 2.0]))
    assert (await MmrOrder()(items, state(2, 0.0), ctx())).ids == ["top", "twin"]
    diverse = await MmrOrder()(items, state(2, 0.7), ctx())
    assert diverse.ids == ["top", "other"] and diverse.scores.tolist() == [3.0, 2.0]
    assert [item.title for item in diverse.items()] == ["TOP", "OTHER"]  # the rows move with their ids
    seen = state(3, exclude=frozenset({"twin"}))
    assert (await ExcludeSeen()(items, seen, ctx())).ids == ["top", "other"]
    with pytest.raises(ValueError, match="no vectors"):
        await MmrOrder()(Candidates(NewsBatch.from_rows(rows), items.scores), state(2, 0.7), ctx())


async def test_recommend_stage_timings_name_each_dependency_call_and_one_rank_step(store: FakeStore) -> None:
    rec = recommender(store, ItemCache(10, 60), FakeEncoders())
    context = ctx()
    await rec(RecommendQuery("u", (HistoryEntry("a", ""),), 2, Filters(), True, 0.5), context)
    assert [name for name, _ in context.timer.stages] == [
        "milvus.get_history",
        "triton.user_encoder",
        "milvus.search",
        "milvus.get_candidates",
        "rank",
    ]
    assert ("search", 2 * 4 + 1) in store.calls  # MMR's wider pool plus the seen item


@dataclass
class NewestFirst:
    """A custom ordering stage: most recently published first; records the state it was given."""

    seen_states: list[RecommendState] = field(default_factory=list)

    async def __call__(self, candidates: Candidates, state: RecommendState, ctx: RequestContext) -> Candidates:
        self.seen_states.append(state)
        return candidates.take(np.argsort(-candidates.news.published, kind="stable")[: state.query.k])


async def test_a_custom_stage_sequence_composes_each_output_into_the_next_input(store: FakeStore) -> None:
    cache, encoders = ItemCache(10, 60), FakeEncoders()
    catalog = CatalogView(cache, store, "news")
    newest_first = NewestFirst()
    stages = [AnnCandidates(store, catalog), Timed("filter", [ExcludeSeen()]), newest_first]
    rec = Recommender(HistoryVectors(catalog, encoders, 3), UserVector(encoders), stages, [])
    context = ctx()
    result = await rec(RecommendQuery("u", (HistoryEntry("a", ""),), 3, Filters(), True, 0), context)
    assert [i.item_id for i in result.items] == ["c", "b", "d"]  # a is seen; the rest newest first
    (given,) = newest_first.seen_states
    assert given.exclude == {"a"} and given.user is not None and given.query.k == 3
    assert [name for name, _ in context.timer.stages][-1] == "filter"  # Timed wraps its inner stages


async def test_cold_start_runs_its_own_stage_sequence_without_a_user_vector(store: FakeStore) -> None:
    cache, encoders = ItemCache(10, 60), FakeEncoders()
    newest_first = NewestFirst()
    catalog = CatalogView(cache, store, "news")
    rec = Recommender(HistoryVectors(catalog, encoders, 3), UserVector(encoders), [], [newest_first])
    result = await rec(RecommendQuery("new", (), 2, Filters(), True, 0), ctx())
    assert result.cold_start and result.items == [] and newest_first.seen_states[0].user is None
    assert encoders.calls == []  # no user vector is computed for a cold start


def test_the_catalog_clock_keeps_the_newest_instant_it_has_seen() -> None:
    clock = CatalogClock()
    for published in (300, 100, 500, 400):
        clock.observe(published)
    assert clock.newest_published == 500


async def test_items_ingested_move_the_clock_cold_start_reads(store: FakeStore) -> None:
    day = 86_400
    clock, cache, encoders = CatalogClock(), ItemCache(10, 60), FakeEncoders()
    rec = recommender(store, cache, encoders, clock)  # every fixture item is 0-300 s old: recent at first
    ingest = Ingest(encoders, store, cache, clock, "news", "passages", encode_batch=8)
    await ingest.upsert_news([NewsRecord("fresh", "fresh news", "c", "", "", 30 * day, 0.0)], ctx())
    result = await rec(RecommendQuery("new", (), 1, Filters(categories=("x", "y")), True, 0), ctx())
    first_query = next(filters for name, filters in store.calls if name == "query")
    assert clock.newest_published == 30 * day and first_query.published_after == 29 * day
    assert [i.item_id for i in result.items] == ["c"]  # nothing in x/y is recent: older items fill up


class FakeTimer:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_cold_start_reuses_a_filter_sets_ranked_rows_until_they_expire(store: FakeStore) -> None:
    timer = FakeTimer()
    cold = ColdStart(store, "news", CatalogClock(), window_days=1, pool=100, reuse_s=5.0, timer=timer)
    in_x = state(1, exclude=frozenset({"c"}))
    in_x = replace(in_x, query=replace(in_x.query, filters=Filters(categories=("x",))))

    def reads() -> int:
        return sum(name == "query" for name, _ in store.calls)

    first = await cold(Candidates.none(), state(2), ctx())
    store.rows["news"]["b"].update(popularity=9.0)  # written behind this gateway's back
    assert (await cold(Candidates.none(), state(2), ctx())).ids == first.ids  # reused: no new read
    assert reads() == 1
    assert (await cold(Candidates.none(), in_x, ctx())).ids == ["a"]  # other filters: their own read
    assert reads() == 2
    timer.now = 5.1
    assert (await cold(Candidates.none(), state(2), ctx())).ids[0] == "b"  # expired: read again
    assert reads() == 3


async def test_cold_start_reuse_ends_with_this_gateways_own_news_writes(store: FakeStore) -> None:
    clock, cache, encoders = CatalogClock(), ItemCache(10, 60), FakeEncoders()
    cold = ColdStart(store, "news", clock, window_days=1, pool=100, reuse_s=3600.0)
    ingest = Ingest(encoders, store, cache, clock, "news", "passages", encode_batch=8)
    store.rows["news"]["a"].update(popularity=5.0)
    assert (await cold(Candidates.none(), state(1), ctx())).ids == ["a"]
    await ingest.delete(["a"], [], ctx())
    assert (await cold(Candidates.none(), state(1), ctx())).ids != ["a"]  # deleted: not served again
    await ingest.upsert_news([NewsRecord("hot", "hot news", "c", "", "", 300, 0.0)], ctx())
    store.rows["news"]["hot"].update(popularity=9.0)
    assert (await cold(Candidates.none(), state(1), ctx())).ids == ["hot"]


async def test_ids_milvus_does_not_have_are_not_asked_for_again_until_they_expire(store: FakeStore) -> None:
    timer = FakeTimer()
    catalog = CatalogView(ItemCache(10, 60), store, "news", CatalogClock(), absent_ttl_s=30.0, timer=timer)

    def gets() -> list[tuple[str, ...]]:
        return [ids for name, ids in store.calls if name == "get"]

    assert (await catalog.entries(["a", "gone"], "milvus.get_history", ctx())).ids == ["a"]
    assert (await catalog.entries(["a", "gone"], "milvus.get_history", ctx())).ids == ["a"]
    assert gets() == [("a", "gone")]  # "a" from memory, "gone" known absent: no second read
    store.rows["news"]["gone"] = news_row("gone", [0, 0, 0, 1])  # written through another replica
    timer.now = 30.1
    assert (await catalog.entries(["a", "gone"], "milvus.get_history", ctx())).ids == ["a", "gone"]
    assert gets() == [("a", "gone"), ("gone",)]


async def test_entries_in_use_are_refreshed_in_the_background_before_they_expire(store: FakeStore) -> None:
    """Late in its lifetime an entry is served from memory and re-read in the background, batched; one Milvus no
    longer has is forgotten. So the catalog the warm-up stored all at once does not expire on the request path."""
    timer = FakeTimer()
    cache = ItemCache(10, 60, timer)
    catalog = CatalogView(cache, store, "news", CatalogClock(), timer=timer, refresh_timeout_s=1.0)
    await catalog.entries(["a", "b", "d"], "milvus.get_history", ctx())  # read, then cached at t = 0
    del store.rows["news"]["d"]  # deleted through another replica
    store.rows["news"]["a"]["title"] = "A, edited"
    store.calls.clear()
    timer.now = 44.0  # before REFRESH_AT x 60 s: nothing is due
    await catalog.entries(["a", "b", "d"], "milvus.get_history", ctx())
    assert store.calls == [] and not cache.has_due()
    timer.now = 46.0
    served = await catalog.entries(["a", "b", "d"], "milvus.get_history", ctx())
    assert served.ids == ["a", "b", "d"] and served.titles[0] == "a"  # still the cached entries, at once
    assert catalog._refreshing is not None
    refreshed = REGISTRY.get_sample_value("recstack_item_cache_total", {"result": "refreshed"}) or 0.0
    await catalog._refreshing
    assert [(name, sorted(ids)) for name, ids in store.calls] == [("get", ["a", "b", "d"])]  # one batch
    assert REGISTRY.get_sample_value("recstack_item_cache_total", {"result": "refreshed"}) == refreshed + 2
    assert len(cache) == 2 and not cache.has_due()  # "d" forgotten
    timer.now = 100.0  # past the first storing's ttl: the refreshed entries are fresh, the gone one is not cached
    found, missing = cache.lookup(["a", "b", "d"])
    assert found.ids == ["a", "b"] and list(found.titles) == ["A, edited", "b"] and missing == ["d"]


async def test_a_failed_refresh_is_not_retried_at_once_and_the_entries_still_expire(store: FakeStore) -> None:
    timer = FakeTimer()
    cache = ItemCache(10, 60, timer)
    catalog = CatalogView(cache, store, "news", CatalogClock(), timer=timer, refresh_timeout_s=1.0)
    await catalog.entries(["a"], "milvus.get_history", ctx())
    failing = FailingGet(store)
    catalog.store = failing
    timer.now = 50.0
    await catalog.entries(["a"], "milvus.get_history", ctx())
    assert catalog._refreshing is not None
    await asyncio.gather(catalog._refreshing, return_exceptions=True)
    assert failing.calls == 1 and catalog._refreshing is None
    timer.now = 52.0  # within REFRESH_RETRY_S of the failure: no new attempt, although "a" is due again
    await catalog.entries(["a"], "milvus.get_history", ctx())
    assert catalog._refreshing is None and failing.calls == 1
    timer.now = 61.0
    assert cache.lookup(["a"])[1] == ["a"]  # expired as without a refresh: the request path reads it


@dataclass
class FailingGet:
    """A store whose reads by id fail (Milvus unavailable)."""

    store: FakeStore
    calls: int = 0

    async def get(self, collection: str, ids: Sequence[str], output_fields=(), timeout=None):
        self.calls += 1
        raise ConnectionError("milvus is down")


async def test_an_absent_id_is_read_again_once_this_gateway_writes_news(store: FakeStore) -> None:
    clock, cache, encoders = CatalogClock(), ItemCache(10, 60), FakeEncoders()
    catalog = CatalogView(cache, store, "news", clock, absent_ttl_s=3600.0)
    ingest = Ingest(encoders, store, cache, clock, "news", "passages", encode_batch=8)
    assert len(await catalog.entries(["new"], "milvus.get_history", ctx())) == 0
    await ingest.upsert_news([NewsRecord("new", "new news", "c", "", "", 300, 0.0)], ctx())
    cache.forget(["new"])  # evicted, say: it must come from Milvus now, not be taken for absent
    assert (await catalog.entries(["new"], "milvus.get_history", ctx())).ids == ["new"]


async def test_search_encodes_the_query_and_returns_passages_with_their_fields() -> None:
    store = FakeStore(rows={"passages": {"p": {"id": "p", "vector": np.array([1, 0, 0, 0], np.float32),
                                              "text": "T", "title": "H", "category": "c", "doc_id": "D",
                                              "published": 0}}})  # fmt: skip
    encoders = FakeEncoders()
    search = PassageSearch(QueryVector(encoders), store, "passages")
    context = ctx()
    (hit,) = await search(SearchQueryFactory.make("hello"), context)
    assert (hit.item_id, hit.text, hit.doc_id) == ("p", "T", "D")
    assert encoders.calls == [("query", 1)]
    assert [name for name, _ in context.timer.stages] == ["triton.query_encoder", "milvus.search"]


class SearchQueryFactory:
    @staticmethod
    def make(text: str):
        from server.domain import SearchQuery

        return SearchQuery(text, 3, Filters())


async def test_ingest_encodes_in_chunks_writes_milvus_and_updates_memory(store: FakeStore) -> None:
    cache, encoders = ItemCache(10, 60), FakeEncoders()
    clock = CatalogClock()
    ingest = Ingest(encoders, store, cache, clock, "news", "passages", encode_batch=2)
    records = [NewsRecord(f"n{i}", f"title {i}", "c", "", f"abstract {i}", 1000 + i, 0.0) for i in range(5)]
    assert await ingest.upsert_news(records, ctx()) == 5
    assert store.rows["news"]["n3"]["abstract"] == "abstract 3"
    assert encoders.calls == [("title", 2), ("title", 2), ("title", 1)]
    assert set(store.rows["news"]) >= {f"n{i}" for i in range(5)}
    assert cache.lookup(["n4"])[1] == [] and clock.newest_published == 1004
    assert await ingest.delete(["n4", "missing"], [], ctx()) == (1, 0)
    assert cache.lookup(["n4"])[1] == ["n4"]


async def test_an_expired_deadline_stops_a_stage_before_it_calls_out(store: FakeStore) -> None:
    encoders = FakeEncoders()
    with pytest.raises(DependencyTimeout):
        await UserVector(encoders)(np.ones((1, DIM), np.float32), RequestContext.with_budget(-1))
    assert encoders.calls == []


async def test_every_stage_checks_the_deadline_before_each_dependency_call(store: FakeStore) -> None:
    encoders, expired = FakeEncoders(), RequestContext.with_budget(-1)
    catalog = CatalogView(ItemCache(10, 60), store, "news")
    ingest = Ingest(encoders, store, ItemCache(10, 60), CatalogClock(), "news", "passages", encode_batch=2)
    calls = [
        HistoryVectors(catalog, encoders, max_history=3)([HistoryEntry("b", ""), HistoryEntry("", "T")], expired),
        AnnCandidates(store, catalog)([], replace(state(2), user=np.ones(DIM, np.float32)), expired),
        ColdStart(store, "news", CatalogClock(), window_days=1, pool=10)([], state(2), expired),
        PassageSearch(QueryVector(encoders), store, "passages")(SearchQueryFactory.make("q"), expired),
        ingest.upsert_news([NewsRecord("n", "title", "c", "", "", 1, 0.0)], expired),
        ingest.delete(["a"], ["p"], expired),
    ]
    for call in calls:
        with pytest.raises(DependencyTimeout):
            await call
    assert store.calls == [] and encoders.calls == []


@dataclass
class FakeLLM:
    tokens: list[str]
    closed: bool = False
    requests: list[GenerationRequest] = field(default_factory=list)

    async def stream(self, request: GenerationRequest, *, timeout_s: float) -> AsyncIterator[TokenChunk]:
        self.requests.append(request)
        try:
            for token in self.tokens:
                await asyncio.sleep(0)
                yield TokenChunk(token)
            yield TokenChunk(finish_reason="stop", prompt_tokens=42, completion_tokens=len(self.tokens))
        finally:
            self.closed = True

    async def health(self) -> bool:
        return True

    async def close(self) -> None:
        pass


class FakeSearch:
    def __init__(self, scores: list[float]) -> None:
        self.scores = scores

    async def __call__(self, query, ctx):
        return [Item(f"p{i}", s, title="t", text="passage text") for i, s in enumerate(self.scores)]


def answer_query(**overrides: Any) -> AnswerQuery:
    return AnswerQuery(**{"question": "why?", "k": 2, "filters": Filters(), "max_tokens": None, "temperature": None,
                          **overrides})  # fmt: skip


async def test_answer_streams_sources_then_tokens_then_done() -> None:
    llm = FakeLLM(["The ", "answer."])
    events = [e async for e in Answerer(FakeSearch([0.9, 0.5]), llm, RagSettings(min_score=0.3))(answer_query(), ctx())]
    assert isinstance(events[0], Sources) and events[0].grounded
    assert [e.text for e in events[1:-1]] == ["The ", "answer."] and all(isinstance(e, Token) for e in events[1:-1])
    done = events[-1]
    assert isinstance(done, Done) and done.text == "The answer." and done.finish_reason == "stop"
    assert (done.prompt_tokens, done.completion_tokens) == (42, 2)
    assert "p0" in llm.requests[0].messages[-1].content  # the passages are in the prompt with their ids
    assert llm.requests[0].max_tokens is None and llm.closed


async def test_a_requested_temperature_of_zero_reaches_the_llm_as_zero() -> None:
    llm = FakeLLM(["greedy"])
    request = pb.AnswerRequest(question="why?", temperature=0.0, max_tokens=5)
    query = RequestValidator(GatewaySettings()).answer(request, RagSettings())
    _ = [e async for e in Answerer(FakeSearch([0.9]), llm, RagSettings(min_score=0.3))(query, ctx())]
    assert (llm.requests[0].temperature, llm.requests[0].max_tokens) == (0.0, 5)


@pytest.mark.parametrize(
    ("reason", "wire"),
    [
        ("stop", pb.FINISH_REASON_STOP),
        ("length", pb.FINISH_REASON_LENGTH),
        ("no_sources", pb.FINISH_REASON_NO_SOURCES),
        ("content_filter", pb.FINISH_REASON_OTHER),
    ],
)
def test_each_finish_reason_has_its_enum_value(reason: str, wire: int) -> None:
    done = Done("text", reason, 1, 1, 1.0, 2.0, 3.0, 4.0)
    assert answer_chunk(done).done.finish_reason == wire


async def test_answer_without_a_relevant_passage_does_not_call_the_llm() -> None:
    llm = FakeLLM(["made up"])
    events = [e async for e in Answerer(FakeSearch([0.1]), llm, RagSettings(min_score=0.3))(answer_query(), ctx())]
    assert not events[0].grounded
    assert events[1].text == NO_SOURCES_ANSWER and events[-1].finish_reason == "no_sources"
    assert llm.requests == []


async def test_leaving_the_answer_stream_early_closes_the_llm_stream() -> None:
    llm = FakeLLM(["a", "b", "c", "d"])
    stream = Answerer(FakeSearch([0.9]), llm, RagSettings(min_score=0.3))(answer_query(), ctx())
    async for event in stream:
        if isinstance(event, Token):
            break
    await stream.aclose()  # what grpc.aio does when the client cancels
    assert llm.closed
