"""The benchmark suite's logic without servers: alternation, ratios, budgets, recall, rendering, helpers."""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import io
import json
import math
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pymilvus.grpc_gen import milvus_pb2, milvus_pb2_grpc
from rich.console import Console

from benchmarks import render, scale
from benchmarks.alternation import Side, alternate, window_order
from benchmarks.components import DIRECT_CALLS, CatalogVectors
from benchmarks.inputs import Inputs
from benchmarks.loadgen import OK, LoadConfig, Reply
from benchmarks.plots import plot_open_loop, plot_scale
from benchmarks.recall import ann_recall, exact_top_k, recall_at_k
from benchmarks.report import (
    ECHO,
    GATEWAY,
    NAIVE,
    TARGETS,
    Budget,
    check_budgets,
    cpu_ms_per_request,
    derive_ratios,
    evaluate_targets,
    load_budgets,
    max_rate_within,
    overhead_ms,
    scenario_name,
)
from benchmarks.scale import SyntheticCatalog, Waiting, clustered_vectors, size_label
from benchmarks.suite import (
    DEADLINE_LEFT_BUCKET,
    PROFILES,
    Bench,
    Collector,
    build_suite,
    gateway_counters,
    parse_sizes,
    pop_buckets,
    release_quietly,
    sample_label,
    start_together,
    wait_for_cache_warm,
)
from benchmarks.workload import synthetic_ids
from contract.schemas import NEWS_FIELDS, PASSAGE_FIELDS
from devstack.process import free_port
from recstack.v1 import gateway_pb2 as pb
from server.config import MilvusSettings
from server.domain import Hit, Hits
from server.observability import (
    CACHE_WARM_METRIC,
    CACHE_WARMUP_FAILED_METRIC,
    CACHE_WARMUP_SECONDS_METRIC,
    CACHE_WARMUP_VECTORS_METRIC,
)

BUDGETS = Path(__file__).resolve().parents[1] / "benchmarks" / "budgets.yaml"


# ------------------------------------------------------------------------------------- alternation


class FixedLatencyClient:
    """Answers at once but reports the answer `latency_ms` later: deterministic latencies, no sleeping."""

    def __init__(self, latency_ms: float) -> None:
        self.latency_ms = latency_ms

    async def call(self, rpc: str, request: object, timeout_s: float) -> Reply:
        await asyncio.sleep(0)
        return Reply(OK, time.perf_counter() + self.latency_ms / 1000.0)


class OneRequest:
    def make(self, rpc: str, rng: object) -> pb.RecommendRequest:
        return pb.RecommendRequest(user_id="u", k=10)


def fixed_side(name: str, client: FixedLatencyClient, window_s: float = 0.05) -> Side:
    config = LoadConfig(target=name, concurrency=1, duration_s=window_s, warmup_s=0.0)
    return Side.create(name, GATEWAY, config, client, OneRequest())


def test_window_order_reverses_on_odd_rounds() -> None:
    sides = [fixed_side(name, FixedLatencyClient(1)) for name in "abc"]
    assert [s.name for s in window_order(sides, 0)] == ["a", "b", "c"]
    assert [s.name for s in window_order(sides, 1)] == ["c", "b", "a"]


def test_alternation_merges_every_window_of_a_side_into_one_histogram() -> None:
    fast, slow = FixedLatencyClient(1.0), FixedLatencyClient(50.0)
    sides = [fixed_side("fast", fast), fixed_side("slow", slow)]
    order: list[str] = []
    ok_after_window: dict[str, list[int]] = {"fast": [], "slow": []}

    def on_window(side: Side) -> None:
        order.append(side.name)
        ok_after_window[side.name].append(side.run.result.overall.ok)
        if side.name == "fast":  # the fast side's later windows are slower: both must show in its histogram
            fast.latency_ms = 200.0

    results = asyncio.run(alternate(sides, rounds=3, on_window=on_window))

    assert order == ["fast", "slow", "slow", "fast", "fast", "slow"]
    for name, counts in ok_after_window.items():
        assert len(counts) == 3 and counts == sorted(counts) and counts[0] > 0
        result = results[name]
        assert result.overall.ok == counts[-1]  # the windows accumulated, none was dropped
        assert result.duration_s == pytest.approx(3 * 0.05)
        assert result.to_dict()["qps"] == pytest.approx(counts[-1] / (3 * 0.05), rel=1e-3)
    fast_latency = results["fast"].overall.latency
    assert fast_latency.percentile(0) < 100 <= fast_latency.max()  # round 1's 1 ms and later rounds' 200 ms
    assert results["slow"].overall.latency.percentile(50) >= 50


