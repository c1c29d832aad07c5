"""Recommend, as small stages: history vectors -> user vector -> ANN candidates -> drop seen -> order.

    HistoryVectors   clicked ids -> vectors (memory, then Milvus); unknown ids with a title -> Triton
    UserVector       Triton's NRMS user encoder over those vectors
  candidate stages (`CandidateStage`: candidates + request state in, candidates out):
    AnnCandidates    Milvus top-N by inner product (= NRMS click score), request filters applied
    ExcludeSeen      drop what the user already clicked
    PopularityAwareOrder  re-score by NRMS score + click-through rate + recency (contract.ranking)
    MmrOrder         optional diversity: maximal marginal relevance over candidate vectors
    ColdStart        no usable history: popular items among the most recent ones, matching the filters
    Timed            runs inner stages as one named stage of the request's timings

`Recommender` runs one sequence of candidate stages for users with history (`personal_stages()`)
and another for users without (`[ColdStart]`); each stage is usable and testable on its own.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, Protocol

import numpy as np
import structlog
from cachetools import TTLCache
from numpy.typing import NDArray

from contract.ranking import RankingWeights, age_hours, ranking_scores
from contract.schemas import MAX_RESULT_ROWS
from server.domain import Filters, HistoryEntry, RecommendQuery
from server.item_cache import FIELDS as CACHED_FIELDS
from server.item_cache import CachedNews, ItemCache, NewsBatch
from server.observability import ITEM_CACHE, labelled
from server.pipeline.common import (
    CatalogClock,
    Encoders,
    Item,
    NewsDescription,
    RequestContext,
    Searcher,
    VectorIndex,
    first_row,
)

COLD_START_FIELDS = ("title", "category", "published", "popularity")
REUSED_FILTER_SETS = 256  # ColdStart keeps the ranked rows of at most this many filter sets
REMEMBERED_ABSENT_IDS = 100_000  # CatalogView remembers at most this many ids Milvus did not have
REFRESH_BATCH = 1000  # ids per Milvus read of CatalogView's background refresh
REFRESH_RETRY_S = 5.0  # after a failed background refresh, none starts for this long
SECONDS_PER_DAY = 86_400
MMR_POOL_FACTOR = 4  # MMR picks k of this many times k candidates

log = structlog.get_logger("recstack.recommend")


@dataclass
class History:
    vectors: NDArray[np.float32]  # [H, D], oldest first
    seen: set[str]  # every id the request named, used or not
    used: list[NewsDescription] = field(default_factory=list)  # the entries behind `vectors` that have an id


@dataclass(frozen=True)
class RecommendState:
    """What candidate stages know of the request: the query, the ids to leave out, the user vector
    (None for a cold start, which has none)."""

    query: RecommendQuery
    exclude: frozenset[str]
    user: NDArray[np.float32] | None = None

    @property
    def candidate_pool(self) -> int:
        """How many candidates the ordering should choose k from: MMR picks k of a wider pool; without
        it the top k (after dropping seen items) is the answer."""
        return self.query.k * MMR_POOL_FACTOR if self.query.diversity > 0 else self.query.k


@dataclass(frozen=True)
class Candidates:
    """Recommend's candidate list as columns, best first once ordered: the catalog's entries (`news`, row i)
    with their scores (`scores[i]`).

    Columns, not an `Item` per candidate: the ranking re-orders 100+ candidates per request, and per-candidate
    objects (built, filtered, copied with a new score) were most of the candidate stages' CPU (profiled);
    `Item`s are built for the k answered only (`items`).
    """

    news: NewsBatch
    scores: NDArray[np.float64]

    @classmethod
    def none(cls) -> Candidates:
        return cls(NewsBatch.from_rows([]), np.zeros(0))

    def __len__(self) -> int:
        return len(self.news)

    @property
    def ids(self) -> list[str]:
        return self.news.ids

    def take(self, rows: NDArray[np.intp]) -> Candidates:
        """The candidates at `rows`, in that order."""
        return Candidates(self.news.take(rows), self.scores[rows])

    def top(self, k: int) -> Candidates:
        return self if len(self) <= k else self.take(np.arange(k))

    def items(self) -> list[Item]:
        news = self.news
        columns = (news.titles.tolist(), news.categories.tolist(), news.published.tolist(), news.popularity.tolist())
        return [
            Item(item_id, score, title, category, published, popularity=popularity)
            for item_id, score, title, category, published, popularity in zip(
                news.ids, self.scores.tolist(), *columns, strict=True
            )
        ]


class CandidateStage(Protocol):
    """One Recommend step over the candidates: retrieve (ignores the incoming ones, none at the start),
    filter, score or order."""

    async def __call__(self, candidates: Candidates, state: RecommendState, ctx: RequestContext) -> Candidates: ...


class CatalogView:
    """News entries by id: from the gateway's memory first, the rest fetched from Milvus (and remembered).

    With `refresh_timeout_s`, entries the cache marks due (found late in their lifetime, see
    `server.item_cache`) are re-read from Milvus in the background, a batch at a time, one batch in flight;
    ids Milvus no longer has are forgotten. A failed refresh is logged and not retried for
    REFRESH_RETRY_S: those entries expire as before and are read on the request path.

    Ids Milvus does not have (a history naming news deleted or never indexed) are remembered as absent for
    `absent_ttl_s` (0: asked for again on every request). Why: otherwise each Recommend of such a history
    costs a Milvus read that finds nothing, every time. This gateway's own news writes end that at once (they
    move the catalog clock's revision); news added through another replica is seen within `absent_ttl_s`.
    """

    def __init__(
        self,
        cache: ItemCache,
        store: VectorIndex,
        collection: str,
        clock: CatalogClock | None = None,
        absent_ttl_s: float = 0.0,
        timer: Callable[[], float] = time.monotonic,
        refresh_timeout_s: float | None = None,
    ) -> None:
        """`refresh_timeout_s`: the deadline of a background refresh's Milvus read (None: no refresh)."""
        self.cache, self.store, self.collection = cache, store, collection
        self.clock = clock or CatalogClock()
        self.refresh_timeout_s, self.timer = refresh_timeout_s, timer
        self._refreshing: asyncio.Task[None] | None = None
        self._refresh_after = 0.0  # timer() before which no refresh starts (after a failed one)
        # id -> the catalog clock's revision when Milvus did not have it
        self._absent: TTLCache[str, int] | None = (
            TTLCache(REMEMBERED_ABSENT_IDS, absent_ttl_s, timer) if absent_ttl_s > 0 else None
        )

    async def entries(self, ids: Sequence[str], stage: str, ctx: RequestContext) -> NewsBatch:
        found, missing = self.cache.lookup(ids)
        if self.refresh_timeout_s is not None and self._refreshing is None and self.cache.has_due():
            self._start_refresh()
        revision = self.clock.revision
        if missing and self._absent is not None:
            missing = [item_id for item_id in missing if self._absent.get(item_id) != revision]
        if not missing:
            return found
        with ctx.timer.stage(stage):
            rows = await self.store.get(self.collection, missing, CACHED_FIELDS, ctx.remaining("milvus"))
        fetched = {item_id: CachedNews.from_row(row) for item_id, row in rows.items()}
        self.cache.store(fetched)
        if self._absent is not None:
            self._absent.update((item_id, revision) for item_id in missing if item_id not in rows)
        return found.concat(NewsBatch.from_entries(fetched))

    def _start_refresh(self) -> None:
        if self.timer() < self._refresh_after:
            return
        # A fresh context: the refresh is no part of the request that happened to start it (its call ledger).
        self._refreshing = asyncio.get_running_loop().create_task(self._refresh(), context=contextvars.Context())
        self._refreshing.add_done_callback(self._refreshed)

    async def _refresh(self) -> None:
        """Re-read the due entries, REFRESH_BATCH ids per Milvus call, until none are due."""
        while ids := self.cache.take_due(REFRESH_BATCH):
            rows = await self.store.get(self.collection, ids, CACHED_FIELDS, self.refresh_timeout_s)
            self.cache.store({item_id: CachedNews.from_row(row) for item_id, row in rows.items()})
            self.cache.forget(item_id for item_id in ids if item_id not in rows)  # gone from Milvus
            labelled(ITEM_CACHE, "refreshed").inc(len(rows))

    def _refreshed(self, task: asyncio.Task[None]) -> None:
        self._refreshing = None
        error = None if task.cancelled() else task.exception()
        if error is not None:
            self._refresh_after = self.timer() + REFRESH_RETRY_S
            log.warning("item_cache_refresh_failed", collection=self.collection, error=str(error))


