"""UpsertItems / DeleteItems: encode items on Triton, write vectors and fields to Milvus, keep the
in-memory item vectors and the catalog clock (its newest instant, its revision) in step with what was written.

News is written to every live model version (`NewsTarget`s: the control first, then e.g. the version a
rollout is building and the one a rollback would return to), each encoded by its own news encoder, so a
version switch loses no write; counts are the control's.

Writes are idempotent (Milvus upsert keyed by id). A call is acknowledged only after Milvus has
accepted every row, so an acknowledged write is durable (the vector store's write path) and is
visible to this gateway's next request (the vector store's read-your-writes guarantee, and the
item cache updated here). Items are encoded in chunks so one large call cannot build one huge
Triton request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from server.domain import NewsRecord, PassageRecord
from server.item_cache import CachedNews, ItemCache
from server.pipeline.common import CatalogClock, Encoders, RequestContext, VectorIndex


@dataclass(frozen=True)
class NewsTarget:
    """One model version's news: its collection, its encoders, its in-memory item vectors."""

    collection: str
    encoders: Encoders
    cache: ItemCache


class Ingest:
    def __init__(
        self,
        encoders: Encoders,
        store: VectorIndex,
        cache: ItemCache,
        clock: CatalogClock,
        news_collection: str,
        passage_collection: str,
        encode_batch: int,
        news_targets: Callable[[], Sequence[NewsTarget]] | None = None,
    ) -> None:
        """`news_targets`: the live versions' news, control first (default: `news_collection` encoded by
        `encoders`, cached in `cache`)."""
        self.encoders, self.store, self.clock = encoders, store, clock
        self.passage_collection, self.encode_batch = passage_collection, encode_batch
        single = (NewsTarget(news_collection, encoders, cache),)
        self.news_targets = news_targets or (lambda: single)

    async def upsert_news(self, records: Sequence[NewsRecord], ctx: RequestContext) -> int:
        if not records:
            return 0
        try:
            written = [await self._upsert_news(target, records, ctx) for target in self.news_targets()]
        finally:  # a failed call may have written some of the rows
            self.clock.changed()
        for record in records:
            self.clock.observe(record.published)
        return written[0]

    async def _upsert_news(self, target: NewsTarget, records: Sequence[NewsRecord], ctx: RequestContext) -> int:
        titles = [r.title for r in records]
        vectors = await self._encode(target.encoders, "title", "triton.news_encoder", titles, ctx)
        rows = [
            {
                "id": r.item_id,
                "vector": vector,
                "title": r.title,
                "abstract": r.abstract,
                "category": r.category,
                "subcategory": r.subcategory,
                "published": r.published,
                "popularity": r.popularity,
            }
            for r, vector in zip(records, vectors, strict=True)
        ]
        with ctx.timer.stage("milvus.upsert_news"):
            written = await self.store.upsert(target.collection, rows, ctx.remaining("milvus"))
        target.cache.store({row["id"]: CachedNews.from_row(row) for row in rows})
        return written

    async def upsert_passages(self, records: Sequence[PassageRecord], ctx: RequestContext) -> int:
        if not records:
            return 0
        vectors = await self._encode(self.encoders, "passage", "triton.doc_encoder", [r.text for r in records], ctx)
        rows = [
            {
                "id": r.item_id,
                "vector": vector,
                "text": r.text,
                "title": r.title,
                "category": r.category,
                "doc_id": r.doc_id,
                "published": r.published,
            }
            for r, vector in zip(records, vectors, strict=True)
        ]
        with ctx.timer.stage("milvus.upsert_passages"):
            return await self.store.upsert(self.passage_collection, rows, ctx.remaining("milvus"))

    async def delete(self, news_ids: Sequence[str], passage_ids: Sequence[str], ctx: RequestContext) -> tuple[int, int]:
        news_deleted = passages_deleted = 0
        if news_ids:
            try:
                deleted = [await self._delete_news(target, news_ids, ctx) for target in self.news_targets()]
            finally:
                self.clock.changed()
            news_deleted = deleted[0]  # the control's
        if passage_ids:
            with ctx.timer.stage("milvus.delete_passages"):
                passages_deleted = await self.store.delete(
                    self.passage_collection, passage_ids, ctx.remaining("milvus")
                )
        return news_deleted, passages_deleted

    async def _delete_news(self, target: NewsTarget, news_ids: Sequence[str], ctx: RequestContext) -> int:
        with ctx.timer.stage("milvus.delete_news"):
            deleted = await self.store.delete(target.collection, news_ids, ctx.remaining("milvus"))
        target.cache.forget(news_ids)
        return deleted

    async def _encode(
        self, encoders: Encoders, text_field: str, stage: str, texts: list[str], ctx: RequestContext
    ) -> NDArray[np.float32]:
        chunks: list[NDArray[np.float32]] = []
        with ctx.timer.stage(stage):
            for start in range(0, len(texts), self.encode_batch):
                chunk = texts[start : start + self.encode_batch]
                chunks.append(await encoders.encode_texts(text_field, chunk, ctx.remaining("triton")))
        return np.concatenate(chunks)
