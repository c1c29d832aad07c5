"""Validated, typed requests: protobuf messages in, `server.domain` dataclasses out, or `InvalidArgument` naming
the field.

Everything a pipeline stage receives has passed through here, so stages never re-check input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

from recstack.v1 import gateway_pb2 as pb
from server.config import GatewaySettings, RagSettings
from server.domain import (
    AnswerQuery,
    FeedbackEvent,
    Filters,
    HistoryEntry,
    NewsRecord,
    PassageRecord,
    RecommendQuery,
    SearchQuery,
)
from server.errors import InvalidArgument


class _HasTimestamp(Protocol):
    seconds: int
    nanos: int


class RequestValidator:
    """Turns each RPC's request message into its typed query, enforcing the configured limits."""

    def __init__(self, limits: GatewaySettings) -> None:
        self.limits = limits

    def recommend(self, request: pb.RecommendRequest) -> RecommendQuery:
        most = self.limits.max_history_items
        if len(request.history) > most:
            raise InvalidArgument("history", f"at most {most} items, got {len(request.history)}")
        history = self._history(request.history)
        diversity = request.diversity
        if not math.isfinite(diversity) or not 0.0 <= diversity <= 1.0:
            raise InvalidArgument("diversity", f"must be within [0, 1], got {diversity}")
        return RecommendQuery(
            user_id=self._id(request.user_id, "user_id", required=False),
            history=history,
            k=self._k(request.k),
            filters=self._filters(request),
            exclude_seen=request.exclude_seen if request.HasField("exclude_seen") else True,
            diversity=diversity,
        )

    def _history(self, entries: Sequence[pb.HistoryItem]) -> tuple[HistoryEntry, ...]:
        """The history's entries, checked as whole columns first: the same rules as `_id` and `_text`, without
        a field name formatted and two checks called per entry (a Recommend carries up to `max_history_items`;
        the per-entry checks were ~5 % of the gateway's py-spy samples under overload). Only when a column fails
        are the entries checked one by one, to name the field."""
        ids = [entry.id for entry in entries]
        titles = [entry.title for entry in entries]
        joined = "".join(ids)
        ids_ok = joined.isprintable() and " " not in joined and self._all_within_bytes(ids, self.limits.max_id_bytes)
        if not ids_ok or max(map(len, titles), default=0) > self.limits.max_text_chars:
            for i, (item_id, title) in enumerate(zip(ids, titles, strict=True)):
                self._id(item_id, f"history[{i}].id", required=False)
                self._text(title, f"history[{i}].title", required=False)
        return tuple(map(HistoryEntry, ids, titles))

    @staticmethod
    def _all_within_bytes(values: list[str], most: int) -> bool:
        """Whether every value is at most `most` bytes in UTF-8 (by length first: 1 to 4 bytes per character)."""
        longest = max(map(len, values), default=0)
        if longest * 4 <= most:  # UTF-8 takes at most 4 bytes per character
            return True
        if longest > most:
            return False
        return all(len(value.encode()) <= most for value in values)

    def search(self, request: pb.SearchRequest) -> SearchQuery:
        return SearchQuery(
            text=self._text(request.query, "query"), k=self._k(request.k), filters=self._filters(request)
        )

    def answer(self, request: pb.AnswerRequest, rag: RagSettings) -> AnswerQuery:
        if not 0 <= request.k <= rag.max_k:
            raise InvalidArgument("k", f"must be within [1, {rag.max_k}] (0 = default {rag.default_k})")
        return AnswerQuery(
            question=self._text(request.question, "question"),
            k=request.k or rag.default_k,
            filters=self._filters(request),
            max_tokens=self._max_tokens(request, rag.max_tokens_limit),
            temperature=self._temperature(request, rag.max_temperature),
        )

    def upsert(self, request: pb.UpsertItemsRequest) -> tuple[list[NewsRecord], list[PassageRecord]]:
        total = len(request.news) + len(request.passages)
        if total == 0:
            raise InvalidArgument("news", "nothing to upsert: news and passages are both empty")
        if total > self.limits.max_upsert_batch:
            raise InvalidArgument("news", f"at most {self.limits.max_upsert_batch} items per call, got {total}")
        news = [self._news(item, f"news[{i}]") for i, item in enumerate(request.news)]
        passages = [self._passage(item, f"passages[{i}]") for i, item in enumerate(request.passages)]
        self._unique([n.item_id for n in news], "news")
        self._unique([p.item_id for p in passages], "passages")
        return news, passages

    def delete(self, request: pb.DeleteItemsRequest) -> tuple[list[str], list[str]]:
        if not request.news_ids and not request.passage_ids:
            raise InvalidArgument("news_ids", "nothing to delete: news_ids and passage_ids are both empty")
        if len(request.news_ids) + len(request.passage_ids) > self.limits.max_upsert_batch:
            raise InvalidArgument("news_ids", f"at most {self.limits.max_upsert_batch} ids per call")
        news = [self._id(v, f"news_ids[{i}]") for i, v in enumerate(request.news_ids)]
        passages = [self._id(v, f"passage_ids[{i}]") for i, v in enumerate(request.passage_ids)]
        return news, passages

    def feedback(self, request: pb.LogFeedbackRequest, max_events: int) -> list[FeedbackEvent]:
        """The events' shapes; whether the ids were served is checked against what was (`server.feedback`)."""
        if not 1 <= len(request.events) <= max_events:
            raise InvalidArgument("events", f"need 1 to {max_events} events per call, got {len(request.events)}")
        return [self._feedback_event(event, f"events[{i}]") for i, event in enumerate(request.events)]

    def _feedback_event(self, event: pb.FeedbackEvent, field: str) -> FeedbackEvent:
        clicked = [self._id(v, f"{field}.clicked_item_ids[{i}]") for i, v in enumerate(event.clicked_item_ids)]
        self._unique(clicked, f"{field}.clicked_item_ids", suffix="")
        return FeedbackEvent(
            impression_id=self._id(event.impression_id, f"{field}.impression_id"),
            clicked=tuple(clicked),
            shown_at=self._time(event.shown_at, f"{field}.shown_at") if event.HasField("shown_at") else None,
        )

    def _news(self, item: pb.NewsItem, field: str) -> NewsRecord:
        if not math.isfinite(item.popularity) or item.popularity < 0:
            raise InvalidArgument(f"{field}.popularity", f"must be a finite number >= 0, got {item.popularity}")
        return NewsRecord(
            item_id=self._id(item.id, f"{field}.id"),
            title=self._text(item.title, f"{field}.title"),
            category=self._category(item.category, f"{field}.category"),
            subcategory=self._category(item.subcategory, f"{field}.subcategory"),
            abstract=self._text(item.abstract, f"{field}.abstract", required=False),
            published=self._time(item.published, f"{field}.published") if item.HasField("published") else 0,
            popularity=item.popularity,
        )

    def _passage(self, item: pb.PassageItem, field: str) -> PassageRecord:
        return PassageRecord(
            item_id=self._id(item.id, f"{field}.id"),
            text=self._text(item.text, f"{field}.text", limit=self.limits.max_upsert_passage_chars),
            title=self._text(item.title, f"{field}.title", required=False),
            category=self._category(item.category, f"{field}.category"),
            doc_id=self._id(item.doc_id, f"{field}.doc_id", required=False),
            published=self._time(item.published, f"{field}.published") if item.HasField("published") else 0,
        )

    @staticmethod
    def _max_tokens(request: pb.AnswerRequest, most: int) -> int | None:
        """The requested generation length, None when unset (the server's default)."""
        if not request.HasField("max_tokens"):
            return None
        if not 1 <= request.max_tokens <= most:
            raise InvalidArgument("max_tokens", f"must be within [1, {most}] when set, got {request.max_tokens}")
        return request.max_tokens

    @staticmethod
    def _temperature(request: pb.AnswerRequest, most: float) -> float | None:
        """The requested sampling temperature (0 included), None when unset (the server's default)."""
        if not request.HasField("temperature"):
            return None
        temperature = request.temperature
        if not math.isfinite(temperature) or not 0.0 <= temperature <= most:
            raise InvalidArgument("temperature", f"must be within [0, {most}] when set, got {temperature}")
        return temperature

    def _k(self, k: int) -> int:
        if not 1 <= k <= self.limits.max_k:
            raise InvalidArgument("k", f"must be within [1, {self.limits.max_k}], got {k}")
        return k

    def _filters(self, request: pb.RecommendRequest | pb.SearchRequest | pb.AnswerRequest) -> Filters:
        if not request.HasField("filters"):
            return Filters()
        filters = request.filters
        most = self.limits.max_filter_categories
        if len(filters.categories) > most:
            raise InvalidArgument("filters.categories", f"at most {most} categories, got {len(filters.categories)}")
        categories = tuple(
            self._category(c, f"filters.categories[{i}]", required=True) for i, c in enumerate(filters.categories)
        )
        after = None
        if filters.HasField("published_after"):
            after = self._time(filters.published_after, "filters.published_after")
        return Filters(categories=categories, published_after=after)

    def _id(self, value: str, field: str, required: bool = True) -> str:
        if required and not value:
            raise InvalidArgument(field, "must not be empty")
        self._fits_bytes(value, field, self.limits.max_id_bytes)
        if not value.isprintable() or " " in value:  # the only printable whitespace is the ASCII space
            raise InvalidArgument(field, "must not contain whitespace or control characters")
        return value

    def _text(self, value: str, field: str, required: bool = True, limit: int | None = None) -> str:
        limit = limit or self.limits.max_text_chars
        if required and not value.strip():
            raise InvalidArgument(field, "must not be empty")
        if len(value) > limit:
            raise InvalidArgument(field, f"at most {limit} characters, got {len(value)}")
        return value

    def _category(self, value: str, field: str, required: bool = False) -> str:
        if required and not value:
            raise InvalidArgument(field, "must not be empty")
        self._fits_bytes(value, field, self.limits.max_category_bytes)
        if not value.isprintable():
            raise InvalidArgument(field, "must not contain control characters")
        return value

    @staticmethod
    def _fits_bytes(value: str, field: str, most: int) -> None:
        """Milvus bounds VARCHARs in UTF-8 bytes, so a short non-ASCII string may still not fit."""
        size = len(value.encode())
        if size > most:
            raise InvalidArgument(field, f"must be at most {most} bytes in UTF-8, got {size}")

    @staticmethod
    def _time(value: _HasTimestamp, field: str) -> int:
        if value.seconds < 0 or not 0 <= value.nanos < 1_000_000_000:
            raise InvalidArgument(field, "must be a valid timestamp after 1970-01-01")
        return value.seconds

    @staticmethod
    def _unique(ids: list[str], field: str, suffix: str = ".id") -> None:
        seen: set[str] = set()
        for i, item_id in enumerate(ids):
            if item_id in seen:
                raise InvalidArgument(f"{field}[{i}]{suffix}", f"duplicate id {item_id!r} in one request")
            seen.add(item_id)
