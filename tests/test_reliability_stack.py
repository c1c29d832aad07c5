"""Short chaos and durability against the real stack (the full runs: `make chaos`, benchmarks/reliability.py).

Each dependency, then the gateway, is SIGKILLed once under light open-loop load and restarted: clients see
only UNAVAILABLE or DEADLINE_EXCEEDED, health goes NOT_SERVING and back to SERVING, the gateway survives a
dependency's death. Acknowledged upserts and deletes survive SIGKILL of Milvus and of the gateway.
"""

from __future__ import annotations

import json

import pytest

from benchmarks.reliability import gateway_kill_durability, kill_under_load, milvus_kill_durability, parts, workload

pytestmark = pytest.mark.stack

RATE = 6.0  # requests per second: light, so the tiny stack is not overloaded on a shared machine


@pytest.mark.parametrize("name", ["triton", "milvus", "llm", "gateway"])
def test_kill_under_load_fails_cleanly_and_recovers(stack, tiny_data, name: str) -> None:
    part = parts(stack)[name]
    report = kill_under_load(stack, part, workload(tiny_data.root), RATE, down_s=1.0, settle_s=3.0).to_dict()
    shown = json.dumps(report, indent=1)
    assert report["unexpected_codes"] == [], shown
    assert report["codes"].get("UNAVAILABLE", 0) > 0, shown
    assert report["first_unavailable_ms"] is not None, shown
    assert report["ok_after_restart"] > 0, shown
    assert report["health_after"] == "SERVING", shown
    assert report["unaffected_rpc_errors"] == {}, shown
    if name == "gateway":
        # dead, then starting: unreachable, then NOT_SERVING until its first dependency probes pass
        assert any(status.startswith("UNREACHABLE") for status in report["health_during"]), shown
        assert "SERVING" not in report["health_during"], shown
    else:
        assert "NOT_SERVING" in report["health_during"], shown
        assert report["gateway_pid_unchanged"], shown
    if name == "llm":
        assert set(report.get("answer_streams_in_flight", {})) <= {"UNAVAILABLE", "OK"}, shown


def test_acknowledged_writes_survive_milvus_sigkill(stack) -> None:
    report = milvus_kill_durability(stack, batches=3, size=50)
    assert report["present_after_restart"] == report["acknowledged"], report
    assert report["vectors_equal"] == report["acknowledged"], report
    assert report["deleted_absent"], report


def test_acknowledged_writes_survive_gateway_sigkill_mid_stream(stack) -> None:
    report = gateway_kill_durability(stack, batches=30, size=10, kill_after=3)
    assert report["upsert_batches_acknowledged"] >= 3, report
    assert report["present_after_restart"] == report["acknowledged"], report
    assert report["vectors_equal"] == report["acknowledged"], report
    assert report["deleted_absent"], report