def test_alternation_rejects_duplicate_side_names_and_no_rounds() -> None:
    side = fixed_side("a", FixedLatencyClient(1))
    with pytest.raises(ValueError, match="unique"):
        asyncio.run(alternate([side, fixed_side("a", FixedLatencyClient(1))], rounds=1))
    with pytest.raises(ValueError, match="rounds"):
        asyncio.run(alternate([side], rounds=0))


# ------------------------------------------------------------------------------------- ratios and targets


def scenario(p50: float, p99: float, qps: float, errors: dict | None = None, **extra: object) -> dict:
    return {"ok": 100, "requests": 100, "p50_ms": p50, "p99_ms": p99, "qps": qps, "errors": errors or {}} | extra


def measured_ci_run() -> dict[str, dict]:
    """What a "ci" run measures: gateway and naive at c1/c8, the direct dependency calls at c1, Answer."""
    scenarios = {
        scenario_name("recommend", "c1"): scenario(6.0, 9.0, 160),
        scenario_name("recommend", "c1", NAIVE): scenario(2.0, 4.0, 450),
        scenario_name("recommend", "c8"): scenario(30.0, 80.0, 240),
        scenario_name("recommend", "c8", NAIVE): scenario(10.0, 25.0, 720),
        scenario_name("search", "c1"): scenario(5.0, 8.0, 190),
        scenario_name("search", "c1", NAIVE): scenario(6.0, 9.0, 160),
        scenario_name("search", "c8"): scenario(28.0, 70.0, 250),
        scenario_name("search", "c8", NAIVE): scenario(40.0, 60.0, 190),
        scenario_name("answer", "c1"): scenario(1500.0, 2000.0, 0.5, ttft_p50_ms=900.0),
    }
    for rpc, parts in DIRECT_CALLS.items():
        for index, side in enumerate(parts):
            scenarios[scenario_name(rpc, "c1", side)] = scenario(1.0 + index, 3.0, 500)
    for name, values in scenarios.items():
        server = GATEWAY if ":" not in name else (NAIVE if name.startswith(NAIVE) else "direct")
        values |= {"catalog": "demo", "catalog_items": None, "mode": "closed", "dropped": 0, "max_ms": 99.0}
        values |= {"server": server}
    return scenarios


def with_cpu_measured(scenarios: dict[str, dict]) -> dict[str, dict]:
    """The c8 scenarios with every group's CPU ms per request (idle groups read low), and the echo side."""
    for rpc, base in (("recommend", 1.0), ("search", 2.0)):
        echo = scenario(1.0, 2.0, 2000, catalog="demo", catalog_items=None, mode="closed", dropped=0, max_ms=9.0)
        scenarios[scenario_name(rpc, "c8", ECHO)] = echo | {"server": ECHO}
        for side, busy in ((GATEWAY, ("gateway", "triton", "milvus")), (NAIVE, ("naive",)), (ECHO, ("echo",))):
            cpu = {group: 0.01 for group in ("gateway", "triton", "milvus", "naive", "echo", "loadgen")}
            cpu |= {group: base * (index + 1) for index, group in enumerate(busy)}
            scenarios[scenario_name(rpc, "c8", side)]["cpu_ms_per_request"] = cpu
    return scenarios


