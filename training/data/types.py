"""In-memory records for the two data formats the project trains on.

MIND (news recommendation) and MS MARCO passage ranking (document search). Loaders in
`training.data.mind` / `training.data.msmarco` produce these; builders write files that those
loaders read back, so real MIND / MS MARCO files and the offline demo sets share one code path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class NewsArticle:
    """One row of MIND's `news.tsv` (entity columns kept raw, as JSON text)."""

    news_id: str
    category: str
    subcategory: str
    title: str
    abstract: str = ""
    url: str = ""
    title_entities: str = "[]"
    abstract_entities: str = "[]"
    # Not a MIND column: when the article appeared (sidecar file, or first impression time for real MIND).
    published: datetime | None = None


@dataclass(frozen=True, slots=True)
class Impression:
    """One row of MIND's `behaviors.tsv`.

    `labels` is None for unlabeled impressions (MIND's test split writes `N123` without `-0/-1`).
    An empty `history` is legal (new users) and stays an empty tuple.
    """

    impression_id: str
    user_id: str
    time: datetime
    history: tuple[str, ...]
    candidates: tuple[str, ...]
    labels: tuple[int, ...] | None


@dataclass(slots=True)
class MindSplit:
    """A MIND split: its news catalog and its impression log."""

    news: dict[str, NewsArticle]
    impressions: list[Impression]


@dataclass(slots=True)
class RetrievalSplit:
    """MS MARCO-style queries with graded relevance judgements (qid -> {pid: grade})."""

    queries: dict[str, str]
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PassageMeta:
    """Sidecar metadata for a passage (not part of MS MARCO's collection.tsv)."""

    doc_id: str
    title: str
    category: str
    published: datetime | None = None
