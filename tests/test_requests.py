"""Request validation and the error -> gRPC status mapping, without a server."""

from __future__ import annotations

import grpc
import pytest
import structlog.testing
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from recstack.v1 import gateway_pb2 as pb
from server.config import GatewaySettings, RagSettings
from server.errors import DependencyTimeout, DependencyUnavailable, InvalidArgument, NotFound, Overloaded
from server.requests import RequestValidator
from server.rpc import observed, status_for

validator = RequestValidator(GatewaySettings())


def test_defaults_and_typed_values() -> None:
    query = validator.recommend(
        pb.RecommendRequest(
            user_id="u",
            history=[pb.HistoryItem(id="N1"), pb.HistoryItem(title="A title")],
            k=5,
            filters=pb.Filters(categories=["sports"], published_after=Timestamp(seconds=7)),
        )
    )
    assert query.exclude_seen is True and query.k == 5 and len(query.history) == 2
    assert query.filters.categories == ("sports",) and query.filters.published_after == 7
    assert validator.recommend(pb.RecommendRequest(k=1, exclude_seen=False)).exclude_seen is False
    answer = validator.answer(pb.AnswerRequest(question="why?"), RagSettings(default_k=2))
    assert answer.k == 2 and answer.max_tokens is None and answer.temperature is None


@given(query=st.text(max_size=3000), k=st.integers(min_value=-(2**31), max_value=2**31 - 1))
def test_any_search_request_is_either_valid_or_names_its_field(query: str, k: int) -> None:
    try:
        search = validator.search(pb.SearchRequest(query=query, k=k))
    except InvalidArgument as error:
        assert error.field in {"query", "k"}
        assert str(error).startswith(f"{error.field}:")
    else:
        assert query.strip() and 1 <= search.k <= 100 and len(query) <= 2000


@given(categories=st.lists(st.text(max_size=80), max_size=60))
def test_any_category_filter_is_either_valid_or_names_the_entry(categories: list[str]) -> None:
    try:
        filters = validator.search(pb.SearchRequest(query="q", k=1, filters=pb.Filters(categories=categories))).filters
    except InvalidArgument as error:
        assert error.field == "filters.categories" or error.field.startswith("filters.categories[")
    else:
        assert list(filters.categories) == categories


# "é" is 2 bytes in UTF-8 and "日" 3: at the limit in bytes, and one character over it.
@pytest.mark.parametrize(
    ("item_id", "accepted"), [("é" * 32, True), ("é" * 33, False), ("日" * 21 + "a", True), ("日" * 22, False)]
)
def test_ids_are_limited_in_utf8_bytes_and_the_error_names_the_field(item_id: str, accepted: bool) -> None:
    history = [pb.HistoryItem(id=f"N{i}") for i in range(3)] + [pb.HistoryItem(id=item_id)]
    request = pb.RecommendRequest(k=1, history=history)
    if accepted:
        assert validator.recommend(request).history[3].item_id == item_id
        return
    with pytest.raises(InvalidArgument) as caught:
        validator.recommend(request)
    size = len(item_id.encode())
    assert str(caught.value) == f"history[3].id: must be at most 64 bytes in UTF-8, got {size}"


