"""Request validation and the error -> gRPC status mapping, without a server."""

from __future__ import annotations

import grpc
import pytest
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
    assert answer.k == 2 and answer.max_tokens == 0


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


class AbortingContext:
    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise grpc.aio.AbortError()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("raised", "code", "details"),
    [
        (InvalidArgument("query", "must not be empty"), grpc.StatusCode.INVALID_ARGUMENT, "query: must not be empty"),
        (RuntimeError("secret internals"), grpc.StatusCode.INTERNAL, "internal error in Search"),
    ],
)
async def test_observed_aborts_with_the_mapped_status(raised: Exception, code, details: str) -> None:
    context = AbortingContext()
    with pytest.raises(grpc.aio.AbortError):
        async with observed("Search", context):
            raise raised
    assert context.aborted == (code, details)