class HistoryVectors:
    """Clicked items -> their news vectors, keeping the most recent `max_history`."""

    def __init__(self, catalog: CatalogView, encoders: Encoders, max_history: int) -> None:
        self.catalog, self.encoders, self.max_history = catalog, encoders, max_history

    async def __call__(self, entries: Sequence[HistoryEntry], ctx: RequestContext) -> History:
        seen = {e.item_id for e in entries if e.item_id}
        recent = [e for e in entries if e.item_id or e.title][-self.max_history :]
        known = await self.catalog.entries(sorted({e.item_id for e in recent if e.item_id}), "milvus.get_history", ctx)
        positions = known.positions
        rows = [positions.get(e.item_id, -1) for e in recent]
        usable = [i for i, e in enumerate(recent) if rows[i] >= 0 or e.title]  # the rest: unknown, untitled
        if not usable:
            return History(np.zeros((0, 0), np.float32), seen)
        used = self._described([(recent[i], rows[i]) for i in usable if recent[i].item_id], known)
        used_rows = np.array([rows[i] for i in usable], dtype=np.intp)
        untitled = [recent[i].title for i, row in zip(usable, used_rows, strict=True) if row < 0]
        if not untitled:
            return History(known.vectors[used_rows], seen, used)
        # ids the catalog does not know, but with a title: encode the title
        with ctx.timer.stage("triton.news_encoder"):
            encoded = await self.encoders.encode_texts("title", untitled, ctx.remaining("triton"))
        vectors = np.empty((len(usable), encoded.shape[1]), np.float32)
        from_catalog = used_rows >= 0
        if from_catalog.any():
            vectors[from_catalog] = known.vectors[used_rows[from_catalog]]
        vectors[~from_catalog] = encoded
        return History(vectors, seen, used)

    @staticmethod
    def _described(entries: list[tuple[HistoryEntry, int]], known: NewsBatch) -> list[NewsDescription]:
        """Used history entries (each with its row in `known`, -1 for none) as the feedback log describes them: by
        the catalog, else by their title. Tuples from whole columns: an `Item` per entry was ~70 us per 50-entry
        history (timeit), on every Recommend."""
        titles, categories = known.titles.tolist(), known.categories.tolist()
        return [
            (entry.item_id, titles[row], categories[row]) if row >= 0 else (entry.item_id, entry.title, "")
            for entry, row in entries
        ]


