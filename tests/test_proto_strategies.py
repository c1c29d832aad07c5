"""The fuzz strategies stay sendable: oversized, but never the gigabyte requests no deadline can carry."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from proto_strategies import OVERSIZE_BYTES, copies, messages

from recstack.v1 import gateway_pb2 as pb


def test_copies_of_a_large_entry_are_cut_to_the_oversize_bound_and_small_ones_are_not() -> None:
    big = pb.HistoryItem(id="\x90" * 100_000)  # 200 KB encoded
    cut = copies(big, 10_000)
    assert 1 < len(cut) < 10_000
    assert sum(item.ByteSize() for item in cut) <= OVERSIZE_BYTES
    assert len(copies("x", 10_000)) == 10_000
    assert len(copies("x" * (OVERSIZE_BYTES * 2), 500)) == 1  # one entry over the bound is still sent


@settings(max_examples=60, suppress_health_check=list(HealthCheck), database=None)
@given(request=messages(pb.RecommendRequest.DESCRIPTOR))
def test_generated_requests_stay_within_a_few_times_the_oversize_bound(request: pb.RecommendRequest) -> None:
    assert request.ByteSize() <= 8 * OVERSIZE_BYTES
