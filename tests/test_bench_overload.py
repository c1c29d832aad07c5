"""The suite's overload scenario without servers: from load-generator results to the "overload" key, its
targets, and the budget gates on it and on CPU per request."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks import render
from benchmarks.report import (
    ECHO,
    GATEWAY,
    NAIVE,
    SHED,
    Budget,
    check_budgets,
    derive_ratios,
    evaluate_targets,
    histogram_quantile,
    load_budgets,
    overload_result,
    scenario_name,
)
from benchmarks.stats import Recorder, ScenarioResult
from benchmarks.suite import PROFILES, Collector, build_suite

BUDGETS = Path(__file__).resolve().parents[1] / "benchmarks" / "budgets.yaml"
HDR = 0.002  # HdrHistogram's 3 significant digits, with rounding to the µs


def capacity_run(ok: int = 300, duration_s: float = 2.0) -> dict:
    """A closed loop at 16: `ok` answers in `duration_s` (capacity = ok / duration_s)."""
    result = ScenarioResult("gw", {"recommend": 1.0}, "closed", 16, None, duration_s, 0.5, 10_000.0)
    for _ in range(ok):
        result.overall.record_ok(50.0, None, [])
    return result.to_dict()


def overloaded_run(ok: int = 270, shed: int = 280, late: int = 0, duration_s: float = 2.0) -> dict:
    """An open loop at 300/s: `ok` admitted (latencies 10..190 ms), `shed` RESOURCE_EXHAUSTED answered in
    0.5..4.5 ms, `late` DEADLINE_EXCEEDED at 200 ms."""
    result = ScenarioResult("gw", {"recommend": 1.0}, "open", None, 300.0, duration_s, 0.5, 200.0)
    for index in range(ok):
        result.overall.record_ok(10.0 + 180.0 * index / max(ok - 1, 1), None, [])
    for index in range(shed):
        latency_ms = 0.5 + 4.0 * index / max(shed - 1, 1)
        result.overall.record_error(SHED, "limit", latency_ms, answered_ms=latency_ms / 2)  # sent late by half
    for _ in range(late):
        result.overall.record_error("DEADLINE_EXCEEDED", "", 200.0)
    return result.to_dict()


def test_failed_requests_keep_their_latency_per_status_code() -> None:
    recorder = Recorder()
    recorder.record_ok(100.0, None, [])
    for ms in (1.0, 2.0, 3.0):
        recorder.record_error(SHED, "", ms)
    recorder.record_error("UNAVAILABLE", "no latency known")
    recorder.record_error("DEADLINE_EXCEEDED", "", 250.0, answered_ms=200.0)
    summary = recorder.summary(duration_s=1.0)
    assert summary["errors"] == {SHED: 3, "UNAVAILABLE": 1, "DEADLINE_EXCEEDED": 1}
    assert set(summary["error_latency_ms"]) == {SHED, "DEADLINE_EXCEEDED"}
    assert summary["error_latency_ms"][SHED]["p99_ms"] == pytest.approx(3.0, rel=HDR)
    assert set(summary["error_answer_ms"]) == {"DEADLINE_EXCEEDED"}  # only where the actual send was given
    assert summary["error_answer_ms"]["DEADLINE_EXCEEDED"]["p50_ms"] == pytest.approx(200.0, rel=HDR)
    assert summary["p99_ms"] == pytest.approx(100.0, rel=HDR)  # OK latencies only


def test_overload_result_has_the_issue_keys_goodput_ratio_and_percentiles_by_code() -> None:
    result = overload_result(capacity_run(ok=300), overloaded_run(ok=270, shed=280, late=5))
    assert set(result) >= {
        "capacity_rps",
        "offered_rps",
        "goodput_rps",
        "goodput_ratio",
        "shed_p99_ms",
        "admitted_p99_ms",
        "codes",
    }
    assert result["capacity_rps"] == pytest.approx(150.0)
    assert result["offered_rps"] == 300.0
    assert result["goodput_rps"] == pytest.approx(135.0)
    assert result["goodput_ratio"] == pytest.approx(0.9)
    assert result["shed_p99_ms"] == pytest.approx(4.46, abs=0.05)  # RESOURCE_EXHAUSTED answers only
    assert result["shed_p99_from_send_ms"] == pytest.approx(2.23, abs=0.03)  # without the sender's lag
    assert result["admitted_p99_ms"] == pytest.approx(188.2, abs=1.0)  # OK answers only, not the 200 ms ones
    assert result["codes"] == {"OK": 270, SHED: 280, "DEADLINE_EXCEEDED": 5}
    assert result["unexpected_code_ratio"] == pytest.approx(5 / 555, abs=1e-6)


def test_overload_without_shedding_or_success_has_no_percentiles_and_no_goodput() -> None:
    result = overload_result(capacity_run(ok=300), overloaded_run(ok=0, shed=0, late=10))
    assert result["shed_p99_ms"] is None and result["admitted_p99_ms"] is None  # not a 0 ms that passes a target
    assert result["goodput_ratio"] == 0.0 and result["unexpected_code_ratio"] == 1.0
    assert overload_result(capacity_run(ok=0), overloaded_run())["goodput_ratio"] is None  # no capacity measured
    assert result["queued_before_admission_ms"] is None  # no deadline-left histogram given


def test_the_wait_before_admission_is_the_deadline_minus_the_deadline_left() -> None:
    """100 requests with a 200 ms deadline: 10 reached admission with <= 25 ms left, 50 with <= 100 ms, all <= 200."""
    left = {0.025: 10.0, 0.1: 50.0, 0.2: 100.0, math.inf: 100.0}
    result = overload_result(capacity_run(), overloaded_run(), left)
    # p50 of the time left: 100 ms (rank 50 at the top of its bucket); p10: 25 ms. Waits: 200 - those.
    assert result["queued_before_admission_ms"] == {"p50": 100.0, "p90": 175.0}
    assert histogram_quantile(left, 0.3) == pytest.approx(0.025 + 0.075 * 20 / 40)  # interpolated in its bucket
    assert histogram_quantile({0.1: 0.0, math.inf: 4.0}, 0.5) == 0.1  # beyond the last bound: that bound
    assert histogram_quantile({0.1: 0.0, math.inf: 0.0}, 0.5) is None


def test_overload_targets_judge_goodput_rejection_speed_admitted_latency_and_codes() -> None:
    good = overload_result(capacity_run(ok=300), overloaded_run(ok=280, shed=280))
    rows = {row["target"]: row["status"] for row in evaluate_targets({"scenarios": {}, "overload": good})}
    overload_rows = {name: status for name, status in rows.items() if name.startswith("Overload")}
    assert len(overload_rows) == 4 and set(overload_rows.values()) == {"met"}
    bad = overload_result(capacity_run(ok=300), overloaded_run(ok=200, shed=100, late=50))
    rows = {row["target"]: row["status"] for row in evaluate_targets({"scenarios": {}, "overload": bad})}
    assert rows["Overload goodput / capacity (2x offered)"] == "not met"  # 100/s of 150/s
    assert rows["Overload: share not OK/RESOURCE_EXHAUSTED"] == "not met"  # 50 of 350
    assert rows["Overload: rejections answered, p99"] == "met"
    assert {row["status"] for row in evaluate_targets({"scenarios": {}}) if row["target"].startswith("Overload")} == {
        "not measured"
    }


def cpu_scenarios(gateway_ms: float, echo_ms: float) -> dict[str, dict]:
    """The c8 scenarios with the gateway's and the echo server's CPU per request."""
    scenarios = {}
    for rpc in ("recommend", "search"):
        for side, group, ms in ((GATEWAY, "gateway", gateway_ms), (ECHO, "echo", echo_ms), (NAIVE, "naive", 1.0)):
            cpu = {"gateway": 0.01, "echo": 0.01, "naive": 0.01, group: ms}
            scenarios[scenario_name(rpc, "c8", side)] = {
                "ok": 10,
                "qps": 10.0,
                "p99_ms": 9.0,
                "cpu_ms_per_request": cpu,
            }
    return scenarios


def test_cpu_and_overload_ratios_are_derived_for_their_budgets() -> None:
    overload = overload_result(capacity_run(ok=300), overloaded_run(ok=270))
    ratios = derive_ratios(cpu_scenarios(gateway_ms=5.0, echo_ms=0.5), overload)
    assert ratios["recommend@c8.gateway_cpu_vs_echo"] == pytest.approx(10.0)
    assert ratios["search@c8.gateway_cpu_vs_echo"] == pytest.approx(10.0)
    assert ratios["overload.goodput_ratio"] == pytest.approx(0.9)
    assert "overload.goodput_ratio" not in derive_ratios(cpu_scenarios(5.0, 0.5))  # not measured: left out


@pytest.mark.parametrize(
    ("gateway_ms", "overload_ok", "failing"),
    [
        (4.0, 280, set()),  # 8x the echo floor
        (9.0, 280, {"recommend@c8.gateway_cpu_vs_echo", "search@c8.gateway_cpu_vs_echo"}),  # 18x the echo floor
        (4.0, 30, {"overload.goodput_ratio"}),  # goodput 0.1 of capacity
    ],
)
def test_the_repository_budgets_fail_a_cpu_ratio_over_its_ceiling_and_a_goodput_under_its_floor(
    gateway_ms: float, overload_ok: int, failing: set[str]
) -> None:
    gated = {"recommend@c8.gateway_cpu_vs_echo", "search@c8.gateway_cpu_vs_echo", "overload.goodput_ratio"}
    budgets = [budget for budget in load_budgets(BUDGETS) if budget.ratio in gated]
    assert {budget.ratio for budget in budgets} == gated
    overload = overload_result(capacity_run(ok=300), overloaded_run(ok=overload_ok))
    checks = check_budgets(derive_ratios(cpu_scenarios(gateway_ms, echo_ms=0.5), overload), budgets)
    assert {check.ratio for check in checks if not check.ok} == failing
    assert all("OVER BUDGET" in check.message for check in checks if not check.ok)


def test_a_goodput_floor_fails_when_the_overload_was_not_measured() -> None:
    (check,) = check_budgets(derive_ratios({}), [Budget("overload.goodput_ratio", min=0.5)])
    assert not check.ok and "not measured" in check.message


def suite_meta() -> dict:
    meta = {"started": "2026-01-01T00:00:00+00:00", "machine": "test", "inputs": {"origin": "demo"}, "rounds": 1}
    return meta | {"window_s": 1.5, "wall_s": 12.0}


def test_the_overload_profile_writes_the_overload_key_and_checks_no_budget() -> None:
    overload = overload_result(capacity_run(), overloaded_run(), {0.1: 10.0, 0.2: 100.0, math.inf: 100.0})
    suite = build_suite(PROFILES["overload"], Collector(overload=overload), suite_meta(), BUDGETS)
    assert suite["overload"] == overload and suite["budgets"] == []
    assert suite["ratios"]["overload.goodput_ratio"] == pytest.approx(0.9)
    markdown = render.render_markdown(suite)
    assert "## Overload (twice the capacity)" in markdown
    assert "| 150.0 | 300.0 | 135.0 | 0.900 | 4.4" in markdown and "OK 270, RESOURCE_EXHAUSTED 280" in markdown
    assert (
        "before admission (the deadline minus the deadline left" in markdown
        and "p50 55.60 ms, p90 100.00 ms" in markdown
    )
    gated = build_suite(PROFILES["ci"], Collector(overload=overload), suite_meta(), BUDGETS)
    assert gated["budgets"] and not all(check["ok"] for check in gated["budgets"])  # the rest was not measured