class UserVector:
    def __init__(self, encoders: Encoders) -> None:
        self.encoders = encoders

    async def __call__(self, history: NDArray[np.float32], ctx: RequestContext) -> NDArray[np.float32]:
        mask = np.ones((1, history.shape[0]), dtype=np.int64)
        with ctx.timer.stage("triton.user_encoder"):
            users = await self.encoders.encode_users(history[None], mask, ctx.remaining("triton"))
        return first_row(users)


class AnnCandidates:
    """Top candidates by inner product with the user vector (ids and scores from Milvus, the rest from
    the catalog view); asks for at least `min_pool` (what a re-ranking stage re-orders) and enough extra to
    survive ExcludeSeen."""

    def __init__(
        self, searcher: Searcher, catalog: CatalogView, max_limit: int = MAX_RESULT_ROWS, min_pool: int = 0
    ) -> None:
        self.searcher, self.catalog, self.max_limit, self.min_pool = searcher, catalog, max_limit, min_pool

    async def __call__(self, candidates: Candidates, state: RecommendState, ctx: RequestContext) -> Candidates:
        if state.user is None:
            raise ValueError("AnnCandidates needs the request's user vector")
        limit = ann_limit(state.candidate_pool, self.min_pool, len(state.exclude), self.max_limit)
        with ctx.timer.stage("milvus.search"):
            (hits,) = await self.searcher.search(
                self.catalog.collection, state.user[None], limit, state.query.filters, (), ctx.remaining("milvus")
            )
        entries = await self.catalog.entries(hits.ids, "milvus.get_candidates", ctx)
        scores = hits.scores.astype(np.float64)
        if entries.ids == hits.ids:  # all found in memory: already aligned
            return Candidates(entries, scores)
        positions = entries.positions
        rows = np.fromiter((positions.get(item_id, -1) for item_id in hits.ids), np.intp, len(hits))
        found = rows >= 0  # the rest were deleted between search and lookup
        return Candidates(entries.take(rows[found]), scores[found])


def ann_limit(pool: int, min_pool: int, excluded: int, most: int = MAX_RESULT_ROWS) -> int:
    """How many hits AnnCandidates asks Milvus for: the ordering's `pool` (k, or MMR's wider one), at least
    `min_pool` (what a re-ranking re-orders), plus the `excluded` ids that ExcludeSeen may drop; at most `most`."""
    return min(most, max(pool, min_pool) + excluded)