def test_cpu_per_request_reads_each_group_from_the_side_it_serves() -> None:
    cpu = cpu_ms_per_request(with_cpu_measured(measured_ci_run()))
    assert cpu == {
        "recommend@c8": {"gateway": 1.0, "triton": 2.0, "milvus": 3.0, "naive": 1.0, "echo": 1.0},
        "search@c8": {"gateway": 2.0, "triton": 4.0, "milvus": 6.0, "naive": 2.0, "echo": 2.0},
    }
    unmeasured = cpu_ms_per_request(measured_ci_run())
    assert set(unmeasured) == {"recommend@c8", "search@c8"}
    assert set(unmeasured["search@c8"].values()) == {None}


def test_ratios_are_ours_over_the_reference_from_the_same_run() -> None:
    ratios = derive_ratios(measured_ci_run())
    assert ratios["recommend@c1.p50_vs_naive"] == pytest.approx(6.0 / 2.0)
    assert ratios["recommend@c8.qps_vs_naive"] == pytest.approx(240 / 720, abs=1e-4)
    assert ratios["search@c8.p99_vs_naive"] == pytest.approx(70 / 60, abs=1e-4)
    assert ratios["recommend@c1.p50_vs_direct"] == pytest.approx(6.0 / (1.0 + 2.0))
    assert overhead_ms(measured_ci_run()) == {"recommend@c1": pytest.approx(3.0), "search@c1": pytest.approx(2.0)}
    assert ratios["gateway.error_rate"] == 0
    assert not [name for name in ratios if "growth" in name or "max_rate" in name]  # not measured in ci


def test_scale_ratios_and_growth_use_the_smallest_and_largest_catalog() -> None:
    scenarios = {}
    for label, items, p50 in (("10k", 10_000, 3.0), ("1m", 1_000_000, 4.5)):
        for side, qps in ((GATEWAY, 300.0), (NAIVE, 100.0)):
            for load in ("c1", "c8"):
                name = scenario_name("recommend", load, side, label)
                scenarios[name] = scenario(
                    p50 if side == GATEWAY else 10 * p50, 9.0, qps, catalog=label, catalog_items=items
                )
    ratios = derive_ratios(scenarios)
    assert ratios["1m/recommend@c8.qps_vs_naive"] == pytest.approx(3.0)
    assert ratios["recommend@c1.p50_growth_10k_to_1m"] == pytest.approx(1.5)
    assert ratios["naive:recommend@c1.p50_growth_10k_to_1m"] == pytest.approx(1.5)


def test_max_rate_is_the_highest_rate_within_the_p99_bound_without_errors_or_drops() -> None:
    def open_loop(rate: float, p99: float, errors: dict | None = None, dropped: int = 0) -> dict:
        return scenario(1.0, p99, rate, errors, mode="open", rate=rate, dropped=dropped)

    scenarios = {
        scenario_name("search", "r100"): open_loop(100, 10),
        scenario_name("search", "r200"): open_loop(200, 29),
        scenario_name("search", "r300"): open_loop(300, 31),
        scenario_name("search", "r400"): open_loop(400, 5, {"DEADLINE_EXCEEDED": 1}),
        scenario_name("search", "r100", NAIVE): open_loop(100, 12),
        scenario_name("search", "r200", NAIVE): open_loop(200, 20, dropped=3),
    }
    assert max_rate_within(scenarios, "search", GATEWAY) == 200
    assert max_rate_within(scenarios, "search", NAIVE) == 100
    assert derive_ratios(scenarios)["search.max_rate_vs_naive"] == pytest.approx(2.0)


def test_targets_report_met_not_met_and_not_measured() -> None:
    scenarios = measured_ci_run()
    suite = {"scenarios": scenarios, "ratios": derive_ratios(scenarios), "overhead_ms": overhead_ms(scenarios)}
    suite["recall"] = {"news": {"recall": 0.99}}
    rows = {row["target"]: row for row in evaluate_targets(suite)}
    assert rows["Recommend p50 at concurrency 1"]["status"] == "not met"  # 6 ms > 4 ms
    assert rows["Recommend p50 at concurrency 1"]["measured"] == 6.0
    assert rows["ANN recall@10, real news vectors"]["status"] == "met"
    assert rows["Recommend throughput vs naive, 1M items"]["status"] == "not measured"


