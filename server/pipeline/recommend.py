"""Recommend, as small stages: history vectors -> user vector -> ANN candidates -> drop seen -> order.

    HistoryVectors   clicked ids -> vectors (memory, then Milvus); unknown ids with a title -> Triton
    UserVector       Triton's NRMS user encoder over those vectors
    AnnCandidates    Milvus top-N by inner product (= NRMS click score), request filters applied
    ExcludeSeen      drop what the user already clicked
    MmrOrder         optional diversity: maximal marginal relevance over candidate vectors
    ColdStart        no usable history: popular items among the most recent ones, matching the filters

`Recommender` composes them; each is usable and testable on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from server.domain import Filters, HistoryEntry, RecommendQuery
from server.item_cache import FIELDS as CACHED_FIELDS
from server.item_cache import CachedNews, ItemCache
from server.pipeline.common import Encoders, Item, RequestContext, Searcher, VectorStore

NEWS_FIELDS = ("title", "category", "published")
SECONDS_PER_DAY = 86_400


@dataclass
class History:
    vectors: np.ndarray  # [H, D], oldest first
    seen: set[str]  # every id the request named, used or not


class CatalogView:
    """News entries by id: from the gateway's memory first, the rest fetched from Milvus (and remembered)."""

    def __init__(self, cache: ItemCache, store: VectorStore, collection: str) -> None:
        self.cache, self.store, self.collection = cache, store, collection

    async def entries(self, ids: Sequence[str], stage: str, ctx: RequestContext) -> dict[str, CachedNews]:
        found, missing = self.cache.lookup(ids)
        if missing:
            with ctx.timer.stage(stage):
                rows = await self.store.get(self.collection, missing, CACHED_FIELDS, ctx.remaining("milvus"))
            fetched = {item_id: CachedNews.from_row(row) for item_id, row in rows.items()}
            self.cache.store(fetched)
            found.update(fetched)
        return found


class HistoryVectors:
    """Clicked items -> their news vectors, keeping the most recent `max_history`."""

    def __init__(self, catalog: CatalogView, encoders: Encoders, max_history: int) -> None:
        self.catalog, self.encoders, self.max_history = catalog, encoders, max_history

    async def __call__(self, entries: Sequence[HistoryEntry], ctx: RequestContext) -> History:
        seen = {e.item_id for e in entries if e.item_id}
        recent = [e for e in entries if e.item_id or e.title][-self.max_history :]
        known = await self.catalog.entries(sorted({e.item_id for e in recent if e.item_id}), "milvus.get_history", ctx)
        vectors: list[np.ndarray | None] = [known[e.item_id].vector if e.item_id in known else None for e in recent]
        untitled = [i for i, e in enumerate(recent) if vectors[i] is None and e.title]
        if untitled:  # ids the catalog does not know, but with a title: encode the title
            with ctx.timer.stage("triton.news_encoder"):
                encoded = await self.encoders.encode_texts(
                    "title", [recent[i].title for i in untitled], ctx.remaining("triton")
                )
            for i, vector in zip(untitled, encoded, strict=True):
                vectors[i] = vector
        used = [v for v in vectors if v is not None]
        return History(np.stack(used) if used else np.zeros((0, 0), np.float32), seen)


class UserVector:
    def __init__(self, encoders: Encoders) -> None:
        self.encoders = encoders

    async def __call__(self, history: np.ndarray, ctx: RequestContext) -> np.ndarray:
        mask = np.ones((1, history.shape[0]), dtype=np.int64)
        with ctx.timer.stage("triton.user_encoder"):
            users = await self.encoders.encode_users(history[None], mask, ctx.remaining("triton"))
        return users[0]


class AnnCandidates:
    """Top candidates by inner product (ids and scores from Milvus, the rest from the catalog view);
    asks for enough extra to survive ExcludeSeen."""

    def __init__(self, searcher: Searcher, catalog: CatalogView, max_limit: int = 16_384) -> None:
        self.searcher, self.catalog, self.max_limit = searcher, catalog, max_limit

    async def __call__(
        self, user: np.ndarray, k: int, filters: Filters, exclude: int, ctx: RequestContext
    ) -> list[Item]:
        limit = min(self.max_limit, k + exclude)
        with ctx.timer.stage("milvus.search"):
            (hits,) = await self.searcher.search(
                self.catalog.collection, user[None], limit, filters, (), ctx.remaining("milvus")
            )
        entries = await self.catalog.entries([hit.id for hit in hits], "milvus.get_candidates", ctx)
        return [
            Item(hit.id, hit.score, entry.title, entry.category, entry.published, vector=entry.vector)
            for hit in hits
            if (entry := entries.get(hit.id)) is not None  # deleted between search and lookup
        ]


