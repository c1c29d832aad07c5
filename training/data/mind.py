"""Read and write MIND's real file formats (news.tsv, behaviors.tsv) plus a `published` sidecar.

news.tsv — 8 tab-separated columns, no header:
    news_id, category, subcategory, title, abstract, url, title_entities, abstract_entities
    (abstract and the entity columns may be empty; entity columns are kept as raw JSON text).
behaviors.tsv — 5 tab-separated columns, no header:
    impression_id, user_id, time (`11/15/2019 8:55:22 AM`), history (space-separated news ids,
    may be empty), impressions (`N123-1 N456-0`; the test split writes `N123` without labels).
news_published.tsv — NOT a MIND file: `news_id \\t ISO-8601 datetime`, read from beside news.tsv
    when present to fill `NewsArticle.published`. Real MIND has no publication time; derive one
    with `infer_published` (first impression that showed the item).

Rules. Format errors always raise `DataFormatError` with file and 1-based line: wrong column
count, bad time, bad label, an impression mixing labeled and unlabeled candidates, empty
candidate list, duplicate news or impression id. News ids must not contain `-` or whitespace
(the label separator). Referential errors — a history or candidate id missing from news.tsv —
raise too when `strict=True` (the default); with `strict=False` unknown history ids are dropped
from the history and impressions with an unknown candidate are skipped, both counted and logged.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from training.data.errors import DataFormatError
from training.data.tsv import check_identifier, iter_tsv, parse_iso_time, require_identifier, write_tsv
from training.data.types import Impression, MindSplit, NewsArticle

logger = logging.getLogger(__name__)

NEWS_FILE = "news.tsv"
BEHAVIORS_FILE = "behaviors.tsv"
PUBLISHED_FILE = "news_published.tsv"

NEWS_COLUMNS = (
    "news_id",
    "category",
    "subcategory",
    "title",
    "abstract",
    "url",
    "title_entities",
    "abstract_entities",
)
BEHAVIORS_COLUMNS = ("impression_id", "user_id", "time", "history", "impressions")
PUBLISHED_COLUMNS = ("news_id", "published")
MIND_TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"


def parse_mind_time(text: str) -> datetime:
    """Parse MIND's `11/15/2019 8:55:22 AM` (zero padding optional); ValueError if malformed."""
    return datetime.strptime(text, MIND_TIME_FORMAT)


def format_mind_time(time: datetime) -> str:
    """Format like MIND does (`M/D/YYYY H:MM:SS AM`); refuses times the format cannot hold."""
    if time.microsecond or time.tzinfo is not None:
        raise ValueError(f"MIND times are naive and whole seconds, got {time.isoformat()}")
    hour = time.hour % 12 or 12
    return f"{time.month}/{time.day}/{time.year} {hour}:{time:%M:%S} {time:%p}"


def load_news(path: str | Path) -> dict[str, NewsArticle]:
    """Read news.tsv (and `news_published.tsv` beside it, if present) into {news_id: article}."""
    path = Path(path)
    news: dict[str, NewsArticle] = {}
    for line, fields in iter_tsv(path, NEWS_COLUMNS):
        news_id = require_identifier(path, line, "news_id", fields[0])
        if "-" in news_id:
            raise DataFormatError(path, line, f"news_id {news_id!r} contains '-' (MIND's label separator)")
        if news_id in news:
            raise DataFormatError(path, line, f"duplicate news_id {news_id!r}")
        news[news_id] = NewsArticle(*fields)
    published_path = path.with_name(PUBLISHED_FILE)
    if published_path.exists():
        for news_id, published in load_published(published_path, known_news=news).items():
            news[news_id] = replace(news[news_id], published=published)
    return news


def load_published(path: str | Path, known_news: Collection[str]) -> dict[str, datetime]:
    """Read the `news_id \\t ISO datetime` sidecar; every id must be in `known_news`."""
    path = Path(path)
    published: dict[str, datetime] = {}
    for line, (news_id, text) in iter_tsv(path, PUBLISHED_COLUMNS):
        if news_id not in known_news:
            raise DataFormatError(path, line, f"news_id {news_id!r} is not in {NEWS_FILE}")
        if news_id in published:
            raise DataFormatError(path, line, f"duplicate news_id {news_id!r}")
        published[news_id] = parse_iso_time(path, line, "published", text)
    return published


def load_behaviors(
    path: str | Path, *, known_news: Collection[str] | None = None, strict: bool = True
) -> list[Impression]:
    """Read behaviors.tsv; with `known_news`, check every referenced id (see module rules)."""
    path = Path(path)
    impressions: list[Impression] = []
    seen_ids: set[str] = set()
    dropped_history_ids = skipped_impressions = 0
    for line, fields in iter_tsv(path, BEHAVIORS_COLUMNS):
        impression = _parse_impression(path, line, fields)
        if impression.impression_id in seen_ids:
            raise DataFormatError(path, line, f"duplicate impression_id {impression.impression_id!r}")
        seen_ids.add(impression.impression_id)
        if known_news is not None:
            unknown_history = [news_id for news_id in impression.history if news_id not in known_news]
            unknown_candidates = [news_id for news_id in impression.candidates if news_id not in known_news]
            if strict and (unknown_history or unknown_candidates):
                missing = (unknown_history + unknown_candidates)[:3]
                raise DataFormatError(path, line, f"news ids not in {NEWS_FILE}: {missing}")
            if unknown_candidates:
                skipped_impressions += 1
                continue
            if unknown_history:
                dropped_history_ids += len(unknown_history)
                history = tuple(news_id for news_id in impression.history if news_id in known_news)
                impression = replace(impression, history=history)
        impressions.append(impression)
    if dropped_history_ids or skipped_impressions:
        logger.warning(
            "%s: skipped %d impressions with candidates missing from %s and dropped %d unknown history ids",
            path,
            skipped_impressions,
            NEWS_FILE,
            dropped_history_ids,
        )
    return impressions


