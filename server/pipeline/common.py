"""What the pipeline stages share: the request context, result items, the catalog clock, and the
ports they call.

Stages depend on the ports (Protocols named for what they do), not on the adapters that implement
them over Triton or Milvus, so each stage is testable with fakes and the same stages run against
Milvus Lite, a standalone server or a cluster.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from server.domain import Filters, Hits
from server.errors import DependencyTimeout
from server.observability import StageTimer, record_dependency_call


@dataclass
class RequestContext:
    """Per-request state every stage sees: its stage timer and the time left before the deadline."""

    deadline: float  # time.monotonic() value
    timer: StageTimer = field(default_factory=StageTimer)

    @classmethod
    def with_budget(cls, seconds: float) -> RequestContext:
        return cls(deadline=time.monotonic() + seconds)

    def remaining(self, dependency: str) -> float:
        """Seconds left for the call to `dependency` the stage makes right now (every stage asks just
        before each call), which is recorded for `recstack_dependency_calls_total`; DependencyTimeout,
        and no call, when none are left."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DependencyTimeout(dependency, "request deadline reached before the call")
        record_dependency_call(dependency)
        return left


NewsDescription = tuple[str, str, str]  # item_id, title, category: what the feedback log says of a news item


@dataclass(slots=True)
class Item:
    """A ranked result: a news article (Recommend) or a passage (Search, Answer)."""

    item_id: str
    score: float
    title: str = ""
    category: str = ""
    published: int = 0
    text: str = ""
    doc_id: str = ""
    popularity: float = 0.0  # news: smoothed click-through rate (contract.ranking)

    @classmethod
    def from_row(cls, item_id: str, score: float, row: dict[str, Any]) -> Item:
        return cls(
            item_id=item_id,
            score=float(score),
            title=row.get("title", ""),
            category=row.get("category", ""),
            published=int(row.get("published", 0) or 0),
            text=row.get("text", ""),
            doc_id=row.get("doc_id", ""),
            popularity=float(row.get("popularity", 0.0) or 0.0),
        )


def first_row(rows: NDArray[np.float32]) -> NDArray[np.float32]:
    """Row 0 of a [N, D] batch as a [D] vector (numpy's stubs type an integer index as Any)."""
    row: NDArray[np.float32] = rows[0]
    return row


class CatalogClock:
    """The news catalog's newest publication instant (unix seconds), ColdStart's notion of "now", and the
    `revision` of the catalog as this gateway wrote it.

    Built once per gateway and passed explicitly: the cache warm-up feeds it every stored row, ingest
    every upserted one; it never moves back (a deletion leaves it where it was), so "recent" does not
    depend on the wall clock and a replayed 2017 catalog works too. Ingest also counts each news write
    (`changed`), so what was derived from the catalog (ColdStart's ranked pools) is not reused past it.
    """

    def __init__(self) -> None:
        self.newest_published = 0
        self.revision = 0

    def observe(self, published: int) -> None:
        self.newest_published = max(self.newest_published, published)

    def changed(self) -> None:
        """This gateway wrote news (upserted or deleted some)."""
        self.revision += 1


# ---- ports: what the stages call, each implemented by an adapter elsewhere --------------------------
#   Searcher     ANN search                  server.milvus.MilvusStore, server.batching.BatchedSearch
#   VectorIndex  Searcher + rows by id/filter server.milvus.MilvusStore
#   Encoders     Triton-served embeddings    server.triton.TritonEncoders, server.batching.BatchedEncoders


class Searcher(Protocol):
    """ANN search: top-`limit` hits by inner product for each row of `vectors`, best first."""

    async def search(
        self,
        collection: str,
        vectors: NDArray[np.float32],
        limit: int,
        filters: Filters | None = None,
        output_fields: Sequence[str] = (),
        timeout: float | None = None,
    ) -> list[Hits]: ...


class VectorIndex(Searcher, Protocol):
    """The vector database operations the stages need: search, reads by id or filter, writes."""

    async def get(
        self, collection: str, ids: Sequence[str], fields: Sequence[str] = (), timeout: float | None = None
    ) -> dict[str, dict[str, Any]]: ...

    async def query(
        self,
        collection: str,
        filters: Filters | None,
        output_fields: Sequence[str],
        limit: int,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]: ...

    async def upsert(self, collection: str, rows: Sequence[Mapping[str, Any]], timeout: float | None = None) -> int: ...

    async def delete(self, collection: str, ids: Sequence[str], timeout: float | None = None) -> int: ...

    def iterate(
        self, collection: str, fields: Sequence[str] = (), batch_size: int | None = None, timeout: float | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Every row of `collection` with `fields`, one dict per row (an async generator)."""


class Encoders(Protocol):
    """The embedding models: texts of one field ("title", "query", "passage") and click histories."""

    async def encode_texts(
        self, text_field: str, texts: list[str], timeout_s: float | None = None
    ) -> NDArray[np.float32]: ...

    async def encode_users(
        self, history: NDArray[np.float32], mask: NDArray[np.int64], timeout_s: float | None = None
    ) -> NDArray[np.float32]: ...
