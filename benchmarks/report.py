"""From measured scenarios to the suite's verdicts: ratios, gateway overhead, targets and budgets.

Scenario names (`scenario_name`): `<rpc>@<load>` for the gateway on the demo catalog, where load is
`c<concurrency>` (closed loop) or `r<rate>` (open loop, req/s); `<side>:` in front for another side
(`naive:`, or a direct dependency call such as `triton.user_encoder:`); `<catalog>/` in front for a
synthetic catalog (`1m/naive:search@c8`).

Ratios (all ours / reference, from sides measured in the same run):
  <rpc>@c1.p50_vs_naive        gateway p50 / naive p50 at concurrency 1 (lower is better)
  <rpc>@c8.qps_vs_naive        gateway throughput / naive throughput at concurrency 8 (higher is better)
  <rpc>@c8.p99_vs_naive        gateway p99 / naive p99 at concurrency 8
  <rpc>@c1.p50_vs_direct       gateway p50 / sum of the p50s of its dependency calls made directly
  <rpc>.max_rate_vs_naive      highest open-loop rate meeting the p99 bound, gateway / naive
  [naive:]<rpc>@c1.p50_growth_<smallest>_to_<largest>
                               p50 on the largest synthetic catalog / on the smallest
  gateway.error_rate           failed / sent requests of the gateway's closed-loop scenarios
  <rpc>@c8.gateway_cpu_vs_echo gateway CPU ms per request / echo server CPU ms per request at concurrency 8
  overload.goodput_ratio       OK requests/s at twice the capacity / the capacity (`overload_result`)
(with `<catalog>/` in front for the synthetic catalogs). Budgets (benchmarks/budgets.yaml) bound ratios
only, never absolute milliseconds: both sides of a ratio ran on the same machine, alternating.

Overload (`overload_result`, the suite's "overload" key): the gateway's Recommend capacity measured
closed loop (`OVERLOAD_CAPACITY_LOAD`), then an open loop at twice that rate with a short deadline;
goodput = OK requests/s, shed = the RESOURCE_EXHAUSTED answers (their latency: how fast a rejection
came back), admitted = the OK ones. `queued_before_admission_ms`: how long requests waited inside the gateway
before admission saw them, i.e. the deadline minus what the gateway's `recstack_admission_deadline_left_seconds`
histogram recorded of it (gRPC starts the server-side deadline when a call arrives); under overload that wait is
in gRPC's queue of calls not yet accepted by the Python server, and no latency or loop-lag figure shows it.

CPU per request (`cpu_ms_per_request`): at concurrency 8, each process group's CPU milliseconds per
request over the windows of the side it serves (gateway, triton, milvus: the gateway's; naive; echo).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from benchmarks.components import DIRECT_CALLS

GATEWAY = "gateway"
NAIVE = "naive"
ECHO = "echo"
DEMO = "demo"
RPCS = ("recommend", "search")
P99_BOUND_MS = 30.0  # the open loop's "throughput at a p99 bound"
CPU_LOAD = "c8"
OK = "OK"
SHED = "RESOURCE_EXHAUSTED"
OVERLOAD_CAPACITY_LOAD = "c16"  # closed loop, enough requests in flight to saturate the demo stack
OVERLOAD_FACTOR = 2.0  # offered rate / capacity
OVERLOAD_DEADLINE_MS = 200.0
# Each process group of `cpu_ms_per_request` and the side whose windows it is read from.
CPU_GROUP_SIDES = {"gateway": GATEWAY, "triton": GATEWAY, "milvus": GATEWAY, "naive": NAIVE, "echo": ECHO}


def scenario_name(rpc: str, load: str, side: str = GATEWAY, catalog: str = DEMO) -> str:
    """`recommend@c1`, `naive:search@c8`, `triton.user_encoder:recommend@c1`, `1m/recommend@c8`, ..."""
    name = f"{rpc}@{load}" if side == GATEWAY else f"{side}:{rpc}@{load}"
    return name if catalog == DEMO else f"{catalog}/{name}"


# ---------------------------------------------------------------------------------------- derived


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return round(numerator / denominator, 4)


def metric(scenarios: Mapping[str, dict], name: str, field: str) -> float | None:
    """A scenario's metric, None when the scenario was not measured or had no OK request."""
    scenario = scenarios.get(name)
    if scenario is None or not scenario.get("ok"):
        return None
    return scenario[field]


def direct_sum_p50(scenarios: Mapping[str, dict], rpc: str) -> float | None:
    parts = [metric(scenarios, scenario_name(rpc, "c1", side), "p50_ms") for side in DIRECT_CALLS[rpc]]
    return None if None in parts else sum(parts)