# ------------------------------------------------------------------------------------- budgets


def test_a_ratio_over_its_budget_fails_with_a_message_naming_it() -> None:
    budgets = [Budget("search@c1.p50_vs_naive", max=1.5), Budget("search@c8.qps_vs_naive", min=0.5)]
    over = check_budgets({"search@c1.p50_vs_naive": 1.8, "search@c8.qps_vs_naive": 0.4}, budgets)
    assert [check.ok for check in over] == [False, False]
    assert "search@c1.p50_vs_naive = 1.8" in over[0].message and "OVER BUDGET" in over[0].message
    assert "<= 1.5" in over[0].message and ">= 0.5" in over[1].message
    under = check_budgets({"search@c1.p50_vs_naive": 1.2, "search@c8.qps_vs_naive": 0.9}, budgets)
    assert [check.ok for check in under] == [True, True]


def test_gateway_errors_count_against_the_error_rate_but_naive_errors_do_not() -> None:
    scenarios = measured_ci_run()
    scenarios[scenario_name("search", "c8")] |= {"errors": {"UNAVAILABLE": 5}, "requests": 100}
    scenarios[scenario_name("search", "c8", NAIVE)] |= {"errors": {"DEADLINE_EXCEEDED": 50}}
    gateway_requests = sum(s["requests"] for s in scenarios.values() if s["server"] == GATEWAY)
    assert derive_ratios(scenarios)["gateway.error_rate"] == pytest.approx(5 / gateway_requests, abs=1e-6)


def test_an_unmeasured_ratio_fails_its_budget() -> None:
    (check,) = check_budgets({}, [Budget("recommend@c1.p50_vs_direct", max=2.0)])
    assert not check.ok and "not measured" in check.message


def test_budgets_file_errors_name_the_file_and_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text("budgets:\n  recommend@c1.p50_vs_naive: {max: fast}\n")
    with pytest.raises(ValueError, match=r"budgets\.yaml: budgets\.recommend@c1\.p50_vs_naive\.max"):
        load_budgets(path)
    path.write_text("budgets:\n  recommend@c1.p50_vs_naive: {below: 2}\n")
    with pytest.raises(ValueError, match=r"recommend@c1\.p50_vs_naive"):
        load_budgets(path)
    path.write_text("nothing: here\n")
    with pytest.raises(ValueError, match="budgets"):
        load_budgets(path)


def test_every_budget_in_the_repository_bounds_a_ratio_a_ci_run_produces() -> None:
    budgets = load_budgets(BUDGETS)
    overload = {"goodput_ratio": 0.95}  # a ci run's overload key (benchmarks/report.py overload_result)
    produced = derive_ratios(with_cpu_measured(measured_ci_run()), overload)
    assert budgets and {budget.ratio for budget in budgets} <= set(produced)


# ------------------------------------------------------------------------------------- recall


def test_exact_top_k_orders_by_inner_product() -> None:
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    queries = np.array([[1.0, 0.1], [0.0, -1.0]], dtype=np.float32)
    assert exact_top_k(queries, vectors, 2).tolist() == [[2, 0], [0, 3]]  # second: two zeros, ties keep row order
    assert exact_top_k(queries, vectors, 10).shape == (2, 4)  # k beyond the catalog: every row


def test_recall_at_k_counts_the_overlap_per_query() -> None:
    found = [["a", "b", "c"], ["x", "y", "z"]]
    exact = [["a", "c", "d"], ["x", "y", "z"]]
    assert recall_at_k(found, exact, 3) == pytest.approx((2 / 3 + 1) / 2)
    assert recall_at_k(found, exact, 1) == 1.0
    with pytest.raises(ValueError):
        recall_at_k(found, exact[:1], 3)


