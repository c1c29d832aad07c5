"""The gateway's domain types: validated queries, records to write, filters and search hits.

Plain data only: this module imports no client library (no pymilvus, grpc, tritonclient or protobuf),
so request validation, pipeline stages and their tests can use these types without any of them.
`server.requests` builds the queries and records; `server.milvus` turns `Filters` into expressions
and returns `Hits`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Filters:
    """Restrictions on search results; empty means none.

    `categories`: keep items whose category is one of these. `published_after`: keep items published
    strictly after this instant (unix seconds); items with unknown date (published 0) are then excluded.
    """

    categories: Sequence[str] = ()
    published_after: int | None = None


@dataclass(frozen=True)
class Hit:
    """One search result: `score` is the inner product (higher is closer); `fields` the requested outputs."""

    id: str
    score: float
    fields: dict[str, Any]


@dataclass(frozen=True)
class Hits:
    """One query's search results as columns, best first: `ids[i]` scored `scores[i]`, and
    `fields[name][i]` for each requested output field.

    Columns, not a `Hit` per result: Recommend asks for 100+ candidates per request, and building an
    object (and a fields dict) per hit was the largest cost of its candidate stages (profiled). Iterating
    gives `Hit`s, for consumers that want a few rows (Search's k passages).
    """

    ids: list[str]
    scores: NDArray[np.float32]
    fields: dict[str, list[Any]]

    @classmethod
    def of(cls, hits: Iterable[Hit], output_fields: Sequence[str] = ()) -> Hits:
        """Columns from row objects (a fake index, Milvus Lite's results)."""
        rows = list(hits)
        return cls(
            [hit.id for hit in rows],
            np.array([hit.score for hit in rows], dtype=np.float32),
            {name: [hit.fields.get(name) for hit in rows] for name in output_fields},
        )

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[Hit]:
        return map(self.__getitem__, range(len(self.ids)))

    def __getitem__(self, i: int) -> Hit:
        return Hit(self.ids[i], float(self.scores[i]), {name: values[i] for name, values in self.fields.items()})

    def top(self, limit: int) -> Hits:
        """The best `limit` hits."""
        if limit >= len(self.ids):
            return self
        return Hits(self.ids[:limit], self.scores[:limit], {name: v[:limit] for name, v in self.fields.items()})


class HistoryEntry(NamedTuple):
    """One clicked item of a Recommend request: its id, or a title for an item the catalog may not know.
    A NamedTuple, not a frozen dataclass: up to `max_history_items` are built per request, and a tuple is
    built in half the time."""

    item_id: str
    title: str


@dataclass(frozen=True, slots=True)
class RecommendQuery:
    user_id: str
    history: tuple[HistoryEntry, ...]
    k: int
    filters: Filters
    exclude_seen: bool
    diversity: float


@dataclass(frozen=True, slots=True)
class SearchQuery:
    text: str
    k: int
    filters: Filters


@dataclass(frozen=True, slots=True)
class AnswerQuery:
    question: str
    k: int
    filters: Filters
    max_tokens: int | None  # None: the LLM client's default
    temperature: float | None  # None: the LLM client's default


@dataclass(frozen=True, slots=True)
class NewsRecord:
    item_id: str
    title: str
    category: str
    subcategory: str
    abstract: str
    published: int  # unix seconds, 0 = unknown
    popularity: float


@dataclass(frozen=True, slots=True)
class PassageRecord:
    item_id: str
    text: str
    title: str
    category: str
    doc_id: str
    published: int


@dataclass(frozen=True, slots=True)
class FeedbackEvent:
    """What the user did with one served answer: the items clicked (may be none) and when it was shown."""

    impression_id: str
    clicked: tuple[str, ...]
    shown_at: int | None  # unix seconds; None: when the gateway served it
