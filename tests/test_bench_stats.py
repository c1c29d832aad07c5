"""Histogram percentiles on known values, error accounting, and the result's JSON shape."""

from __future__ import annotations

import pytest

from benchmarks.stats import AnswerTiming, Histogram, Recorder, ScenarioResult, scenario_key, suite_dict

HDR_PRECISION = 1e-3  # 3 significant digits


def scenario(**overrides: object) -> ScenarioResult:
    shape = {"target": "t:1", "mix": {"recommend": 1.0}, "mode": "closed", "concurrency": 8, "rate": None}
    return ScenarioResult(**{**shape, "duration_s": 2.0, "warmup_s": 0.0, "deadline_ms": 100.0, **overrides})


def test_percentiles_of_1_to_1000_ms_within_histogram_precision():
    histogram = Histogram()
    for ms in range(1, 1001):
        histogram.record(float(ms))
    assert histogram.count == 1000
    for percent, exact in ((50, 500), (90, 900), (99, 990), (99.9, 999), (100, 1000)):
        assert histogram.percentile(percent) == pytest.approx(exact, rel=HDR_PRECISION)
    assert histogram.max() == pytest.approx(1000, rel=HDR_PRECISION)
    assert histogram.mean() == pytest.approx(500.5, rel=HDR_PRECISION)


def test_sub_millisecond_values_keep_microsecond_resolution():
    histogram = Histogram()
    for us in (120, 250, 480):
        histogram.record(us / 1000)
    assert histogram.percentile(50) == pytest.approx(0.250, abs=0.001)


def test_out_of_range_values_are_clamped_not_lost():
    histogram = Histogram(highest=10.0)
    histogram.record(-3.0)
    histogram.record(1e9)
    assert histogram.count == 2
    assert histogram.percentile(0) == 0.0
    assert histogram.max() == pytest.approx(10.0, rel=HDR_PRECISION)


def test_errors_are_counted_by_code_and_excluded_from_latency():
    recorder = Recorder()
    for ms in (10.0, 20.0, 30.0):
        recorder.record_ok(ms, None, [])
    for code, detail in (("UNAVAILABLE", "milvus down"), ("DEADLINE_EXCEEDED", ""), ("UNAVAILABLE", "again")):
        recorder.record_error(code, detail)
    summary = recorder.summary(duration_s=2.0)
    assert summary["requests"] == 6
    assert summary["ok"] == 3
    assert summary["errors"] == {"DEADLINE_EXCEEDED": 1, "UNAVAILABLE": 2}
    assert summary["error_examples"] == {"DEADLINE_EXCEEDED": "", "UNAVAILABLE": "milvus down"}
    assert summary["qps"] == pytest.approx(1.5)
    assert summary["max_ms"] == pytest.approx(30.0, rel=HDR_PRECISION)


def test_stages_overhead_and_answer_timing_are_summarised():
    recorder = Recorder()
    for i in range(1, 101):
        answer = AnswerTiming(time_to_first_token_ms=float(i), tokens_per_s=100.0 + i)
        recorder.record_ok(10.0 + i, float(i), [("triton.user_encoder", 1.0), ("milvus.search", float(i))], answer)
    summary = recorder.summary(duration_s=1.0)
    assert summary["stages"]["triton.user_encoder"]["p50_ms"] == pytest.approx(1.0, rel=HDR_PRECISION)
    assert summary["stages"]["milvus.search"]["p99_ms"] == pytest.approx(99.0, rel=HDR_PRECISION)
    assert summary["overhead_p50_ms"] == pytest.approx(50.0, rel=HDR_PRECISION)
    assert summary["ttft_p99_ms"] == pytest.approx(99.0, rel=HDR_PRECISION)
    assert summary["tokens_per_s_p50"] == pytest.approx(150.0, rel=HDR_PRECISION)


def test_without_overhead_or_answers_those_keys_are_absent():
    recorder = Recorder()
    recorder.record_ok(5.0, None, [])
    summary = recorder.summary(duration_s=1.0)
    assert not {"overhead_p50_ms", "ttft_p50_ms", "tokens_per_s_p50"} & set(summary)


def test_scenario_dict_has_the_documented_keys():
    result = scenario()
    result.overall.record_ok(3.0, 1.0, [("milvus.search", 2.0)])
    data = result.to_dict()
    documented = {"rpc", "mode", "concurrency", "duration_s", "requests", "ok", "errors", "qps", "p50_ms", "p90_ms"}
    documented |= {"p99_ms", "p999_ms", "max_ms", "mean_ms", "stages", "overhead_p50_ms", "overhead_p99_ms"}
    assert documented <= set(data)
    assert data["rpc"] == "recommend"
    assert "rate" not in data and "by_rpc" not in data


def test_open_loop_and_mix_scenarios_report_rate_and_per_rpc_results():
    result = scenario(mix={"recommend": 3.0, "search": 1.0}, mode="open", concurrency=None, rate=250.0)
    result.recorder("search").record_error("UNAVAILABLE")
    data = result.to_dict()
    assert data["rpc"] == "mix"
    assert data["rate"] == 250.0 and "concurrency" not in data
    assert data["by_rpc"]["search"]["errors"] == {"UNAVAILABLE": 1}
    assert "send_lag_p99_ms" in data


def test_scenario_keys_and_suite_file():
    closed, opened = scenario(), scenario(mode="open", concurrency=None, rate=200.0)
    assert scenario_key(closed) == "recommend@c8"
    assert scenario_key(opened) == "recommend@r200"
    suite = suite_dict([closed, opened], ratios={"recommend_qps": 2.5})
    assert set(suite["scenarios"]) == {"recommend@c8", "recommend@r200"}
    assert suite["ratios"] == {"recommend_qps": 2.5}
    with pytest.raises(ValueError, match="recommend@c8"):
        suite_dict([closed, scenario()])