class FakeStore:
    """Searches exactly, or (`drop_best`) returns the exact ranks 2..k+1: recall (k-1)/k."""

    def __init__(self, catalog: CatalogVectors, drop_best: bool) -> None:
        self.catalog, self.drop_best = catalog, drop_best
        self.settings = MilvusSettings(search_ef=64)

    async def search(self, collection: str, queries: np.ndarray, limit: int) -> list[Hits]:
        top = exact_top_k(queries, self.catalog.vectors, limit + 1)
        rows = top[:, 1:] if self.drop_best else top[:, :limit]
        return [Hits.of(Hit(self.catalog.ids[row], 0.0, {}) for row in query_rows) for query_rows in rows]


def test_ann_recall_compares_the_store_with_brute_force() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((50, 8)).astype(np.float32)
    queries = rng.standard_normal((5, 8)).astype(np.float32)
    catalog = CatalogVectors([f"n{i}" for i in range(50)], vectors)
    exact = FakeStore(catalog, drop_best=False)
    assert asyncio.run(ann_recall(exact, "news", catalog, queries, k=5)).recall == 1.0
    lossy = asyncio.run(ann_recall(FakeStore(catalog, drop_best=True), "news", catalog, queries, k=5))
    assert lossy.recall == pytest.approx(4 / 5) and lossy.queries == 5 and lossy.catalog == 50


# ------------------------------------------------------------------------------------- synthetic catalogs


def test_clustered_vectors_do_not_depend_on_the_chunks_they_are_generated_in() -> None:
    whole = clustered_vectors(0, 25_000, 4, seed=3, unit=True)
    assert np.array_equal(whole[12_000:21_000], clustered_vectors(12_000, 21_000, 4, seed=3, unit=True))
    assert np.allclose(np.linalg.norm(whole, axis=1), 1.0, atol=1e-5)
    assert not np.array_equal(whole, clustered_vectors(0, 25_000, 4, seed=4, unit=True))


def test_synthetic_rows_fill_the_gateway_schema_with_the_load_generators_ids() -> None:
    catalog = SyntheticCatalog(30, news_dim=4, passage_dim=6)
    news, passages = catalog.rows("news", 10, 20), catalog.rows("passage", 0, 30)
    assert {row["id"] for row in news} == set(synthetic_ids("news", 20)[10:])
    assert set(news[0]) == {"id", "vector"} | {f.name for f in NEWS_FIELDS}
    assert set(passages[0]) == {"id", "vector"} | {f.name for f in PASSAGE_FIELDS}
    assert news[0]["vector"].shape == (4,) and passages[0]["vector"].shape == (6,)
    env = catalog.gateway_env()
    assert env["RECSTACK_MILVUS__NEWS_COLLECTION"] == catalog.news_collection != "news"
    assert env["RECSTACK_RECOMMEND__ITEM_CACHE_CAPACITY"] == "30"


def test_size_labels_and_parsing_round_trip() -> None:
    assert [size_label(n) for n in (10_000, 100_000, 1_000_000, 2_507)] == ["10k", "100k", "1m", "2507"]
    assert parse_sizes("10k, 100k,1m") == (10_000, 100_000, 1_000_000)
    assert parse_sizes("") == ()
    with pytest.raises(Exception, match="catalog size"):
        parse_sizes("ten")


# ------------------------------------------------------------------------------------- process helpers


@contextlib.contextmanager
def metrics_endpoint(registry: CollectorRegistry) -> Iterator[str]:
    """A /metrics URL serving `registry` while the block runs."""

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def gateway_metrics() -> Iterator[tuple[str, dict[str, Gauge]]]:
    """A metrics endpoint serving the gateway's cache warm-up gauges (all 0 at first) for the test to set."""
    registry = CollectorRegistry()
    names = (CACHE_WARM_METRIC, CACHE_WARMUP_FAILED_METRIC, CACHE_WARMUP_VECTORS_METRIC, CACHE_WARMUP_SECONDS_METRIC)
    gauges = {name: Gauge(name, name, registry=registry) for name in names}
    with metrics_endpoint(registry) as url:
        yield url, gauges


