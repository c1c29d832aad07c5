"""The suite file (benchmarks/results/<name>.json) as markdown: targets, budgets, then every measurement.

`render_markdown` is benchmarks/results/<name>.md; `render_summary` (targets and budgets) is what a run
prints at its end.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from benchmarks.components import DIRECT_CALLS
from benchmarks.report import CPU_GROUP_SIDES, GATEWAY, NAIVE, P99_BOUND_MS, RPCS, metric, scenario_name


def number(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(suite: dict) -> str:
    """Every section (the .md file)."""
    sections = [
        header(suite),
        targets_section(suite),
        budgets_section(suite),
        comparison_section(suite),
        cpu_section(suite),
        overhead_section(suite),
        answer_section(suite),
        overload_section(suite),
        open_loop_section(suite),
        scale_section(suite),
        recall_section(suite),
        scenarios_section(suite),
    ]
    return "\n\n".join(section for section in sections if section) + "\n"


def render_summary(suite: dict) -> str:
    """The sections narrow enough for a terminal: targets and budgets (the rest is in the .md file)."""
    return "\n\n".join([header(suite), targets_section(suite), budgets_section(suite)]) + "\n"


def header(suite: dict) -> str:
    meta = suite["meta"]
    lines = [
        f"# Benchmark suite: {suite['profile']}",
        "",
        f"{meta['started']} · git {meta.get('git') or '?'} · {meta['machine']} · models: {meta['inputs']['origin']} · "
        f"{meta['rounds']} alternating rounds of {meta['window_s']:g} s per side · wall time {meta['wall_s']:.0f} s",
    ]
    return "\n".join(lines)


def targets_section(suite: dict) -> str:
    rows = [
        [row["target"], row["goal"], number(row["measured"], 3), status_mark(row["status"])] for row in suite["targets"]
    ]
    return "## Targets\n\n" + table(["target", "goal", "measured", "status"], rows)


def status_mark(status: str) -> str:
    return {"met": "met", "not met": "**not met**"}.get(status, status)


def budgets_section(suite: dict) -> str:
    rows = [
        [check["ratio"], check["bound"], number(check["value"], 3), "ok" if check["ok"] else "**FAIL**"]
        for check in suite["budgets"]
    ]
    intro = "Ratios from the same run (benchmarks/budgets.yaml); a failure fails the run.\n\n"
    return "## Regression budgets\n\n" + intro + table(["ratio", "budget", "measured", ""], rows)


def side_cells(scenarios: dict, name: str) -> list[str]:
    s = scenarios.get(name)
    if s is None:
        return ["–"] * 4
    errors = sum(s["errors"].values())
    return [number(s["p50_ms"]), number(s["p99_ms"]), number(s["qps"], 1), str(errors)]


def comparison_section(suite: dict) -> str:
    scenarios, ratios = suite["scenarios"], suite["ratios"]
    rows = []
    for rpc in RPCS:
        for load in ("c1", "c8"):
            ours, naive = scenario_name(rpc, load), scenario_name(rpc, load, NAIVE)
            if ours not in scenarios:
                continue
            key = f"{rpc}@{load}.p50_vs_naive" if load == "c1" else f"{rpc}@{load}.qps_vs_naive"
            rows.append(
                [f"{rpc}@{load}", *side_cells(scenarios, ours), *side_cells(scenarios, naive), number(ratios.get(key))]
            )
    if not rows:
        return ""
    headers = ["scenario", "ours p50", "ours p99", "ours QPS", "ours err", "naive p50", "naive p99", "naive QPS"]
    headers += ["naive err", "ratio (c1: p50, c8: QPS)"]
    intro = "Demo catalog, closed loop, latencies in ms; both servers up, measured alternately.\n\n"
    return "## Ours vs the naive baseline\n\n" + intro + table(headers, rows)


def cpu_section(suite: dict) -> str:
    """CPU ms per request by process group; "ours" is the gateway, Triton and Milvus together."""
    ours = [group for group, side in CPU_GROUP_SIDES.items() if side == GATEWAY]
    rows = []
    for scenario, groups in suite.get("cpu_ms_per_request", {}).items():
        parts = [groups.get(group) for group in ours]
        total = sum(part for part in parts if part is not None) if None not in parts else None
        rows.append([scenario, *(number(groups.get(group), 3) for group in CPU_GROUP_SIDES), number(total, 3)])
    if not rows:
        return ""
    intro = (
        "CPU milliseconds (user + system, child processes included) per completed request, each process "
        "over its own side's windows; echo is a bare grpc.aio server with canned answers (the floor).\n\n"
    )
    headers = ["scenario", *CPU_GROUP_SIDES, "ours (gateway+triton+milvus)"]
    return "## CPU per request\n\n" + intro + table(headers, rows)


def overhead_section(suite: dict) -> str:
    scenarios = suite["scenarios"]
    rows = []
    for rpc in RPCS:
        gateway = metric(scenarios, scenario_name(rpc, "c1"), "p50_ms")
        if gateway is None:
            continue
        parts = [
            f"{side} {number(metric(scenarios, scenario_name(rpc, 'c1', side), 'p50_ms'))}"
            for side in DIRECT_CALLS[rpc]
        ]
        overhead = suite["overhead_ms"].get(f"{rpc}@c1")
        rows.append(
            [
                rpc,
                number(gateway),
                ", ".join(parts),
                number(overhead),
                number(suite["ratios"].get(f"{rpc}@c1.p50_vs_direct")),
            ]
        )
    if not rows:
        return ""
    stages = []
    for rpc in RPCS:
        for stage, values in scenarios.get(scenario_name(rpc, "c1"), {}).get("stages", {}).items():
            stages.append([rpc, stage, number(values["p50_ms"], 3), number(values["p99_ms"], 3)])
    intro = "Concurrency 1, p50 in ms: the gateway vs the same dependency calls made directly, alternately.\n\n"
    text = "## Gateway overhead\n\n" + intro
    text += table(["rpc", "gateway", "direct calls", "overhead (ms)", "gateway / direct"], rows)
    return text + "\n\nThe gateway's own stage timings (ms):\n\n" + table(["rpc", "stage", "p50", "p99"], stages)


def answer_section(suite: dict) -> str:
    s = suite["scenarios"].get(scenario_name("answer", "c1"))
    if s is None:
        return ""
    row = [
        str(s["ok"]),
        str(sum(s["errors"].values())),
        number(s.get("ttft_p50_ms"), 1),
        number(s.get("ttft_p99_ms"), 1),
    ]
    row += [number(s.get("tokens_per_s_p50"), 1), number(s["p50_ms"], 1)]
    headers = ["answers", "errors", "TTFT p50 (ms)", "TTFT p99 (ms)", "tokens/s p50", "total p50 (ms)"]
    return "## Answer (local LLM), sequential\n\n" + table(headers, [row])


def overload_section(suite: dict) -> str:
    """The overload scenario: capacity, twice it offered, what came back (benchmarks/report.py overload_result)."""
    o = suite.get("overload")
    if not o:
        return ""
    codes = ", ".join(f"{code} {count}" for code, count in o["codes"].items())
    row = [number(o["capacity_rps"], 1), number(o["offered_rps"], 1), number(o["goodput_rps"], 1)]
    row += [number(o["goodput_ratio"], 3), number(o["shed_p99_ms"]), number(o.get("shed_p99_from_send_ms"))]
    row += [number(o["admitted_p99_ms"]), codes]
    headers = ["capacity req/s", "offered req/s", "goodput req/s", "goodput / capacity", "shed p99 (ms)"]
    headers += ["shed p99 from the actual send (ms)", "admitted p99 (ms)", "codes"]
    counters = ", ".join(f"{name} {value}" for name, value in o.get("gateway_counters", {}).items())
    cores = ", ".join(f"{group} {value:.2f}" for group, value in o.get("cpu_cores", {}).items())
    intro = (
        "Recommend: capacity = closed loop at c16 (OK answers/s); then an open loop at twice it with a 200 ms "
        "deadline. Shed = RESOURCE_EXHAUSTED answers, admitted = OK ones; latency from the intended send time "
        "(and, for shed ones, also from the actual send: the difference is the load generator's own lag).\n\n"
    )
    queued = o.get("queued_before_admission_ms") or {}
    outro = (
        f"\n\nWaited inside the gateway before admission (the deadline minus the deadline left, from "
        f"`recstack_admission_deadline_left_seconds`): p50 {number(queued.get('p50'))} ms, p90 "
        f"{number(queued.get('p90'))} ms. Gateway counters over the overloaded window: {counters or '–'}. "
        f"CPU cores used: {cores or '–'}."
    )
    return "## Overload (twice the capacity)\n\n" + intro + table(headers, [row]) + outro


def open_loop_section(suite: dict) -> str:
    scenarios = suite["scenarios"]
    rows = []
    for rpc in RPCS:
        rates = sorted({s["rate"] for s in scenarios.values() if s.get("mode") == "open" and s["rpc"] == rpc})
        for rate in rates:
            load = f"r{rate:g}"
            rows.append(
                [
                    rpc,
                    f"{rate:g}",
                    *side_cells(scenarios, scenario_name(rpc, load)),
                    *side_cells(scenarios, scenario_name(rpc, load, NAIVE)),
                ]
            )
    if not rows:
        return ""
    headers = ["rpc", "offered req/s", "ours p50", "ours p99", "ours QPS", "ours err", "naive p50", "naive p99"]
    headers += ["naive QPS", "naive err"]
    limits = [
        f"{rpc}: ours {number(suite['max_rate'].get(rpc, {}).get(GATEWAY), 0)} req/s, "
        f"naive {number(suite['max_rate'].get(rpc, {}).get(NAIVE), 0)} req/s"
        for rpc in RPCS
    ]
    intro = "Open loop (latency from the intended send time), demo catalog, ms.\n\n"
    outro = f"\n\nHighest offered rate with p99 <= {P99_BOUND_MS:g} ms, no error, no drop: " + "; ".join(limits) + "."
    return "## Latency vs offered load\n\n" + intro + table(headers, rows) + outro


def scale_section(suite: dict) -> str:
    scenarios, scale = suite["scenarios"], suite.get("scale", {})
    rows = []
    for label in scale:
        for rpc in RPCS:
            for load in ("c1", "c8"):
                ours, naive = scenario_name(rpc, load, GATEWAY, label), scenario_name(rpc, load, NAIVE, label)
                rows.append([label, f"{rpc}@{load}", *side_cells(scenarios, ours), *side_cells(scenarios, naive)])
    if not rows:
        return ""
    headers = ["items", "scenario", "ours p50", "ours p99", "ours QPS", "ours err", "naive p50", "naive p99"]
    headers += ["naive QPS", "naive err"]
    setup = [
        [label, f"{info['items']:,}", number(info["load"]["load_s"], 0), number(info["load"]["index_s"], 0),
         number(info.get("cache_warm", {}).get("seconds"), 1),
         number(info["recall"]["news"]["recall"], 3), number(info["recall"]["passages"]["recall"], 3)]
        for label, info in scale.items()
    ]  # fmt: skip
    setup_headers = [
        "catalog",
        "items",
        "load (s)",
        "index (s)",
        "cache warm (s)",
        "recall@10 news",
        "recall@10 passages",
    ]
    growth = [[name, number(value)] for name, value in suite["ratios"].items() if "_growth_" in name]
    intro = "Synthetic clustered vectors, ms. Recall: HNSW vs brute force on the same synthetic catalog.\n\n"
    text = "## Latency vs catalog size\n\n" + intro + table(headers, rows) + "\n\n" + table(setup_headers, setup)
    return text + ("\n\n" + table(["p50 growth (concurrency 1)", "x"], growth) if growth else "")


def recall_section(suite: dict) -> str:
    recall = suite.get("recall", {})
    rows = [
        [name, str(r["catalog"]), str(r["queries"]), str(r["ef"]), number(r["recall"], 4)] for name, r in recall.items()
    ]
    if not rows:
        return ""
    intro = "The served models' real embeddings: news titles (NRMS news encoder) searched with dev users' vectors; "
    intro += "passages (doc tower) searched with dev queries (query tower). HNSW top-10 vs NumPy brute force.\n\n"
    return (
        "## ANN recall@10 on real embeddings\n\n"
        + intro
        + table(["collection", "items", "queries", "ef", "recall@10"], rows)
    )


def scenarios_section(suite: dict) -> str:
    rows = []
    for name, s in suite["scenarios"].items():
        errors = ", ".join(f"{code} {n}" for code, n in s["errors"].items()) or "–"
        rows.append(
            [
                name,
                str(s["requests"]),
                errors,
                number(s["qps"], 1),
                number(s["p50_ms"]),
                number(s["p99_ms"]),
                number(s["max_ms"]),
            ]
        )
    headers = ["scenario", "requests", "errors", "QPS", "p50 ms", "p99 ms", "max ms"]
    return "## All scenarios\n\n" + table(headers, rows)
