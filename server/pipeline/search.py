"""Search (and Answer's retrieval): query text -> two-tower query vector on Triton -> Milvus passages.

Passage vectors are L2-normalised, so the inner-product score is the cosine similarity.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from server.domain import SearchQuery
from server.pipeline.common import Encoders, Item, RequestContext, Searcher, first_row

PASSAGE_FIELDS = ("text", "title", "category", "doc_id", "published")


class QueryVector:
    def __init__(self, encoders: Encoders) -> None:
        self.encoders = encoders

    async def __call__(self, text: str, ctx: RequestContext) -> NDArray[np.float32]:
        with ctx.timer.stage("triton.query_encoder"):
            vectors = await self.encoders.encode_texts("query", [text], ctx.remaining("triton"))
        return first_row(vectors)


class PassageSearch:
    """The Search pipeline: QueryVector, then a filtered ANN search over passages."""

    def __init__(self, query_vector: QueryVector, store: Searcher, collection: str) -> None:
        self.query_vector, self.store, self.collection = query_vector, store, collection

    async def __call__(self, query: SearchQuery, ctx: RequestContext) -> list[Item]:
        vector = await self.query_vector(query.text, ctx)
        with ctx.timer.stage("milvus.search"):
            (hits,) = await self.store.search(
                self.collection, vector[None], query.k, query.filters, PASSAGE_FIELDS, ctx.remaining("milvus")
            )
        return [Item.from_row(hit.id, hit.score, hit.fields) for hit in hits]
