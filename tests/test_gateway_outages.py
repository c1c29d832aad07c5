"""A dependency that goes down gets UNAVAILABLE quickly and NOT_SERVING health; the gateway recovers
by itself when it comes back. Each test restarts what it stopped, so the shared stack stays usable."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recstack.v1 import gateway_pb2 as pb
from server.health import ANSWER_SERVICE, SERVICE
from tests.waiting import wait_until

pytestmark = pytest.mark.stack

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def health(stack):
    with grpc.insecure_channel(stack.gateway_address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        yield lambda service: stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def search(gateway) -> pb.SearchResponse:
    return gateway.Search(pb.SearchRequest(query="markets", k=3), timeout=5)


def assert_unavailable(call: Callable[[], object]) -> None:
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
    assert time.monotonic() - started < 5  # fails fast; the deadline was 5 s


def test_triton_down_is_unavailable_then_recovers(stack, gateway, health) -> None:
    stack.triton.stop()
    try:
        assert_unavailable(lambda: search(gateway))
        assert_unavailable(lambda: gateway.Recommend(pb.RecommendRequest(history=[pb.HistoryItem(title="t")], k=3)))
        wait_until(lambda: health(SERVICE) == NOT_SERVING, 10, "health NOT_SERVING")
    finally:
        stack.triton.start()
    wait_until(lambda: health(SERVICE) == SERVING, 60, "health SERVING again")
    assert search(gateway).passages


def test_milvus_down_is_unavailable_then_recovers(stack, gateway, health) -> None:
    stack.milvus.stop()
    try:
        assert_unavailable(lambda: search(gateway))
        wait_until(lambda: health(SERVICE) == NOT_SERVING, 10, "health NOT_SERVING")
    finally:
        stack.milvus.start()
    wait_until(lambda: health(SERVICE) == SERVING, 120, "health SERVING again")
    wait_until(lambda: bool(search(gateway).passages), 30, "search answering again")


def test_llm_down_fails_answer_only_then_recovers(stack, gateway, health) -> None:
    stack.llm.stop()
    try:
        assert_unavailable(lambda: list(gateway.Answer(pb.AnswerRequest(question="why?"), timeout=5)))
        wait_until(lambda: health(ANSWER_SERVICE) == NOT_SERVING, 10, "Answer health NOT_SERVING")
        assert health(SERVICE) == SERVING  # Recommend and Search are unaffected
        assert search(gateway).passages
    finally:
        stack.llm.start()
    wait_until(lambda: health(ANSWER_SERVICE) == SERVING, 60, "Answer health SERVING again")
    chunks = list(gateway.Answer(pb.AnswerRequest(question="why?", max_tokens=4), timeout=60))
    assert chunks[-1].done.completion_tokens > 0
