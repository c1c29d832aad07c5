"""Admission control in an in-process gRPC gateway over gated fakes (see gateway_fixtures): functional, not
timed. Over the limit, or with too short a deadline, a Recommend is rejected with RESOURCE_EXHAUSTED and a
retry pushback while the admitted ones are still held, and neither Triton nor Milvus sees it."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from gateway_fixtures import calls_since, dependency_calls, gateway, ids, recommend, sample, until

from recstack.v1 import gateway_pb2 as pb
from server.admission import Admission
from server.config import AdmissionSettings
from server.rpc import RETRY_PUSHBACK_KEY

pytestmark = pytest.mark.anyio


def fixed_limit(limit: int, **settings: float) -> Admission:
    """Admission with a limit that does not move, judging a window after every finished request."""
    return Admission.from_settings(
        AdmissionSettings.model_validate(
            {"min_limit": limit, "initial_limit": limit, "max_limit": limit, "window_s": 0.001, **settings}
        )
    )


def rejections(reason: str) -> float:
    return sample("recstack_admission_rejected_total", method="Recommend", reason=reason)


async def rejected(call: grpc.aio.UnaryUnaryCall) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    return caught.value


def pushback_ms(error: grpc.aio.AioRpcError) -> int:
    return int(dict(error.trailing_metadata() or ())[RETRY_PUSHBACK_KEY])


async def test_over_the_limit_a_recommend_is_rejected_at_once_and_admitted_again_once_one_ends() -> None:
    admission = fixed_limit(2)
    async with gateway(admission=admission) as gw:
        before, rejected_before = dependency_calls(), rejections("limit")
        first, second = recommend(gw.stub), recommend(gw.stub)
        await until(lambda: admission.limiters["Recommend"].in_flight == 2 and len(gw.encoder.batches) == 1)
        error = await rejected(recommend(gw.stub))  # both admitted ones are held in Triton or queued for it
        assert "2 requests in flight" in (error.details() or "")
        assert pushback_ms(error) == 100  # no latency observed yet: the latency target
        assert rejections("limit") == rejected_before + 1
        assert sample("recstack_admission_limit", method="Recommend") == 2
        gw.encoder.release(0)
        await until(lambda: len(gw.encoder.batches) == 2)
        gw.encoder.release(1)
        assert ids(await first) == ids(await second) == ["c", "b"]
        again = recommend(gw.stub)
        await until(lambda: len(gw.encoder.batches) == 3)
        gw.encoder.release(2)
        assert ids(await again) == ["c", "b"]
    assert gw.encoder.batches == [1, 1, 1]  # one row per admitted request, none for the rejected one
    assert sum(gw.index.searches) == 3
    assert calls_since(before) == {("triton", "ok"): 3, ("milvus", "ok"): 3}


async def test_a_deadline_shorter_than_the_recent_latency_is_rejected_with_do_not_retry() -> None:
    admission = fixed_limit(2, min_window_samples=1, window_s=0.2)  # judged when `slow` ends
    async with gateway(admission=admission) as gw:
        slow = recommend(gw.stub)
        await until(lambda: len(gw.encoder.batches) == 1)
        await asyncio.sleep(0.3)  # the only latency observed will be at least 0.3 s
        gw.encoder.release(0)
        await slow
        before, rejected_before = dependency_calls(), rejections("deadline")
        error = await rejected(recommend(gw.stub, timeout=0.1))
        assert "shorter than the recent latency" in (error.details() or "")
        assert pushback_ms(error) == -1
        assert rejections("deadline") == rejected_before + 1
        assert calls_since(before) == {}
        assert gw.encoder.batches == [1]


async def test_a_bad_request_is_shed_unvalidated_while_the_limit_is_full_and_invalid_argument_once_admitted() -> None:
    """Shedding comes before validation, to stay cheap; admitted, a bad request still ends INVALID_ARGUMENT naming
    its field, and gives its slot back."""
    admission = fixed_limit(1)
    bad = pb.RecommendRequest(history=[pb.HistoryItem(id="a")], k=0)
    async with gateway(admission=admission) as gw:
        held = recommend(gw.stub)
        await until(lambda: admission.limiters["Recommend"].in_flight == 1 and len(gw.encoder.batches) == 1)
        await rejected(gw.stub.Recommend(bad, timeout=10.0))
        gw.encoder.release(0)
        assert ids(await held) == ["c", "b"]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gw.stub.Recommend(bad, timeout=10.0)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (caught.value.details() or "").startswith("k:")
        assert admission.limiters["Recommend"].in_flight == 0