@pytest.mark.parametrize(
    ("flag", "event"), [(CACHE_WARM_METRIC, "cache_warm"), (CACHE_WARMUP_FAILED_METRIC, "cache_warmup_failed")]
)
def test_cache_warm_outcome_is_polled_from_the_gateway_metrics(
    gateway_metrics: tuple[str, dict[str, Gauge]], flag: str, event: str
) -> None:
    url, gauges = gateway_metrics
    with pytest.raises(TimeoutError, match="cache warm-up"):
        wait_for_cache_warm(url, timeout_s=0.2)  # still warming: every gauge 0
    gauges[CACHE_WARMUP_VECTORS_METRIC].set(7)
    gauges[CACHE_WARMUP_SECONDS_METRIC].set(1.234)
    gauges[flag].set(1)
    outcome = wait_for_cache_warm(url, timeout_s=5)
    assert outcome == {"event": event, "failed": event != "cache_warm", "vectors": 7, "seconds": 1.23}


def test_gateway_counters_are_read_by_name_and_labels() -> None:
    registry = CollectorRegistry()
    calls = Counter("recstack_dependency_calls", "calls", ["dependency", "outcome"], registry=registry)
    Counter("recstack_other", "not read", registry=registry).inc()
    calls.labels("triton", "wasted").inc(3)
    calls.labels("milvus", "ok").inc(5)
    left = Histogram(
        "recstack_admission_deadline_left_seconds", "left", ["method"], buckets=(0.1, 0.2), registry=registry
    )
    for seconds in (0.05, 0.15, 0.15):
        left.labels("Recommend").observe(seconds)
    left.labels("Search").observe(0.05)
    with metrics_endpoint(registry) as url:
        samples = gateway_counters(url)
    assert pop_buckets(samples, DEADLINE_LEFT_BUCKET, method="Recommend") == {0.1: 1.0, 0.2: 3.0, math.inf: 3.0}
    assert pop_buckets(samples, DEADLINE_LEFT_BUCKET, method="Recommend") == {}  # popped
    assert {sample_label(key): count for key, count in samples.items()} == {
        "recstack_dependency_calls_total{dependency=milvus,outcome=ok}": 5.0,
        "recstack_dependency_calls_total{dependency=triton,outcome=wasted}": 3.0,
        **{f"{DEADLINE_LEFT_BUCKET}{{le={le},method=Search}}": 1.0 for le in ("0.1", "0.2", "+Inf")},
    }


def test_cache_warm_wait_times_out_while_the_gateway_serves_no_metrics() -> None:
    with pytest.raises(TimeoutError, match="cache warm-up"):
        wait_for_cache_warm(f"http://127.0.0.1:{free_port('127.0.0.1')}/metrics", timeout_s=0.2)


def test_start_together_runs_every_start_and_raises_the_first_failure() -> None:
    finished = []
    gate = threading.Barrier(2, timeout=5)  # both starts must run at the same time to pass the barrier

    def good() -> None:
        gate.wait()
        finished.append("good")

    def bad() -> None:
        gate.wait()
        finished.append("bad")
        raise RuntimeError("no port")

    with pytest.raises(RuntimeError, match="no port"):
        start_together(good, bad)
    assert sorted(finished) == ["bad", "good"]


@pytest.mark.timeout(30)
def test_waiting_on_milvus_gives_up_once_cancelled_without_sleeping_out_its_interval() -> None:
    cancelled = threading.Event()
    waiting = Waiting(time.monotonic() + 3600, interval_s=600, cancelled=cancelled)
    threading.Timer(0.1, cancelled.set).start()
    with pytest.raises(InterruptedError, match="index build of news"):
        waiting.until(lambda: False, "index build of news")
    with pytest.raises(TimeoutError, match="compaction"):
        Waiting(time.monotonic() - 1, interval_s=0.01, cancelled=threading.Event()).until(lambda: False, "compaction")