class ExcludeSeen:
    """Drops the candidates the request asked to leave out (the ids it named, when `exclude_seen`)."""

    async def __call__(self, candidates: Candidates, state: RecommendState, ctx: RequestContext) -> Candidates:
        exclude = state.exclude
        if not exclude:
            return candidates
        keep = np.fromiter((item_id not in exclude for item_id in candidates.ids), bool, len(candidates))
        return candidates if keep.all() else candidates.take(np.flatnonzero(keep))


class PopularityAwareOrder:
    """Re-orders candidates by `contract.ranking`'s final score (which becomes their score): the NRMS click
    score with the item's click-through rate (`popularity`) and its age at the catalog clock's "now"."""

    def __init__(self, weights: RankingWeights, clock: CatalogClock) -> None:
        self.weights, self.clock = weights, clock

    async def __call__(self, candidates: Candidates, state: RecommendState, ctx: RequestContext) -> Candidates:
        if not len(candidates):
            return candidates
        news = candidates.news
        hours = age_hours(self.clock.newest_published, news.published)
        scores = ranking_scores(self.weights, candidates.scores, news.popularity, hours)
        order = np.argsort(-scores, kind="stable")
        return Candidates(news.take(order), scores[order])


class MmrOrder:
    """Picks the request's k: greedy maximal marginal relevance, relevance (1 - diversity) vs cosine
    redundancy (diversity). With diversity 0 this is the relevance order. Scores stay the NRMS click scores.
    """

    async def __call__(self, candidates: Candidates, state: RecommendState, ctx: RequestContext) -> Candidates:
        k, diversity = state.query.k, state.query.diversity
        if diversity <= 0 or len(candidates) <= 1:
            return candidates.top(k)
        if not candidates.news.vectors.shape[1]:
            raise ValueError("the candidates have no vectors to diversify by")
        return candidates.take(_mmr_picks(candidates.news.vectors, candidates.scores, k, diversity))


def _mmr_picks(vectors: NDArray[np.float32], scores: NDArray[np.float64], k: int, diversity: float) -> NDArray[np.intp]:
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    spread = scores.max() - scores.min()
    relevance = (scores - scores.min()) / spread if spread > 0 else np.zeros_like(scores)
    chosen: list[int] = []
    redundancy = np.full(len(scores), -np.inf)
    remaining = np.ones(len(scores), dtype=bool)
    for _ in range(min(k, len(scores))):
        penalty = np.where(np.isfinite(redundancy), redundancy, 0.0)
        value = np.where(remaining, (1 - diversity) * relevance - diversity * penalty, -np.inf)
        best = int(np.argmax(value))
        chosen.append(best)
        remaining[best] = False
        redundancy = np.maximum(redundancy, unit @ unit[best])
    return np.array(chosen, dtype=np.intp)


class Timed:
    """Runs `stages` in order as one named stage of the request's timings."""

    def __init__(self, name: str, stages: Sequence[CandidateStage]) -> None:
        self.name, self.stages = name, stages

    async def __call__(self, candidates: Candidates, state: RecommendState, ctx: RequestContext) -> Candidates:
        with ctx.timer.stage(self.name):
            return await run_stages(self.stages, candidates, state, ctx)


async def run_stages(
    stages: Sequence[CandidateStage], candidates: Candidates, state: RecommendState, ctx: RequestContext
) -> Candidates:
    """Each stage's output is the next one's input."""
    for stage in stages:
        candidates = await stage(candidates, state, ctx)
    return candidates


def personal_stages(candidates: AnnCandidates, ranking: CandidateStage | None = None) -> list[CandidateStage]:
    """Recommend for a user with history: ANN candidates, then drop seen, re-rank (when `ranking` is given)
    and order, timed as `rank`."""
    rank: list[CandidateStage] = [ExcludeSeen(), *([ranking] if ranking else []), MmrOrder()]
    return [candidates, Timed("rank", rank)]


