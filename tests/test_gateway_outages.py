"""A dependency that goes down gets UNAVAILABLE quickly and NOT_SERVING health; the gateway recovers
by itself when it comes back. Each test restarts what it stopped, so the shared stack stays usable."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from waiting import wait_until

from recstack.v1 import gateway_pb2 as pb
from server.health import ANSWER_SERVICE, SERVICE

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
    assert search(gateway).passages  # SERVING means the search channel is connected too


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


@pytest.mark.parametrize("part", ["milvus", "triton"])
def test_a_hanging_dependency_fails_fast_once_its_calls_stall_with_no_resource_exhausted(stack, gateway, part) -> None:
    """SIGSTOP: the dependency keeps its port open and answers nothing, as Milvus does while it restarts. The
    first calls wait out its 2 s deadline; once calls have waited `stall_after_s` (1 s) unanswered, its circuit
    opens and Search fails at once with UNAVAILABLE (never RESOURCE_EXHAUSTED from slots held by hanging calls);
    after SIGCONT a trial call finds it answering and Search serves again."""
    codes: list[grpc.StatusCode] = []
    group = getattr(stack, part).pid
    os.killpg(group, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(16) as pool:  # 16 at once: above admission's initial limit for Search
            futures = [pool.submit(search_code, gateway) for _ in range(48)]
            codes += [future.result()[0] for future in futures]
        code, elapsed = search_code(gateway)
        assert code == grpc.StatusCode.UNAVAILABLE and elapsed < 0.5, (code, elapsed)  # failing fast now
    finally:
        os.killpg(group, signal.SIGCONT)
    assert set(codes) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}, codes
    wait_until(lambda: search_code(gateway)[0] == grpc.StatusCode.OK, 30, "search answering again")


def search_code(gateway) -> tuple[grpc.StatusCode, float]:
    started = time.monotonic()
    try:
        search(gateway)
    except grpc.RpcError as error:
        return error.code(), time.monotonic() - started
    return grpc.StatusCode.OK, time.monotonic() - started