class IndexingMilvus:
    """MilvusClient's settle() calls: "mine" settles at once, "other" still has index builds queued."""

    def __init__(self, *_args: object, **_kwargs: object) -> None:
        self.pending = {"mine": 0, "other": 3}  # "other" finishes after three more polls

    def flush(self, collection: str, timeout: float) -> None:
        pass

    def compact(self, collection: str, timeout: float) -> int:
        return 1

    def get_compaction_state(self, job: int, timeout: float) -> str:
        return "Completed"

    def list_collections(self, timeout: float) -> list[str]:
        return list(self.pending)

    def list_indexes(self, collection: str, field_name: str, timeout: float) -> list[str]:
        return ["vector"]

    def describe_index(self, collection: str, index: str, timeout: float) -> dict:
        rows = self.pending[collection]
        self.pending[collection] = max(0, rows - 1)
        return {"pending_index_rows": rows}

    def list_loaded_segments(self, collection: str, timeout: float) -> list:
        return []

    def list_persistent_segments(self, collection: str, timeout: float) -> list:
        return []

    def release_collection(self, collection: str, timeout: float) -> None:
        if collection not in self.pending:
            raise LookupError(f"collection not found: {collection}")
        IndexingMilvus.released.append(collection)

    def close(self) -> None:
        IndexingMilvus.closed_with = dict(self.pending)


def test_settle_waits_for_index_builds_queued_on_other_collections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scale, "MilvusClient", IndexingMilvus)
    scale.settle("http://milvus", ["mine"], poll_s=0.001, compact=False)
    assert IndexingMilvus.closed_with == {"mine": 0, "other": 0}


class CompactionService(milvus_pb2_grpc.MilvusServiceServicer):
    """Milvus's ManualCompaction, recording each request."""

    def __init__(self) -> None:
        self.requests: list[milvus_pb2.ManualCompactionRequest] = []

    def ManualCompaction(self, request, context):
        self.requests.append(request)
        return milvus_pb2.ManualCompactionResponse(compactionID=7)


def test_a_bench_compaction_names_the_collection_by_its_id() -> None:
    """Milvus 2.3.5 reads only collectionID; pymilvus 2.5's compact() left it 0, which compacts everything."""
    service = CompactionService()
    server = grpc.server(ThreadPoolExecutor(1))
    milvus_pb2_grpc.add_MilvusServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:

        class Described:
            def describe_collection(self, collection: str, timeout: float) -> dict:
                return {"collection_id": 4242, "collection_name": collection}

        job = scale.compact_collection(Described(), f"http://127.0.0.1:{port}", "bench_news_1m_d128")
    finally:
        server.stop(None)
    assert job == 7
    assert [(r.collectionID, r.collection_name) for r in service.requests] == [(4242, "bench_news_1m_d128")]


def test_measured_collections_are_released_and_a_failure_is_logged_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scale, "MilvusClient", IndexingMilvus)
    monkeypatch.setattr(IndexingMilvus, "released", [], raising=False)
    bench = Bench(PROFILES["ci"], Console(record=True, width=200, file=io.StringIO()))
    release_quietly(bench, "http://milvus", ["mine", "other"])
    assert IndexingMilvus.released == ["mine", "other"]
    release_quietly(bench, "http://milvus", ["gone"])
    assert "could not release ['gone']: collection not found: gone" in bench.console.export_text()