class ColdStart:
    """The answer for users without usable history: the most popular of the recent items.

    Recent = published within `window_days` of the catalog clock's newest item (so the answer does not
    depend on the wall clock). Milvus (2.3) has no ORDER BY on scalar fields, so up to `pool` matching
    rows are read and ranked here by popularity, then recency; size `window_days` so the window holds
    fewer than `pool` items. If the window has fewer than k items, older ones fill the rest. A
    retrieval stage: the incoming candidates are ignored.

    A filter set's ranked rows are reused for `reuse_s` seconds (0: read per request). Why: reading and
    ranking up to `pool` rows made a cold start the costliest Recommend (p50 ~9 ms against ~6 ms for a
    personal one's Milvus search, measured on the demo stack), for an answer that is the same for every
    cold user with those filters. This gateway's own news writes take effect at once (they move the
    catalog clock's revision); writes through another replica within `reuse_s`.
    """

    def __init__(
        self,
        store: VectorIndex,
        collection: str,
        clock: CatalogClock,
        window_days: float,
        pool: int,
        reuse_s: float = 0.0,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store, self.collection, self.clock = store, collection, clock
        self.window_s = int(window_days * SECONDS_PER_DAY)
        self.pool = pool
        self._ranked: TTLCache[Filters, RankedRows] | None = (
            TTLCache(REUSED_FILTER_SETS, reuse_s, timer) if reuse_s > 0 else None
        )

    async def __call__(self, candidates: Candidates, state: RecommendState, ctx: RequestContext) -> Candidates:
        k, filters, exclude = state.query.k, state.query.filters, state.exclude
        cutoff = self.clock.newest_published - self.window_s
        recent = replace(filters, published_after=max(filters.published_after or 0, cutoff))
        top = _first_unseen(await self._ranked_rows(recent, ctx), exclude, k)
        if len(top) < k and recent != filters:
            known = exclude | {row["id"] for row in top}
            top += _first_unseen(await self._ranked_rows(filters, ctx), known, k - len(top))
        return Candidates(NewsBatch.from_rows(top), np.array([row.get("popularity", 0.0) for row in top], np.float64))

    async def _ranked_rows(self, filters: Filters, ctx: RequestContext) -> list[dict[str, Any]]:
        """Up to `pool` rows matching `filters`, by popularity, then recency (most first); reused while fresh, so
        the list and its rows are shared between requests: read them, never change them."""
        revision = self.clock.revision
        kept = self._ranked.get(filters) if self._ranked is not None else None
        if kept is not None and kept.revision == revision:
            return kept.rows
        with ctx.timer.stage("milvus.cold_start"):
            timeout = ctx.remaining("milvus")
            rows = await self.store.query(self.collection, filters, COLD_START_FIELDS, self.pool, timeout)
        rows.sort(key=lambda row: (row.get("popularity", 0.0), row.get("published", 0)), reverse=True)
        if self._ranked is not None:
            self._ranked[filters] = RankedRows(revision, rows)
        return rows


class RankedRows(NamedTuple):
    revision: int  # the catalog clock's revision when they were read
    rows: list[dict[str, Any]]


def _first_unseen(rows: list[dict[str, Any]], exclude: frozenset[str], count: int) -> list[dict[str, Any]]:
    """The first `count` rows whose id is not in `exclude`."""
    return list(itertools.islice((row for row in rows if row["id"] not in exclude), count))


@dataclass
class Recommendation:
    items: list[Item]
    cold_start: bool
    history_used: int
    history: list[NewsDescription] = field(default_factory=list)  # used history entries with an id, oldest first
    model_version: str = ""  # the version that served it (see server.versions)


class Recommender:
    """The Recommend pipeline: history and user vector, then `personal` candidate stages, or the
    `cold_start` ones when no history is usable."""

    def __init__(
        self,
        history: HistoryVectors,
        user: UserVector,
        personal: Sequence[CandidateStage],
        cold_start: Sequence[CandidateStage],
    ) -> None:
        self.history, self.user, self.personal, self.cold_start = history, user, personal, cold_start

    async def __call__(self, query: RecommendQuery, ctx: RequestContext) -> Recommendation:
        history = await self.history(query.history, ctx)
        exclude = frozenset(history.seen if query.exclude_seen else ())
        used = history.vectors.shape[0]
        if used == 0:
            chosen = await run_stages(self.cold_start, Candidates.none(), RecommendState(query, exclude), ctx)
            return Recommendation(chosen.items(), cold_start=True, history_used=0)
        state = RecommendState(query, exclude, await self.user(history.vectors, ctx))
        chosen = await run_stages(self.personal, Candidates.none(), state, ctx)
        return Recommendation(chosen.items(), cold_start=False, history_used=used, history=history.used)