def entry_by_entry(validator: RequestValidator, history: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The history rules applied one entry at a time (the reference for the column-wise check)."""
    checked = []
    for i, (item_id, title) in enumerate(history):
        checked.append(
            (
                validator._id(item_id, f"history[{i}].id", required=False),
                validator._text(title, f"history[{i}].title", False),
            )
        )
    return checked


# any UTF-8 text (control characters, spaces, multi-byte), plus values just over each limit
history_text = st.text(st.characters(codec="utf-8"), max_size=30) | st.sampled_from(
    ["日" * 14, "é" * 21, "😀" * 11, "a b", "x" * 51]
)


@given(history=st.lists(st.tuples(history_text, history_text), max_size=12))
def test_the_history_is_checked_as_columns_with_the_entry_by_entry_outcome(history: list[tuple[str, str]]) -> None:
    strict = RequestValidator(GatewaySettings(max_id_bytes=40, max_text_chars=50))
    request = pb.RecommendRequest(k=1, history=[pb.HistoryItem(id=i, title=t) for i, t in history])
    try:
        expected: list[tuple[str, str]] | InvalidArgument = entry_by_entry(strict, history)
    except InvalidArgument as error:
        expected = error
    try:
        got: list[tuple[str, str]] | InvalidArgument = [(e.item_id, e.title) for e in strict.recommend(request).history]
    except InvalidArgument as error:
        got = error
    if isinstance(expected, InvalidArgument):
        assert isinstance(got, InvalidArgument) and (got.field, str(got)) == (expected.field, str(expected))
    else:
        assert got == expected


@pytest.mark.parametrize(("category", "accepted"), [("é" * 64, True), ("é" * 65, False), ("日" * 43, False)])
def test_categories_are_limited_in_utf8_bytes(category: str, accepted: bool) -> None:
    news = pb.NewsItem(id="N1", title="t", category="news", subcategory=category)
    request = pb.UpsertItemsRequest(news=[news])
    if accepted:
        assert validator.upsert(request)[0][0].subcategory == category
        return
    with pytest.raises(InvalidArgument) as caught:
        validator.upsert(request)
    size = len(category.encode())
    assert str(caught.value) == f"news[0].subcategory: must be at most 128 bytes in UTF-8, got {size}"


def test_request_limits_come_from_the_settings() -> None:
    strict = RequestValidator(
        GatewaySettings(max_id_bytes=4, max_category_bytes=4, max_history_items=2, max_filter_categories=1)
    )
    cases = [
        (pb.RecommendRequest(k=1, history=[pb.HistoryItem(id="N1")] * 3), "history"),
        (pb.RecommendRequest(k=1, user_id="u-12345"), "user_id"),
        (pb.RecommendRequest(k=1, filters=pb.Filters(categories=["a", "b"])), "filters.categories"),
        (pb.RecommendRequest(k=1, filters=pb.Filters(categories=["sports"])), "filters.categories[0]"),
    ]
    for request, field in cases:
        with pytest.raises(InvalidArgument) as caught:
            strict.recommend(request)
        assert caught.value.field == field
    assert strict.recommend(pb.RecommendRequest(k=1, user_id="u-12", history=[pb.HistoryItem(id="N1")] * 2))


def test_answer_generation_options_are_optional_and_zero_temperature_is_kept() -> None:
    rag = RagSettings()
    greedy = validator.answer(pb.AnswerRequest(question="why?", temperature=0.0, max_tokens=7), rag)
    assert (greedy.temperature, greedy.max_tokens) == (0.0, 7)
    for request, field in [
        (pb.AnswerRequest(question="why?", max_tokens=0), "max_tokens"),
        (pb.AnswerRequest(question="why?", max_tokens=rag.max_tokens_limit + 1), "max_tokens"),
        (pb.AnswerRequest(question="why?", temperature=rag.max_temperature + 0.5), "temperature"),
        (pb.AnswerRequest(question="why?", temperature=float("nan")), "temperature"),
    ]:
        with pytest.raises(InvalidArgument) as caught:
            validator.answer(request, rag)
        assert caught.value.field == field


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidArgument("k", "bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (NotFound("no such model"), grpc.StatusCode.NOT_FOUND),
        (DependencyUnavailable("milvus", "refused"), grpc.StatusCode.UNAVAILABLE),
        (DependencyTimeout("triton", "slow"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (Overloaded("queue full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    ],
)
def test_each_component_error_has_one_status(error: Exception, code: grpc.StatusCode) -> None:
    assert status_for(error) == code


class StatusContext:
    """Records the status `observed` ends an RPC with, as a grpc.aio servicer context holds it."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.trailing: tuple[tuple[str, str], ...] = ()

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.trailing = metadata

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise AssertionError("observed ends an RPC through its context's status, not abort")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("raised", "code", "details"),
    [
        (InvalidArgument("query", "must not be empty"), grpc.StatusCode.INVALID_ARGUMENT, "query: must not be empty"),
        (RuntimeError("secret internals"), grpc.StatusCode.INTERNAL, "internal error in Search"),
    ],
)
async def test_observed_ends_with_the_mapped_status(raised: Exception, code, details: str) -> None:
    context = StatusContext()
    async with observed("Search", context):
        raise raised
    assert (context.code, context.details) == (code, details)


@pytest.mark.anyio
async def test_observed_leaves_a_successful_rpc_its_ok_status() -> None:
    context = StatusContext()
    async with observed("Search", context):
        pass
    assert context.code is None


@pytest.mark.anyio
async def test_shed_requests_are_counted_not_logged_and_failures_are_logged() -> None:
    """A warning per rejected request cost ~10 % of the gateway's CPU under overload: shedding is not logged."""
    for raised, logged in [
        (Overloaded("limit", retry_pushback_ms=40), False),
        (DependencyUnavailable("milvus", "x"), True),
    ]:
        context = StatusContext()
        with structlog.testing.capture_logs() as logs:
            async with observed("Recommend", context):
                raise raised
        assert [entry["event"] for entry in logs] == (["rpc_failed"] if logged else [])
        assert context.code == status_for(raised)


@pytest.mark.anyio
async def test_a_rejection_carries_its_retry_pushback() -> None:
    context = StatusContext()
    async with observed("Recommend", context):
        raise Overloaded("limit", retry_pushback_ms=40)
    assert context.trailing == (("grpc-retry-pushback-ms", "40"),)