def overhead_ms(scenarios: Mapping[str, dict]) -> dict[str, float]:
    """Gateway p50 minus the direct dependency calls' p50s, per RPC (concurrency 1, demo catalog)."""
    overheads = {}
    for rpc in RPCS:
        gateway, direct = metric(scenarios, scenario_name(rpc, "c1"), "p50_ms"), direct_sum_p50(scenarios, rpc)
        if gateway is not None and direct is not None:
            overheads[f"{rpc}@c1"] = round(gateway - direct, 3)
    return overheads


def max_rate_within(scenarios: Mapping[str, dict], rpc: str, side: str, bound_ms: float = P99_BOUND_MS) -> float | None:
    """Highest open-loop rate of this side whose p99 stayed within `bound_ms` with no error and no drop."""
    prefix = scenario_name(rpc, "r", side)
    good = [
        s["rate"]
        for name, s in scenarios.items()
        if name.startswith(prefix)
        and s.get("mode") == "open"
        and s.get("ok")
        and not s["errors"]
        and not s["dropped"]
        and s["p99_ms"] <= bound_ms
    ]
    return max(good) if good else None


def catalogs(scenarios: Mapping[str, dict]) -> list[str]:
    """Synthetic catalog labels measured, smallest first."""
    sizes = {s["catalog"]: s["catalog_items"] for s in scenarios.values() if s.get("catalog", DEMO) != DEMO}
    return sorted(sizes, key=sizes.get)


def gateway_error_rate(scenarios: Mapping[str, dict]) -> float | None:
    """Failed / sent requests over the gateway's closed-loop scenarios (open loop past saturation may fail)."""
    measured = [s for s in scenarios.values() if s.get("server") == GATEWAY and s.get("mode") == "closed"]
    requests = sum(s["requests"] for s in measured)
    return round(sum(sum(s["errors"].values()) for s in measured) / requests, 6) if requests else None


def cpu_ms_per_request(scenarios: Mapping[str, dict]) -> dict[str, dict[str, float | None]]:
    """{"<rpc>@c8": {group: CPU ms per request}} for each group of CPU_GROUP_SIDES; None where not measured."""
    return {
        f"{rpc}@{CPU_LOAD}": {
            group: scenarios.get(scenario_name(rpc, CPU_LOAD, side), {}).get("cpu_ms_per_request", {}).get(group)
            for group, side in CPU_GROUP_SIDES.items()
        }
        for rpc in RPCS
    }


def overload_result(capacity: dict, overloaded: dict, deadline_left: Mapping[float, float] | None = None) -> dict:
    """The suite's "overload" key from the capacity scenario (closed loop) and the overloaded one (open loop,
    `error_latency_ms` per code): capacity, offered and goodput rates, their ratio, shed and admitted p99,
    every status code's count, and the share of codes other than OK and RESOURCE_EXHAUSTED. `shed_p99_ms` counts
    from the intended send (the target's); `shed_p99_from_send_ms` from the actual one (without the load
    generator's own lag). `deadline_left`: the overloaded window's cumulative counts of the gateway's deadline-left
    histogram (upper bound in seconds -> count), for `queued_before_admission_ms`."""
    requests, ok, errors = overloaded["requests"], overloaded["ok"], overloaded["errors"]
    shed_latency = overloaded.get("error_latency_ms", {}).get(SHED, {})
    shed_answer = overloaded.get("error_answer_ms", {}).get(SHED, {})
    capacity_rps, goodput_rps = capacity["qps"], overloaded["qps"]
    unexpected = requests - ok - errors.get(SHED, 0)
    return {
        "capacity_rps": capacity_rps,
        "offered_rps": overloaded["rate"],
        "goodput_rps": goodput_rps,
        "goodput_ratio": ratio(goodput_rps, capacity_rps),
        "shed_p99_ms": shed_latency.get("p99_ms"),
        "shed_p99_from_send_ms": shed_answer.get("p99_ms"),
        "admitted_p99_ms": overloaded["p99_ms"] if ok else None,
        "codes": {OK: ok, **errors},
        "unexpected_code_ratio": round(unexpected / requests, 6) if requests else None,
        "queued_before_admission_ms": queued_before_admission_ms(deadline_left or {}, overloaded["deadline_ms"]),
    }


def queued_before_admission_ms(
    deadline_left: Mapping[float, float], deadline_ms: float | None
) -> dict[str, float] | None:
    """p50 and p90 of the wait before admission: the deadline minus the p50 and p10 of the deadline left (None
    when nothing was recorded, or the requests had no deadline)."""
    left_p50, left_p10 = histogram_quantile(deadline_left, 0.5), histogram_quantile(deadline_left, 0.1)
    if left_p50 is None or left_p10 is None or deadline_ms is None:
        return None
    return {"p50": round(deadline_ms - 1000 * left_p50, 1), "p90": round(deadline_ms - 1000 * left_p10, 1)}


