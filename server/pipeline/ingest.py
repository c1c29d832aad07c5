"""UpsertItems / DeleteItems: encode items on Triton, write vectors and fields to Milvus, keep the
in-memory item vectors and the catalog clock in step with what was written.

Writes are idempotent (Milvus upsert keyed by id). A call is acknowledged only after Milvus has
accepted every row, so an acknowledged write is durable (the vector store's write path) and is
visible to this gateway's next request (the vector store's read-your-writes guarantee, and the
item cache updated here). Items are encoded in chunks so one large call cannot build one huge
Triton request.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from server.domain import NewsRecord, PassageRecord
from server.item_cache import CachedNews, ItemCache
from server.pipeline.common import CatalogClock, Encoders, RequestContext, VectorIndex


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
    ) -> None:
        self.encoders, self.store, self.cache, self.clock = encoders, store, cache, clock
        self.news_collection, self.passage_collection = news_collection, passage_collection
        self.encode_batch = encode_batch

    async def upsert_news(self, records: Sequence[NewsRecord], ctx: RequestContext) -> int:
        if not records:
            return 0
        vectors = await self._encode("title", "triton.news_encoder", [r.title for r in records], ctx)
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
            written = await self.store.upsert(self.news_collection, rows, ctx.remaining("milvus"))
        self.cache.store({row["id"]: CachedNews.from_row(row) for row in rows})
        for record in records:
            self.clock.observe(record.published)
        return written

    async def upsert_passages(self, records: Sequence[PassageRecord], ctx: RequestContext) -> int:
        if not records:
            return 0
        vectors = await self._encode("passage", "triton.doc_encoder", [r.text for r in records], ctx)
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
            with ctx.timer.stage("milvus.delete_news"):
                news_deleted = await self.store.delete(self.news_collection, news_ids, ctx.remaining("milvus"))
            self.cache.forget(news_ids)
        if passage_ids:
            with ctx.timer.stage("milvus.delete_passages"):
                passages_deleted = await self.store.delete(
                    self.passage_collection, passage_ids, ctx.remaining("milvus")
                )
        return news_deleted, passages_deleted

    async def _encode(self, text_field: str, stage: str, texts: list[str], ctx: RequestContext) -> NDArray[np.float32]:
        chunks: list[NDArray[np.float32]] = []
        with ctx.timer.stage(stage):
            for start in range(0, len(texts), self.encode_batch):
                chunk = texts[start : start + self.encode_batch]
                chunks.append(await self.encoders.encode_texts(text_field, chunk, ctx.remaining("triton")))
        return np.concatenate(chunks)
