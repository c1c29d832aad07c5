"""What the pipeline stages share: the request context, result items, and the two ports they call.

Stages depend on these Protocols, not on Triton or Milvus, so each stage is testable with fakes
and the same stages run against Milvus Lite, a standalone server or a cluster.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from server.domain import Filters, Hit
from server.errors import DependencyTimeout
from server.observability import StageTimer


@dataclass
class RequestContext:
    """Per-request state every stage sees: its stage timer and the time left before the deadline."""

    deadline: float  # time.monotonic() value
    timer: StageTimer = field(default_factory=StageTimer)

    @classmethod
    def with_budget(cls, seconds: float) -> RequestContext:
        return cls(deadline=time.monotonic() + seconds)

    def remaining(self, dependency: str) -> float:
        """Seconds left for a call to `dependency`; DependencyTimeout when none are left."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DependencyTimeout(dependency, "request deadline reached before the call")
        return left


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
    vector: np.ndarray | None = None

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
            vector=row.get("vector"),
        )


class Searcher(Protocol):
    """ANN search (`server.milvus.MilvusStore`, or `server.batching.BatchedSearch` over it)."""

    async def search(
        self,
        collection: str,
        vectors: np.ndarray,
        limit: int,
        filters: Filters | None = None,
        output_fields: Sequence[str] = (),
        timeout: float | None = None,
    ) -> list[list[Hit]]: ...


class VectorStore(Searcher, Protocol):
    """The Milvus operations the stages need (implemented by `server.milvus.MilvusStore`)."""

    async def get(
        self, collection: str, ids: Sequence[str], output_fields: Sequence[str] = (), timeout: float | None = None
    ) -> dict[str, dict[str, Any]]: ...

    async def query(
        self,
        collection: str,
        filters: Filters | None,
        output_fields: Sequence[str],
        limit: int,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]: ...

    async def upsert(self, collection: str, rows: list[dict[str, Any]], timeout: float | None = None) -> int: ...

    async def delete(self, collection: str, ids: Sequence[str], timeout: float | None = None) -> int: ...

    def iterate(
        self, collection: str, fields: Sequence[str] = (), batch_size: int | None = None, timeout: float | None = None
    ) -> AsyncIterator[dict[str, Any]]: ...


class Encoders(Protocol):
    """The Triton-served encoders (implemented by `server.triton.TritonEncoders`)."""

    async def encode_texts(self, field: str, texts: list[str], timeout_s: float | None = None) -> np.ndarray: ...

    async def encode_users(
        self, history: np.ndarray, mask: np.ndarray, timeout_s: float | None = None
    ) -> np.ndarray: ...