def histogram_quantile(cumulative: Mapping[float, float], fraction: float) -> float | None:
    """The `fraction` quantile of a Prometheus histogram from its cumulative bucket counts (upper bound -> count,
    +Inf included), interpolated linearly within the bucket as Prometheus's `histogram_quantile` does (the first
    bucket from 0; a quantile in the +Inf bucket is the highest finite bound). None for an empty histogram."""
    bounds = sorted(cumulative)
    if not bounds or not cumulative[bounds[-1]]:
        return None
    rank = fraction * cumulative[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank and count > below:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def derive_ratios(scenarios: Mapping[str, dict], overload: dict | None = None) -> dict[str, float]:
    """Every ratio the measured scenarios (and the overload result) allow (see the module docstring);
    unmeasurable ones are left out."""
    ratios: dict[str, float | None] = {}
    if overload:
        ratios["overload.goodput_ratio"] = overload.get("goodput_ratio")
    for rpc, groups in cpu_ms_per_request(scenarios).items():
        ratios[f"{rpc}.gateway_cpu_vs_echo"] = ratio(groups[GATEWAY], groups[ECHO])
    for catalog in (DEMO, *catalogs(scenarios)):
        prefix = "" if catalog == DEMO else f"{catalog}/"

        def of(rpc: str, load: str, field: str, side: str = GATEWAY, catalog: str = catalog) -> float | None:
            return metric(scenarios, scenario_name(rpc, load, side, catalog), field)

        for rpc in RPCS:
            ratios[f"{prefix}{rpc}@c1.p50_vs_naive"] = ratio(of(rpc, "c1", "p50_ms"), of(rpc, "c1", "p50_ms", NAIVE))
            ratios[f"{prefix}{rpc}@c8.qps_vs_naive"] = ratio(of(rpc, "c8", "qps"), of(rpc, "c8", "qps", NAIVE))
            ratios[f"{prefix}{rpc}@c8.p99_vs_naive"] = ratio(of(rpc, "c8", "p99_ms"), of(rpc, "c8", "p99_ms", NAIVE))
    ratios["gateway.error_rate"] = gateway_error_rate(scenarios)
    for rpc in RPCS:
        gateway = metric(scenarios, scenario_name(rpc, "c1"), "p50_ms")
        ratios[f"{rpc}@c1.p50_vs_direct"] = ratio(gateway, direct_sum_p50(scenarios, rpc))
        ratios[f"{rpc}.max_rate_vs_naive"] = ratio(
            max_rate_within(scenarios, rpc, GATEWAY), max_rate_within(scenarios, rpc, NAIVE)
        )
        sizes = catalogs(scenarios)
        if len(sizes) >= 2:
            for side in (GATEWAY, NAIVE):
                first, last = (
                    metric(scenarios, scenario_name(rpc, "c1", side, c), "p50_ms") for c in (sizes[0], sizes[-1])
                )
                label = "" if side == GATEWAY else f"{side}:"
                ratios[f"{label}{rpc}@c1.p50_growth_{sizes[0]}_to_{sizes[-1]}"] = ratio(last, first)
    return {name: value for name, value in ratios.items() if value is not None}


# ---------------------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """A goal from the issue: `measure(suite)` gives the value (None: not measured), judged against `bound`."""

    name: str
    measure: Callable[[dict], float | None]
    bound: float
    higher_is_better: bool = False
    unit: str = ""

    @property
    def goal(self) -> str:
        return f"{'>=' if self.higher_is_better else '<='} {self.bound:g}{self.unit}"

    def met(self, value: float) -> bool:
        return value >= self.bound if self.higher_is_better else value <= self.bound


def scenario_metric(name: str, field: str) -> Callable[[dict], float | None]:
    return lambda suite: metric(suite["scenarios"], name, field)


def entry(section: str, *keys: str) -> Callable[[dict], float | None]:
    """suite[section][key][...], None when any level is missing."""

    def measure(suite: dict) -> float | None:
        value = suite.get(section, {})
        for key in keys:
            if not isinstance(value, Mapping) or key not in value:
                return None
            value = value[key]
        return value

    return measure


TARGETS = (
    Target("Recommend p50 at concurrency 1", scenario_metric("recommend@c1", "p50_ms"), 4, unit=" ms"),
    Target("Recommend throughput at concurrency 8", scenario_metric("recommend@c8", "qps"), 600, True, " QPS"),
    Target("Recommend p99 at concurrency 8", scenario_metric("recommend@c8", "p99_ms"), 30, unit=" ms"),
    Target("Search p50 at concurrency 1", scenario_metric("search@c1", "p50_ms"), 3, unit=" ms"),
    Target("Gateway overhead p50, Recommend", entry("overhead_ms", "recommend@c1"), 1, unit=" ms"),
    Target("Gateway overhead p50, Search", entry("overhead_ms", "search@c1"), 1, unit=" ms"),
    Target(
        "Recommend throughput vs naive, 10k items", entry("ratios", "10k/recommend@c8.qps_vs_naive"), 0.8, True, "x"
    ),
    Target("Search throughput vs naive, 10k items", entry("ratios", "10k/search@c8.qps_vs_naive"), 0.8, True, "x"),
    Target("Recommend throughput vs naive, 1M items", entry("ratios", "1m/recommend@c8.qps_vs_naive"), 3, True, "x"),
    Target("Search throughput vs naive, 1M items", entry("ratios", "1m/search@c8.qps_vs_naive"), 3, True, "x"),
    Target("Recommend p50 growth 10k -> 1M items", entry("ratios", "recommend@c1.p50_growth_10k_to_1m"), 1.5, unit="x"),
    Target("Search p50 growth 10k -> 1M items", entry("ratios", "search@c1.p50_growth_10k_to_1m"), 1.5, unit="x"),
    Target("ANN recall@10, real news vectors", entry("recall", "news", "recall"), 0.95, True),
    Target("ANN recall@10, real passage vectors", entry("recall", "passages", "recall"), 0.95, True),
    Target("Answer time to first token p50", scenario_metric("answer@c1", "ttft_p50_ms"), 500, unit=" ms"),
    Target("Overload goodput / capacity (2x offered)", entry("overload", "goodput_ratio"), 0.9, True, "x"),
    Target("Overload: rejections answered, p99", entry("overload", "shed_p99_ms"), 5, unit=" ms"),
    Target("Overload: admitted requests, p99", entry("overload", "admitted_p99_ms"), 200, unit=" ms"),
    Target("Overload: share not OK/RESOURCE_EXHAUSTED", entry("overload", "unexpected_code_ratio"), 0.01),
)


def evaluate_targets(suite: dict, targets: Sequence[Target] = TARGETS) -> list[dict]:
    """One row per target: name, goal, measured value (None), status "met" / "not met" / "not measured"."""
    rows = []
    for target in targets:
        value = target.measure(suite)
        status = "not measured" if value is None else ("met" if target.met(value) else "not met")
        rows.append(
            {"target": target.name, "goal": target.goal, "measured": value, "unit": target.unit, "status": status}
        )
    return rows


# ---------------------------------------------------------------------------------------- budgets


@dataclass(frozen=True)
class Budget:
    """A bound on one ratio: `min` (higher is better) and/or `max` (lower is better)."""

    ratio: str
    min: float | None = None
    max: float | None = None

    def describe(self) -> str:
        return " and ".join(
            filter(None, [self.min is not None and f">= {self.min:g}", self.max is not None and f"<= {self.max:g}"])
        )


@dataclass(frozen=True)
class BudgetCheck:
    ratio: str
    bound: str
    value: float | None
    ok: bool
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


def load_budgets(path: Path) -> list[Budget]:
    """`{"budgets": {ratio: {"min": x} | {"max": y} | both}}` from YAML; ValueError naming the file and entry."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    entries = data.get("budgets") if isinstance(data, Mapping) else None
    if not isinstance(entries, Mapping) or not entries:
        raise ValueError(f"{path}: expected a non-empty mapping under 'budgets'")
    budgets = []
    for name, bounds in entries.items():
        if not isinstance(bounds, Mapping) or not bounds or set(bounds) - {"min", "max"}:
            raise ValueError(f"{path}: budgets.{name}: expected {{min: number}} and/or {{max: number}}, got {bounds!r}")
        for key, value in bounds.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{path}: budgets.{name}.{key}: expected a number, got {value!r}")
        budgets.append(Budget(str(name), bounds.get("min"), bounds.get("max")))
    return budgets


def check_budgets(ratios: Mapping[str, float], budgets: Sequence[Budget]) -> list[BudgetCheck]:
    """Each budget against the measured ratio; an unmeasured ratio fails (a silent skip would hide a regression)."""
    checks = []
    for budget in budgets:
        value = ratios.get(budget.ratio)
        bound = budget.describe()
        if value is None:
            checks.append(
                BudgetCheck(budget.ratio, bound, None, False, f"{budget.ratio} was not measured (budget {bound})")
            )
            continue
        too_low = budget.min is not None and value < budget.min
        too_high = budget.max is not None and value > budget.max
        ok = not (too_low or too_high)
        message = f"{budget.ratio} = {value:g}, budget {bound}" + ("" if ok else ": OVER BUDGET")
        checks.append(BudgetCheck(budget.ratio, bound, value, ok, message))
    return checks