@pytest.fixture
def ctrl_c_raises() -> Iterator[None]:
    """Python's own SIGINT handler, also where the test runner was started with SIGINT ignored (CI)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.timeout(30)
@pytest.mark.usefixtures("ctrl_c_raises")
def test_ctrl_c_during_startup_cancels_the_long_waits_and_is_raised(tmp_path: Path) -> None:
    cancelled = threading.Event()
    gave_up = []

    def wait_for_the_gateway() -> None:
        try:
            metrics_url = f"http://127.0.0.1:{free_port('127.0.0.1')}/metrics"
            wait_for_cache_warm(metrics_url, timeout_s=600, cancelled=cancelled)
        except InterruptedError as error:
            gave_up.append(str(error))

    threading.Timer(0.2, _thread.interrupt_main).start()  # what Ctrl-C does to the main thread
    with pytest.raises(KeyboardInterrupt):
        start_together(wait_for_the_gateway, cancelled=cancelled)
    assert cancelled.is_set()
    assert gave_up and "cache warm-up" in gave_up[0]


# ------------------------------------------------------------------------------------- rendering


def test_suite_json_and_markdown_have_the_documented_shape(tmp_path: Path) -> None:
    recall = {"news": {"k": 10, "recall": 1.0, "queries": 3, "catalog": 9, "ef": 64}}
    collector = Collector(scenarios=with_cpu_measured(measured_ci_run()), recall=recall)
    meta = {"started": "2026-01-01T00:00:00+00:00", "machine": "test", "inputs": {"origin": "demo"}, "rounds": 3}
    meta |= {"window_s": 1.5, "wall_s": 12.0}
    suite = build_suite(PROFILES["ci"], collector, meta, BUDGETS)
    loaded = json.loads(json.dumps(suite))
    for values in loaded["scenarios"].values():
        assert {"p50_ms", "p99_ms", "qps", "errors"} <= set(values)
    assert loaded["ratios"]["recommend@c1.p50_vs_naive"] == pytest.approx(3.0)
    assert len(loaded["targets"]) == len(TARGETS) and loaded["budgets"]
    markdown = render.render_markdown(loaded)
    for heading in ("## Targets", "## Regression budgets", "## Ours vs the naive baseline", "## Gateway overhead"):
        assert heading in markdown
    assert all(target.name in markdown for target in TARGETS)
    assert "| recommend@c1 | 6.00 | 9.00 | 160.0 | 0 | 2.00 |" in markdown
    assert loaded["cpu_ms_per_request"]["search@c8"] == {
        "gateway": 2.0,
        "triton": 4.0,
        "milvus": 6.0,
        "naive": 2.0,
        "echo": 2.0,
    }
    assert "## CPU per request" in markdown
    assert "| search@c8 | 2.000 | 4.000 | 6.000 | 2.000 | 2.000 | 12.000 |" in markdown
    summary = render.render_summary(loaded)
    assert "## Targets" in summary and "## All scenarios" not in summary
    assert plot_open_loop(loaded, tmp_path / "open.png") is None and plot_scale(loaded, tmp_path / "scale.png") is None


def test_plots_are_written_for_open_loop_and_scale_measurements(tmp_path: Path) -> None:
    scenarios = {}
    for side in (GATEWAY, NAIVE):
        for rate in (50, 100):
            values = scenario(2.0, 5.0, rate, mode="open", rate=rate, rpc="recommend", side=side)
            scenarios[scenario_name("recommend", f"r{rate}", side)] = values
        for label in ("10k", "100k"):
            for load in ("c1", "c8"):
                scenarios[scenario_name("search", load, side, label)] = scenario(2.0, 5.0, 100.0)
    suite = {"scenarios": scenarios, "max_rate": {rpc: {"p99_bound_ms": 30.0} for rpc in ("recommend", "search")}}
    suite["scale"] = {"10k": {"items": 10_000}, "100k": {"items": 100_000}}
    for path in (plot_open_loop(suite, tmp_path / "open.png"), plot_scale(suite, tmp_path / "scale.png")):
        assert path is not None and path.read_bytes().startswith(b"\x89PNG")


def test_inputs_list_every_missing_file_until_the_layout_is_complete(tmp_path: Path) -> None:
    inputs = Inputs.at("demo", tmp_path / "checkpoints", tmp_path / "serving", tmp_path / "data")
    missing = inputs.missing()
    assert inputs.nrms in missing and inputs.triton_repo / "nrms_user_encoder" / "config.pbtxt" in missing
    for path in missing:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    assert inputs.missing() == []
    assert inputs.tokenizers == tmp_path / "serving" / "tokenizers"