def _parse_impression(path: Path, line: int, fields: list[str]) -> Impression:
    impression_id, user_id, time_text, history_text, impressions_text = fields
    try:
        time = parse_mind_time(time_text)
    except ValueError:
        raise DataFormatError(path, line, f"time {time_text!r} is not like '11/15/2019 8:55:22 AM'") from None
    tokens = impressions_text.split()
    if not tokens:
        raise DataFormatError(path, line, "impressions column is empty")
    labeled_tokens = sum("-" in token for token in tokens)
    if labeled_tokens not in (0, len(tokens)):
        raise DataFormatError(path, line, "impressions mix labeled (N1-0) and unlabeled (N1) candidates")
    is_labeled = labeled_tokens > 0
    candidates: list[str] = []
    labels: list[int] = []
    for token in tokens:
        news_id = token
        if is_labeled:
            news_id, _, label = token.rpartition("-")
            if label not in ("0", "1"):
                raise DataFormatError(path, line, f"impression {token!r}: label must be 0 or 1")
            labels.append(int(label))
        candidates.append(require_identifier(path, line, "candidate news_id", news_id))
    return Impression(
        impression_id=require_identifier(path, line, "impression_id", impression_id),
        user_id=require_identifier(path, line, "user_id", user_id),
        time=time,
        history=tuple(history_text.split()),
        candidates=tuple(candidates),
        labels=tuple(labels) if is_labeled else None,
    )


def load_mind_split(directory: str | Path, *, strict: bool = True) -> MindSplit:
    """Read `news.tsv` and `behaviors.tsv` of one split folder, checking ids against the news."""
    directory = Path(directory)
    news = load_news(directory / NEWS_FILE)
    impressions = load_behaviors(directory / BEHAVIORS_FILE, known_news=news, strict=strict)
    return MindSplit(news=news, impressions=impressions)


def write_news(path: str | Path, news: Iterable[NewsArticle]) -> int:
    """Write news.tsv exactly as MIND does; also writes `news_published.tsv` beside it if any
    article has `published` (so `load_news` reads back what was written). Returns the row count."""
    path = Path(path)
    articles = list(news)
    for article in articles:
        check_identifier("news_id", article.news_id, forbidden="-")
    rows = ([getattr(article, column) for column in NEWS_COLUMNS] for article in articles)
    count = write_tsv(path, NEWS_COLUMNS, rows)
    dated = [article for article in articles if article.published is not None]
    if dated:
        write_tsv(
            path.with_name(PUBLISHED_FILE),
            PUBLISHED_COLUMNS,
            ([article.news_id, article.published.isoformat()] for article in dated),
        )
    return count


def write_behaviors(path: str | Path, impressions: Iterable[Impression]) -> int:
    """Write behaviors.tsv exactly as MIND does (unlabeled impressions as bare ids)."""
    return write_tsv(Path(path), BEHAVIORS_COLUMNS, (_impression_row(impression) for impression in impressions))


def _impression_row(impression: Impression) -> list[str]:
    if not impression.candidates:
        raise ValueError(f"impression {impression.impression_id}: no candidates")
    if impression.labels is None:
        tokens = list(impression.candidates)
    else:
        if len(impression.labels) != len(impression.candidates) or set(impression.labels) - {0, 1}:
            raise ValueError(f"impression {impression.impression_id}: labels must be one 0/1 per candidate")
        tokens = [f"{news_id}-{label}" for news_id, label in zip(impression.candidates, impression.labels, strict=True)]
    for news_id in (*impression.history, *impression.candidates):
        check_identifier("news_id", news_id, forbidden="-")
    return [
        check_identifier("impression_id", impression.impression_id),
        check_identifier("user_id", impression.user_id),
        format_mind_time(impression.time),
        " ".join(impression.history),
        " ".join(tokens),
    ]


def infer_published(news: Mapping[str, NewsArticle], impressions: Iterable[Impression]) -> dict[str, NewsArticle]:
    """Fill missing `published` with the first time an impression showed the item as a candidate.

    This is how a publication time is derived for real MIND. Items never shown as candidates
    (only in histories) keep `published=None`; items with a time already keep it.
    """
    first_shown: dict[str, datetime] = {}
    for impression in impressions:
        for news_id in impression.candidates:
            if news_id not in first_shown or impression.time < first_shown[news_id]:
                first_shown[news_id] = impression.time
    return {
        news_id: article
        if article.published is not None or news_id not in first_shown
        else replace(article, published=first_shown[news_id])
        for news_id, article in news.items()
    }