def exclude_seen(items: list[Item], seen: set[str]) -> list[Item]:
    return [item for item in items if item.item_id not in seen]


def mmr_order(items: list[Item], k: int, diversity: float) -> list[Item]:
    """Greedy maximal marginal relevance: relevance (1 - diversity) vs cosine redundancy (diversity).

    With diversity 0 this is the relevance order. Scores stay the NRMS click scores.
    """
    if diversity <= 0 or len(items) <= 1:
        return items[:k]
    vectors = np.stack([item.vector for item in items]).astype(np.float32)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    relevance = np.array([item.score for item in items])
    spread = relevance.max() - relevance.min()
    relevance = (relevance - relevance.min()) / spread if spread > 0 else np.zeros_like(relevance)
    chosen: list[int] = []
    redundancy = np.full(len(items), -np.inf)
    remaining = np.ones(len(items), dtype=bool)
    for _ in range(min(k, len(items))):
        penalty = np.where(np.isfinite(redundancy), redundancy, 0.0)
        value = np.where(remaining, (1 - diversity) * relevance - diversity * penalty, -np.inf)
        best = int(np.argmax(value))
        chosen.append(best)
        remaining[best] = False
        redundancy = np.maximum(redundancy, unit @ unit[best])
    return [items[i] for i in chosen]


class ColdStart:
    """The answer for users without usable history: the most popular of the recent items.

    Recent = published within `window_days` of the newest item in the catalog (so the answer does not
    depend on the wall clock; a replayed 2017 catalog works too). Milvus (2.3) has no ORDER BY on scalar
    fields, so up to `pool` matching rows are read and ranked here by popularity, then recency; size
    `window_days` so the window holds fewer than `pool` items. If the window has fewer than k items,
    older ones fill the rest.
    """

    def __init__(self, store: VectorStore, collection: str, window_days: float, pool: int) -> None:
        self.store, self.collection = store, collection
        self.window_s = int(window_days * SECONDS_PER_DAY)
        self.pool = pool
        self.newest_published = 0

    def observe(self, published: int) -> None:
        """Track the catalog's newest publication time (fed by warm-up and by every upsert)."""
        self.newest_published = max(self.newest_published, published)

    async def __call__(self, k: int, filters: Filters, exclude: set[str], ctx: RequestContext) -> list[Item]:
        fields = (*NEWS_FIELDS, "popularity")
        cutoff = self.newest_published - self.window_s
        recent = replace(filters, published_after=max(filters.published_after or 0, cutoff))
        with ctx.timer.stage("milvus.cold_start"):
            rows = await self.store.query(self.collection, recent, fields, self.pool, ctx.remaining("milvus"))
            ranked = self._rank(rows, exclude)
            if len(ranked) < k and recent != filters:
                older = await self.store.query(self.collection, filters, fields, self.pool, ctx.remaining("milvus"))
                known = {item.item_id for item in ranked}
                ranked += [item for item in self._rank(older, exclude) if item.item_id not in known]
        return ranked[:k]

    @staticmethod
    def _rank(rows: list[dict], exclude: set[str]) -> list[Item]:
        rows = [row for row in rows if row["id"] not in exclude]
        rows.sort(key=lambda row: (row.get("popularity", 0.0), row.get("published", 0)), reverse=True)
        return [Item.from_row(row["id"], float(row.get("popularity", 0.0)), row) for row in rows]


@dataclass
class Recommendation:
    items: list[Item]
    cold_start: bool
    history_used: int


class Recommender:
    """The Recommend pipeline, composed from the stages above."""

    def __init__(
        self,
        history: HistoryVectors,
        user: UserVector,
        candidates: AnnCandidates,
        cold_start: ColdStart,
    ) -> None:
        self.history, self.user, self.candidates, self.cold_start = history, user, candidates, cold_start

    async def __call__(self, query: RecommendQuery, ctx: RequestContext) -> Recommendation:
        history = await self.history(query.history, ctx)
        exclude = history.seen if query.exclude_seen else set()
        if history.vectors.shape[0] == 0:
            items = await self.cold_start(query.k, query.filters, exclude, ctx)
            return Recommendation(items, cold_start=True, history_used=0)
        user = await self.user(history.vectors, ctx)
        diversify = query.diversity > 0
        # MMR picks k of a wider pool; without it the top k (after dropping seen items) is the answer.
        pool = query.k * 4 if diversify else query.k
        items = await self.candidates(user, pool, query.filters, len(exclude), ctx)
        with ctx.timer.stage("rank"):
            items = mmr_order(exclude_seen(items, exclude), query.k, query.diversity)
        return Recommendation(items, cold_start=False, history_used=history.vectors.shape[0])
