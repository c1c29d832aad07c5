"""What a load run measured: HdrHistograms per metric, the scenario result, its JSON form and its tables.

Every latency-like value is in milliseconds, recorded at 1 µs resolution with 3 significant digits
(HdrHistogram: a reported percentile is within 0.1% of the exact one). Values are clamped into the
histogram's range [0, highest]; a negative "overhead" (stage clocks overlapping the client's) counts as 0.

Failed requests' latencies are kept too, per status code (`error_latency_ms`): how fast a shed request
(RESOURCE_EXHAUSTED) was answered matters as much as how fast an admitted one was. They are also kept from the
actual send (`error_answer_ms`; the same in a closed loop), so in an open loop a load generator that sends late
(a busy machine) is told apart from a server that answers late.

`ScenarioResult.to_dict()` is the JSON schema documented in benchmarks/README.md.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram
from rich.table import Table

MAX_LATENCY_MS = 3_600_000.0  # one hour
MAX_TOKENS_PER_S = 1_000_000.0
MS_RESOLUTION = 0.001  # 1 µs
RATE_RESOLUTION = 0.001
SIGNIFICANT_DIGITS = 3
MAX_EXAMPLE_CHARS = 200


class Histogram:
    """Non-negative float values (ms, tokens/s) in an HdrHistogram of integer units of `resolution`."""

    def __init__(self, highest: float = MAX_LATENCY_MS, resolution: float = MS_RESOLUTION) -> None:
        self.resolution, self.highest = resolution, highest
        self._hdr = HdrHistogram(1, round(highest / resolution), SIGNIFICANT_DIGITS)

    def record(self, value: float) -> None:
        self._hdr.record_value(round(min(max(value, 0.0), self.highest) / self.resolution))

    @property
    def count(self) -> int:
        return self._hdr.get_total_count()

    def percentile(self, percent: float) -> float:
        return self._hdr.get_value_at_percentile(percent) * self.resolution

    def max(self) -> float:
        return self._hdr.get_max_value() * self.resolution

    def mean(self) -> float:
        return self._hdr.get_mean_value() * self.resolution


def rounded(value: float) -> float:
    return round(value, 3)


@dataclass
class AnswerTiming:
    """Client-side timing of one streamed answer (ms from the request's start; None without tokens)."""

    time_to_first_token_ms: float | None
    tokens_per_s: float | None


@dataclass
class Recorder:
    """Outcomes of the measured requests of one scenario (or of one RPC kind within a mix)."""

    requests: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    error_examples: dict[str, str] = field(default_factory=dict)  # the first message seen per code
    error_latency: dict[str, Histogram] = field(default_factory=dict)  # by status code, from the intended send
    error_answer: dict[str, Histogram] = field(default_factory=dict)  # by status code, from the actual send
    latency: Histogram = field(default_factory=Histogram)
    overhead: Histogram = field(default_factory=Histogram)
    stages: dict[str, Histogram] = field(default_factory=dict)
    ttft: Histogram = field(default_factory=Histogram)
    tokens_per_s: Histogram = field(default_factory=lambda: Histogram(MAX_TOKENS_PER_S, RATE_RESOLUTION))

    def record_ok(
        self,
        latency_ms: float,
        overhead_ms: float | None,
        stages: Iterable[tuple[str, float]],
        answer: AnswerTiming | None = None,
    ) -> None:
        self.requests += 1
        self.ok += 1
        self.latency.record(latency_ms)
        if overhead_ms is not None:
            self.overhead.record(overhead_ms)
        for stage, ms in stages:
            histogram = self.stages.get(stage)
            if histogram is None:
                histogram = self.stages[stage] = Histogram()
            histogram.record(ms)
        if answer is not None:
            if answer.time_to_first_token_ms is not None:
                self.ttft.record(answer.time_to_first_token_ms)
            if answer.tokens_per_s is not None:
                self.tokens_per_s.record(answer.tokens_per_s)

    def record_error(
        self, code: str, detail: str = "", latency_ms: float | None = None, answered_ms: float | None = None
    ) -> None:
        """A failed request: `latency_ms` from its intended send time, `answered_ms` from its actual one."""
        self.requests += 1
        self.errors[code] += 1
        self.error_examples.setdefault(code, detail[:MAX_EXAMPLE_CHARS])
        for by_code, ms in ((self.error_latency, latency_ms), (self.error_answer, answered_ms)):
            if ms is not None:
                if code not in by_code:
                    by_code[code] = Histogram()
                by_code[code].record(ms)

    def summary(self, duration_s: float) -> dict:
        """Counts, throughput and latency percentiles (OK requests only), stages, overhead, answer timing."""
        latency = self.latency
        summary = {
            "requests": self.requests,
            "ok": self.ok,
            "errors": dict(sorted(self.errors.items())),
            "qps": rounded(self.ok / duration_s),
            "p50_ms": rounded(latency.percentile(50)),
            "p90_ms": rounded(latency.percentile(90)),
            "p99_ms": rounded(latency.percentile(99)),
            "p999_ms": rounded(latency.percentile(99.9)),
            "max_ms": rounded(latency.max()),
            "mean_ms": rounded(latency.mean()),
            "stages": {
                stage: {"p50_ms": rounded(h.percentile(50)), "p99_ms": rounded(h.percentile(99))}
                for stage, h in self.stages.items()
            },
        }
        if self.errors:
            summary["error_examples"] = dict(sorted(self.error_examples.items()))
        for key, by_code in (("error_latency_ms", self.error_latency), ("error_answer_ms", self.error_answer)):
            if by_code:
                summary[key] = {
                    code: {"p50_ms": rounded(h.percentile(50)), "p99_ms": rounded(h.percentile(99))}
                    for code, h in sorted(by_code.items())
                }
        if self.overhead.count:
            summary["overhead_p50_ms"] = rounded(self.overhead.percentile(50))
            summary["overhead_p99_ms"] = rounded(self.overhead.percentile(99))
        if self.ttft.count:
            summary["ttft_p50_ms"] = rounded(self.ttft.percentile(50))
            summary["ttft_p99_ms"] = rounded(self.ttft.percentile(99))
        if self.tokens_per_s.count:
            summary["tokens_per_s_p50"] = rounded(self.tokens_per_s.percentile(50))
        return summary


@dataclass
class ScenarioResult:
    """One load run: its shape, everything measured over all RPCs, and per RPC kind when it was a mix."""

    target: str
    mix: dict[str, float]
    mode: str  # "closed" or "open"
    concurrency: int | None
    rate: float | None
    duration_s: float
    warmup_s: float
    deadline_ms: float
    overall: Recorder = field(default_factory=Recorder)
    by_rpc: dict[str, Recorder] = field(default_factory=dict)
    dropped: int = 0  # open loop: intended sends skipped because max_in_flight requests were pending
    late: int = 0  # open loop: sends that left more than LATE_SEND_MS after their intended time
    send_lag: Histogram = field(default_factory=Histogram)  # open loop: actual minus intended send time

    @property
    def rpc(self) -> str:
        return next(iter(self.mix)) if len(self.mix) == 1 else "mix"

    def recorder(self, rpc: str) -> Recorder:
        if rpc not in self.by_rpc:
            self.by_rpc[rpc] = Recorder()
        return self.by_rpc[rpc]

    def to_dict(self) -> dict:
        load = {"concurrency": self.concurrency} if self.mode == "closed" else {"rate": self.rate}
        result = {
            "rpc": self.rpc,
            "mode": self.mode,
            **load,
            "duration_s": self.duration_s,
            **self.overall.summary(self.duration_s),
            "dropped": self.dropped,
            "late": self.late,
            "warmup_s": self.warmup_s,
            "deadline_ms": self.deadline_ms,
            "target": self.target,
        }
        if self.mode == "open":
            result["send_lag_p99_ms"] = rounded(self.send_lag.percentile(99))
        if len(self.mix) > 1:
            result["mix"] = dict(self.mix)
            result["by_rpc"] = {rpc: rec.summary(self.duration_s) for rpc, rec in self.by_rpc.items()}
        return result


def scenario_key(result: ScenarioResult) -> str:
    """The suite's key for a scenario: `recommend@c8` (closed loop) or `search@r200` (open loop, req/s)."""
    load = f"c{result.concurrency}" if result.mode == "closed" else f"r{result.rate:g}"
    return f"{result.rpc}@{load}"


def result_tables(result: ScenarioResult) -> list[Table]:
    """The summary table (a row per RPC kind too when it was a mix), then stages and client-side timing."""
    data = result.to_dict()
    load = f"concurrency {result.concurrency}" if result.mode == "closed" else f"{result.rate:g} req/s"
    summary = Table(title=f"{scenario_key(result)}: {result.mode} loop, {load}, {result.duration_s:g} s")
    for column in ("rpc", "requests", "ok", "errors", "qps", "p50", "p90", "p99", "p99.9", "max", "mean"):
        summary.add_column(column, justify="left" if column in ("rpc", "errors") else "right", no_wrap=column == "rpc")
    rows = {result.rpc: data, **data.get("by_rpc", {})}
    for name, row in rows.items():
        errors = ", ".join(f"{code} {n}" for code, n in row["errors"].items()) or "-"
        latencies = (f"{row[key]:.2f}" for key in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "mean_ms"))
        summary.add_row(name, str(row["requests"]), str(row["ok"]), errors, f"{row['qps']:.1f}", *latencies)
    if result.mode == "open":
        summary.caption = f"dropped {result.dropped}, late {result.late}, send lag p99 {data['send_lag_p99_ms']} ms"
    timing = Table(title="server stages and client-side timing (ms)")
    for column in ("stage", "p50", "p99"):
        timing.add_column(column, justify="left" if column == "stage" else "right")
    for stage, values in data["stages"].items():
        timing.add_row(stage, f"{values['p50_ms']:.3f}", f"{values['p99_ms']:.3f}")
    for label, prefix in (("overhead (client − stages)", "overhead"), ("time to first token", "ttft")):
        if f"{prefix}_p50_ms" in data:
            timing.add_row(label, f"{data[f'{prefix}_p50_ms']:.3f}", f"{data[f'{prefix}_p99_ms']:.3f}")
    if "tokens_per_s_p50" in data:
        timing.add_row("tokens/s", f"{data['tokens_per_s_p50']:.1f}", "")
    tables = [summary, timing] if timing.row_count else [summary]
    if data["errors"]:
        errors = Table(title="errors (first message per status code)")
        for column in ("code", "count", "message"):
            errors.add_column(column, justify="right" if column == "count" else "left")
        for code, count in data["errors"].items():
            errors.add_row(code, str(count), data["error_examples"][code])
        tables.append(errors)
    return tables


def suite_dict(results: Iterable[ScenarioResult], ratios: Mapping[str, float] | None = None) -> dict:
    """The suite file: `{"scenarios": {scenario_key: scenario}, "ratios": {...}}`; a repeated key raises."""
    scenarios: dict[str, dict] = {}
    for result in results:
        key = scenario_key(result)
        if key in scenarios:
            raise ValueError(f"two scenarios share the key {key!r}")
        scenarios[key] = result.to_dict()
    return {"scenarios": scenarios, "ratios": dict(ratios or {})}
