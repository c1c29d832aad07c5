"""The benchmark suite behind `make bench-ci` (profile "ci") and `make bench` (profile "full").

    python -m benchmarks.suite ci     # demo catalog; ratios checked against benchmarks/budgets.yaml
    python -m benchmarks.suite full   # + open-loop ladder, synthetic catalogs (10k, 100k, 1M), plots

Every comparison measures its sides in the same run, alternating short windows (benchmarks/alternation.py),
so machine drift cancels in the ratios. Steps:

1. Inputs (benchmarks/inputs.py): the demo models, or in "ci" one-epoch models of the same shapes.
2. Processes, all on free loopback ports, state and logs under artifacts/bench/<profile>/: the local
   stack (Milvus, Triton, the LLM server, the gateway) with the demo catalog indexed through the
   gateway's UpsertItems (export.catalog) and settled (sealed, compacted, HNSW-indexed, as a catalog
   that has been serving for a while), and meanwhile the naive server (benchmarks/naive_server.py) and
   the echo server (benchmarks/echo_server.py: canned answers, the floor).
3. Demo catalog: ANN recall@10 on the real embeddings (benchmarks/recall.py); Recommend and Search at
   concurrency 1 (gateway, naive, and the gateway's dependency calls made directly,
   benchmarks/components.py) and 8 (gateway, naive, echo); Answer at concurrency 1 with the local LLM;
   overload: the gateway's Recommend capacity (closed loop), then an open loop at twice it with a 200 ms
   deadline (`measure_overload`; profile "overload" runs only this, without budgets, for tuning).
   Every window here also samples the CPU seconds of each process group (benchmarks/cpu.py): CPU ms
   per request of the gateway, Triton, Milvus, the naive and echo servers and the load generator.
4. "full" only: an open-loop rate ladder (gateway vs naive), then per synthetic catalog
   (benchmarks/scale.py) a gateway and a naive server over N items, Recommend and Search at 1 and 8.
5. Ratios, overheads, targets and budgets (benchmarks/report.py) -> benchmarks/results/<name>.json and
   .md (benchmarks/render.py), PNG plots in "full" (benchmarks/plots.py). Exit status 1 when a budget
   fails, 2 when the suite could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as triton_aio
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.markdown import Markdown
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from benchmarks import render
from benchmarks.alternation import Client, Side, alternate
from benchmarks.components import (
    CaseRequests,
    CatalogVectors,
    Dependencies,
    RecommendCase,
    SearchCase,
    recommend_cases,
    search_cases,
)
from benchmarks.cpu import CpuMeter, ProcessGroup
from benchmarks.echo_server import echo_server_process
from benchmarks.inputs import Inputs, resolve_inputs
from benchmarks.loadgen import GatewayClient, LoadConfig
from benchmarks.naive_server import NaiveServerConfig, naive_server_process
from benchmarks.plots import plot_open_loop, plot_scale
from benchmarks.recall import ann_recall
from benchmarks.report import (
    DEMO,
    ECHO,
    GATEWAY,
    NAIVE,
    OVERLOAD_CAPACITY_LOAD,
    OVERLOAD_DEADLINE_MS,
    OVERLOAD_FACTOR,
    P99_BOUND_MS,
    RPCS,
    check_budgets,
    cpu_ms_per_request,
    derive_ratios,
    evaluate_targets,
    load_budgets,
    max_rate_within,
    overhead_ms,
    overload_result,
    scenario_name,
)
from benchmarks.scale import SyntheticCatalog, clustered_vectors, load_catalog, release, settle
from benchmarks.stats import ScenarioResult
from benchmarks.workload import DemoRequests, RequestFactory, RequestOptions, Rpc, SyntheticRequests, synthetic_ids
from contract import layout
from devstack.local import HOST, LocalStack, StackConfig
from devstack.process import ManagedProcess, StartupError, free_port
from export.catalog import index_catalog
from server.config import MilvusSettings, RecommendSettings
from server.milvus import MilvusStore
from server.observability import (
    CACHE_WARM_METRIC,
    CACHE_WARMUP_FAILED_METRIC,
    CACHE_WARMUP_SECONDS_METRIC,
    CACHE_WARMUP_VECTORS_METRIC,
)

K = 10
CONCURRENCIES = (1, 8)
DEADLINE_MS = 10_000.0  # generous: a saturated naive server over 1M items still answers, late
ANSWER_TOKENS = 32
ANSWER_DEADLINE_MS = 60_000.0
SATURATED_P99_MS = 1_000.0  # open loop: a side past this p99 (or with errors or drops) is offered no more
SYNTHETIC_RECALL_QUERIES = 200
CACHE_WARM_TIMEOUT_S = 900.0
RESULTS = Path("benchmarks/results")
BUDGETS = Path("benchmarks/budgets.yaml")
STATE = layout.BENCH
LOADGEN = "loadgen"  # the load generator's own CPU group (scenario dicts only)
# Every answer goes through the LLM: otherwise a low best-passage score answers "not in the sources"
# without it, and time to first token would measure that shortcut.
GATEWAY_ENV = {"RECSTACK_RAG__MIN_SCORE": "-1"}


@dataclass(frozen=True)
class Profile:
    name: str
    rounds: int  # alternating rounds per comparison
    window_s: float  # measured seconds per side per round
    warmup_s: float  # unrecorded seconds before each window
    answer_s: float  # Answer: one window this long
    recommend_cases: int  # dev impressions prepared for Recommend
    rates: tuple[float, ...] = ()  # open-loop ladder, req/s
    open_loop_rounds: int = 2  # alternating rounds per step of the ladder
    sizes: tuple[int, ...] = ()  # synthetic catalog sizes
    build_inputs: bool = False  # may train one-epoch models when the demo ones are missing
    fresh_state: bool = True  # start from an empty Milvus (False: keep loaded synthetic catalogs)
    capacity_s: float = 3.0  # overload: measured seconds of the closed-loop capacity window
    overload_s: float = 10.0  # overload: measured seconds of the open loop at twice the capacity
    comparisons: bool = True  # False: the overload scenario only, and no budget is checked


PROFILES = {
    "ci": Profile("ci", rounds=3, window_s=1.5, warmup_s=0.5, answer_s=8.0, recommend_cases=500, build_inputs=True),
    "full": Profile(
        "full",
        rounds=4,
        window_s=3.0,
        warmup_s=1.0,
        answer_s=20.0,
        recommend_cases=2000,
        rates=(25, 50, 100, 200, 300, 400, 600, 800),
        sizes=(10_000, 100_000, 1_000_000),
        fresh_state=False,
        capacity_s=5.0,
        overload_s=20.0,
    ),
    "overload": Profile(
        "overload", rounds=1, window_s=1.5, warmup_s=1.0, answer_s=0.0, recommend_cases=500, comparisons=False
    ),
}


@dataclass(frozen=True)
class Endpoint:
    """Something a side sends its requests to: `server` is "gateway", "naive" or "direct"."""

    name: str
    server: str
    target: str
    client: Client


@dataclass
class Collector:
    """Everything measured, by scenario name (benchmarks/report.py), plus recall and setup facts."""

    scenarios: dict[str, dict] = field(default_factory=dict)
    recall: dict[str, dict] = field(default_factory=dict)
    scale: dict[str, dict] = field(default_factory=dict)
    setup_s: dict[str, float] = field(default_factory=dict)
    overload: dict = field(default_factory=dict)  # benchmarks/report.py overload_result, and what it came from

    def add(self, side: Side, result: ScenarioResult, catalog: str = DEMO, items: int | None = None) -> str:
        load = f"c{result.concurrency}" if result.mode == "closed" else f"r{result.rate:g}"
        name = scenario_name(result.rpc, load, side.name, catalog)
        if name in self.scenarios:
            raise ValueError(f"scenario {name} measured twice")
        self.scenarios[name] = result.to_dict() | {
            "side": side.name,
            "server": side.server,
            "catalog": catalog,
            "catalog_items": items,
            "windows": side.windows,
            "window_s": side.config.duration_s,
        }
        if side.cpu_meter is not None:
            self.scenarios[name]["cpu_ms_per_request"] = side.cpu.ms_per_request()
        return name

    @contextlib.contextmanager
    def timed(self, step: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.setup_s[step] = round(time.perf_counter() - started, 1)


@dataclass
class Bench:
    """Runs comparisons with the profile's rounds and windows into the collector, showing progress;
    with a `cpu_meter`, every side's windows sample the processes' CPU too."""

    profile: Profile
    console: Console
    collector: Collector = field(default_factory=Collector)
    cancelled: threading.Event = field(default_factory=threading.Event)  # set on Ctrl-C: long waits give up
    cpu_meter: CpuMeter | None = None

    def side(self, endpoint: Endpoint, factory: RequestFactory, rpc: Rpc, **load: object) -> Side:
        values = {"duration_s": self.profile.window_s, "warmup_s": self.profile.warmup_s, "deadline_ms": DEADLINE_MS}
        values |= {"k": K, "max_in_flight": 2048} | load
        config = LoadConfig(target=endpoint.target, mix={rpc: 1.0}, **values)
        return Side.create(endpoint.name, endpoint.server, config, endpoint.client, factory, self.cpu_meter)

    async def compare(
        self, title: str, sides: Sequence[Side], catalog: str = DEMO, items: int | None = None, rounds: int = 0
    ) -> dict[str, dict]:
        """Alternate the sides, record them, print one summary line; returns each side's scenario dict."""
        rounds = rounds or self.profile.rounds
        with progress_bar(self.console) as progress:
            task = progress.add_task(title, total=rounds * len(sides))
            results = await alternate(sides, rounds, on_window=lambda _side: progress.advance(task))
        measured = {}
        for side in sides:
            measured[side.name] = self.collector.scenarios[self.collector.add(side, results[side.name], catalog, items)]
        summary = "  ".join(
            f"{name} p50 {s['p50_ms']:.2f} p99 {s['p99_ms']:.2f} ms {s['qps']:.0f}/s"
            + (f" errors {sum(s['errors'].values())}" if s["errors"] else "")
            for name, s in measured.items()
        )
        self.console.log(f"{title}: {summary}")
        return measured


def progress_bar(console: Console) -> Progress:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=console, transient=True)


@contextlib.asynccontextmanager
async def gateway_endpoint(name: str, target: str) -> AsyncIterator[Endpoint]:
    async with GatewayClient.connect(LoadConfig(target=target, concurrency=1)) as client:
        yield Endpoint(name, name, target, client)


def direct_endpoints(calls: dict[str, Client]) -> list[Endpoint]:
    return [Endpoint(name, "direct", f"direct:{name}", client) for name, client in calls.items()]


# ---------------------------------------------------------------------------------------- demo catalog


async def measure_demo(
    bench: Bench, stack: LocalStack, naive_target: str, echo_target: str, inputs: Inputs
) -> tuple[int, int]:
    """Recall, Recommend/Search comparisons (the echo server beside them at concurrency 8), Answer,
    overload, the open-loop ladder (only overload when the profile has no comparisons); returns (news dim,
    passage dim)."""
    settings = MilvusSettings(uri=stack.milvus.uri)
    triton = triton_aio.InferenceServerClient(stack.triton.grpc_url)
    try:
        async with (
            MilvusStore(settings) as store,
            gateway_endpoint(GATEWAY, stack.gateway_address) as ours,
            gateway_endpoint(NAIVE, naive_target) as naive,
            gateway_endpoint(ECHO, echo_target) as echo,
        ):
            deps = Dependencies(triton, store, settings.news_collection, settings.passage_collection)
            with bench.collector.timed("prepare_cases"):
                news = await deps.catalog_vectors(settings.news_collection)
                passages = await deps.catalog_vectors(settings.passage_collection)
                served = RecommendSettings(ranking_weights=stack.config.ranking_weights)  # the stack gateway's
                count = bench.profile.recommend_cases
                recommend = await recommend_cases(deps, inputs.data_dir, news, K, served, count)
                search = await search_cases(deps, inputs.data_dir, inputs.tokenizers, K)
            if not bench.profile.comparisons:
                await measure_overload(bench, ours, CaseRequests(recommend, direct=False), stack.metrics_url)
                return news.vectors.shape[1], passages.vectors.shape[1]
            with bench.collector.timed("recall"):
                await measure_recall(bench.collector, store, settings, news, passages, recommend, search)
            workloads = (
                ("recommend", recommend, direct_endpoints(deps.recommend_calls())),
                ("search", search, direct_endpoints(deps.search_calls())),
            )
            for rpc, cases, direct in workloads:
                for concurrency in CONCURRENCIES:
                    requests = CaseRequests(cases, direct=False)
                    servers = (ours, naive) if concurrency == 1 else (ours, naive, echo)
                    sides = [bench.side(endpoint, requests, rpc, concurrency=concurrency) for endpoint in servers]
                    if concurrency == 1:
                        sides += [bench.side(e, CaseRequests(cases, direct=True), rpc, concurrency=1) for e in direct]
                    await bench.compare(f"{rpc}@c{concurrency}", sides)
            await measure_answer(bench, ours, inputs)
            await measure_overload(bench, ours, CaseRequests(recommend, direct=False), stack.metrics_url)
            for rpc, cases, _direct in workloads:
                await measure_open_loop(bench, rpc, CaseRequests(cases, direct=False), [ours, naive])
    finally:
        await triton.close()
    return news.vectors.shape[1], passages.vectors.shape[1]


async def measure_recall(
    collector: Collector,
    store: MilvusStore,
    settings: MilvusSettings,
    news: CatalogVectors,
    passages: CatalogVectors,
    recommend: Sequence[RecommendCase],
    search: Sequence[SearchCase],
) -> None:
    """recall@10 on the real embeddings: news vs dev users' vectors, passages vs dev queries' vectors."""
    users = np.stack([case.user for case in recommend])
    queries = np.stack([case.vector for case in search])
    collector.recall["news"] = (await ann_recall(store, settings.news_collection, news, users, K)).to_dict()
    collector.recall["passages"] = (
        await ann_recall(store, settings.passage_collection, passages, queries, K)
    ).to_dict()


async def measure_answer(bench: Bench, ours: Endpoint, inputs: Inputs) -> None:
    """Sequential Answer calls on dev queries (one window of `answer_s`): time to first token, tokens/s."""
    questions = DemoRequests(inputs.data_dir, RequestOptions(k=K, max_tokens=ANSWER_TOKENS))
    load = {"concurrency": 1, "duration_s": bench.profile.answer_s, "deadline_ms": ANSWER_DEADLINE_MS}
    side = bench.side(ours, questions, "answer", max_tokens=ANSWER_TOKENS, **load)
    await bench.compare("answer@c1", [side], rounds=1)


async def measure_open_loop(bench: Bench, rpc: Rpc, requests: RequestFactory, endpoints: Sequence[Endpoint]) -> None:
    """Each rate of the profile's ladder, the endpoints alternating, until each saturates."""
    offered = list(endpoints)
    for rate in bench.profile.rates:
        if not offered:
            return
        sides = [bench.side(endpoint, requests, rpc, rate=rate) for endpoint in offered]
        measured = await bench.compare(f"{rpc}@r{rate:g}", sides, rounds=bench.profile.open_loop_rounds)
        offered = [e for e in offered if not saturated(measured[e.name])]


async def measure_overload(bench: Bench, ours: Endpoint, requests: RequestFactory, metrics_url: str) -> None:
    """Recommend's capacity (closed loop, OVERLOAD_CAPACITY_LOAD), then an open loop at OVERLOAD_FACTOR times
    it with an OVERLOAD_DEADLINE_MS deadline, into `collector.overload` (benchmarks/report.py overload_result)
    with the gateway's dependency calls and admission rejections counted over the overloaded window."""
    concurrency = int(OVERLOAD_CAPACITY_LOAD.removeprefix("c"))
    capacity_side = bench.side(
        ours, requests, "recommend", concurrency=concurrency, duration_s=bench.profile.capacity_s
    )
    capacity = await measure_alone(bench, "overload: capacity", capacity_side)
    rate = round(OVERLOAD_FACTOR * capacity["qps"], 1)
    if rate <= 0:
        raise ValueError(f"overload: no Recommend succeeded at {OVERLOAD_CAPACITY_LOAD}: {capacity['errors']}")
    overload_side = bench.side(
        ours, requests, "recommend", rate=rate, deadline_ms=OVERLOAD_DEADLINE_MS, duration_s=bench.profile.overload_s
    )
    before = await asyncio.to_thread(gateway_counters, metrics_url)
    overloaded = await measure_alone(bench, f"overload: {rate:g} req/s", overload_side)
    after = await asyncio.to_thread(gateway_counters, metrics_url)
    counted = {key: round(after.get(key, 0.0) - value) for key, value in before.items()} | {
        key: round(value) for key, value in after.items() if key not in before
    }
    deadline_left = pop_buckets(counted, DEADLINE_LEFT_BUCKET, method="Recommend")
    cores = {
        group: round(seconds / bench.profile.overload_s, 3) for group, seconds in overload_side.cpu.seconds.items()
    }
    bench.collector.overload = overload_result(capacity, overloaded, deadline_left) | {
        "gateway_counters": {sample_label(key): count for key, count in sorted(counted.items())},
        "cpu_cores": cores,  # CPU seconds per second of each process group during the overloaded window
        "scenarios": {"capacity": capacity, "overloaded": overloaded},
    }
    result = bench.collector.overload
    bench.console.log(
        f"overload: capacity {result['capacity_rps']:.0f}/s, offered {rate:g}/s, goodput {result['goodput_rps']:.0f}/s "
        f"({result['goodput_ratio']}), shed p99 {result['shed_p99_ms']} ms, admitted p99 "
        f"{result['admitted_p99_ms']} ms, codes {result['codes']}, queued before admission "
        f"{result['queued_before_admission_ms']} ms"
    )


async def measure_alone(bench: Bench, title: str, side: Side) -> dict:
    """One window of one side, not recorded as a scenario: its scenario dict (with CPU when metered)."""
    with progress_bar(bench.console) as progress:
        task = progress.add_task(title, total=1)
        results = await alternate([side], 1, on_window=lambda _side: progress.advance(task))
    measured = results[side.name].to_dict()
    if side.cpu_meter is not None:
        measured["cpu_ms_per_request"] = side.cpu.ms_per_request()
    return measured


DEADLINE_LEFT_BUCKET = "recstack_admission_deadline_left_seconds_bucket"  # cumulative counts, label `le`
GATEWAY_COUNTERS = ("recstack_dependency_calls_total", "recstack_admission_rejected_total", DEADLINE_LEFT_BUCKET)


SampleKey = tuple[str, tuple[tuple[str, str], ...]]  # a sample's name and its labels, sorted


def gateway_counters(metrics_url: str) -> dict[SampleKey, float]:
    """The gateway's GATEWAY_COUNTERS samples (a histogram's buckets too), from its /metrics."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in GATEWAY_COUNTERS
    }


def pop_buckets(samples: dict[SampleKey, float], bucket: str, **labels: str) -> dict[float, float]:
    """Remove `bucket`'s samples with `labels` from `gateway_counters`'s `samples`: upper bound (`le`) -> count."""
    found = {}
    for key in [key for key in samples if key[0] == bucket]:
        pairs = dict(key[1])
        if all(pairs.get(name) == value for name, value in labels.items()):
            found[float(pairs["le"])] = samples.pop(key)
    return found


def sample_label(key: SampleKey) -> str:
    """`name{label=value,...}`, the form the results JSON records."""
    name, labels = key
    return name + "{" + ",".join(f"{label}={value}" for label, value in labels) + "}"


def saturated(scenario: dict) -> bool:
    return scenario["p99_ms"] > SATURATED_P99_MS or bool(scenario["errors"]) or scenario["dropped"] > 0


# ---------------------------------------------------------------------------------------- synthetic catalogs


def measure_scale(bench: Bench, stack: LocalStack, inputs: Inputs, catalog: SyntheticCatalog) -> None:
    """Load the catalog, serve it from a restarted gateway and a naive server, compare them."""
    label = catalog.label
    with progress_bar(bench.console) as progress:
        task = progress.add_task(f"{label}: loading milvus", total=2 * catalog.count)
        advance = partial(progress.advance, task)
        load = asyncio.run(load_catalog(catalog, stack.milvus.uri, advance, bench.cancelled))
    bench.console.log(f"{label}: catalog ready {load}")
    port = free_port(HOST)
    config = NaiveServerConfig(
        inputs.nrms, inputs.two_tower, inputs.data_dir, synthetic_items=catalog.count, host=HOST, port=port
    )
    naive = naive_server_process(config, stack.config.logs / f"naive-{label}.log")
    warm: dict = {}
    with contextlib.ExitStack() as running:
        collections = [catalog.news_collection, catalog.passage_collection]
        running.callback(release_quietly, bench, stack.milvus.uri, collections)  # measured: free the memory
        running.callback(naive.stop)
        env = {**GATEWAY_ENV, **catalog.gateway_env()}
        with bench.collector.timed(f"{label}_servers"):
            gateway = partial(restart_gateway, stack, env, bench.cancelled)
            start_together(lambda: warm.update(gateway()), naive.start, cancelled=bench.cancelled)
        bench.console.log(f"{label}: gateway cache warm ({warm.get('event')}: {warm.get('vectors')} vectors)")
        with bench.collector.timed(f"{label}_recall"):
            recall = asyncio.run(synthetic_recall(catalog, stack.milvus.uri))
        bench.collector.scale[label] = {"items": catalog.count, "load": load, "cache_warm": warm, "recall": recall}
        asyncio.run(compare_synthetic(bench, catalog, stack.gateway_address, f"{HOST}:{port}"))


def release_quietly(bench: Bench, uri: str, collections: list[str]) -> None:
    """`release`, logging a failure instead of hiding the error that may be unwinding the run."""
    try:
        release(uri, collections)
    except Exception as error:  # pymilvus raises MilvusException or grpc errors
        bench.console.log(f"could not release {collections}: {error}")


async def compare_synthetic(bench: Bench, catalog: SyntheticCatalog, ours_target: str, naive_target: str) -> None:
    ids = synthetic_ids("news", catalog.count), synthetic_ids("passage", catalog.count)
    factory = SyntheticRequests(*ids, RequestOptions(k=K))
    async with gateway_endpoint(GATEWAY, ours_target) as ours, gateway_endpoint(NAIVE, naive_target) as naive:
        for rpc in RPCS:
            for concurrency in CONCURRENCIES:
                sides = [bench.side(endpoint, factory, rpc, concurrency=concurrency) for endpoint in (ours, naive)]
                await bench.compare(f"{catalog.label}/{rpc}@c{concurrency}", sides, catalog.label, catalog.count)


async def synthetic_recall(catalog: SyntheticCatalog, uri: str) -> dict[str, dict]:
    """recall@10 of each synthetic collection, queried with fresh draws of the same mixture."""
    results = {}
    async with MilvusStore(catalog.milvus_settings(uri)) as store:
        for kind, collection, dim in (
            ("news", catalog.news_collection, catalog.news_dim),
            ("passage", catalog.passage_collection, catalog.passage_dim),
        ):
            seed, unit, count = catalog.seed + (kind == "passage"), kind == "passage", catalog.count
            vectors = await asyncio.to_thread(clustered_vectors, 0, count, dim, seed, unit)
            queries = await asyncio.to_thread(
                clustered_vectors, count, count + SYNTHETIC_RECALL_QUERIES, dim, seed, unit
            )
            stored = CatalogVectors(synthetic_ids(kind, count), vectors)
            recall = await ann_recall(store, collection, stored, queries, K)
            results["news" if kind == "news" else "passages"] = recall.to_dict()
    return results


def restart_gateway(stack: LocalStack, env: dict[str, str], cancelled: threading.Event) -> dict:
    """Restart the stack's gateway with `env`; returns its cache warm-up outcome once the warm-up has ended."""
    stack.gateway.stop()
    stack.config = replace(stack.config, gateway_env=env)
    stack.start_gateway()
    return wait_for_cache_warm(stack.metrics_url, cancelled=cancelled)


def wait_for_cache_warm(
    metrics_url: str, timeout_s: float = CACHE_WARM_TIMEOUT_S, cancelled: threading.Event | None = None
) -> dict:
    """The gateway's cache warm-up outcome (`cache_warmup_outcome`), polled from its metrics until known.

    TimeoutError after `timeout_s`; InterruptedError once `cancelled` is set.
    """
    cancelled = cancelled or threading.Event()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        outcome = cache_warmup_outcome(metrics_url)
        if outcome is not None:
            return outcome
        if cancelled.wait(0.5):
            raise InterruptedError(f"stopped waiting for the gateway's cache warm-up ({metrics_url})")
    raise TimeoutError(f"the gateway did not finish its cache warm-up within {timeout_s:.0f} s ({metrics_url})")


def cache_warmup_outcome(metrics_url: str) -> dict | None:
    """{"event": "cache_warm" | "cache_warmup_failed", "failed", "vectors", "seconds"} from the gateway's
    `recstack_item_cache_warm*` gauges; None while the warm-up runs or the metrics are not served yet."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    values = {sample.name: sample.value for family in text_string_to_metric_families(text) for sample in family.samples}
    failed = values.get(CACHE_WARMUP_FAILED_METRIC) == 1
    if not failed and values.get(CACHE_WARM_METRIC) != 1:
        return None
    return {
        "event": "cache_warmup_failed" if failed else "cache_warm",
        "failed": failed,
        "vectors": int(values[CACHE_WARMUP_VECTORS_METRIC]),
        "seconds": round(values[CACHE_WARMUP_SECONDS_METRIC], 2),
    }


# ---------------------------------------------------------------------------------------- the run


def start_together(*starts: Callable[[], object], cancelled: threading.Event | None = None) -> None:
    """Run blocking start functions in parallel threads and raise the first failure once all have ended.

    Interrupted (Ctrl-C), it sets `cancelled`, so that starts waiting on it give up, and still waits for
    the starts to end, so the caller can stop everything started.
    """
    pool = ThreadPoolExecutor(len(starts))
    try:
        futures = [pool.submit(start) for start in starts]
        pending = set(futures)
        while pending:  # timed waits: an untimed one may never see a Ctrl-C delivered to another thread
            _, pending = wait(pending, timeout=0.5)
    except BaseException:
        if cancelled is not None:
            cancelled.set()
        raise
    finally:
        pool.shutdown(wait=True)
    for future in futures:
        if future.exception() is not None:
            raise future.exception()


def demo_cpu_meter(stack: LocalStack, naive: ManagedProcess, echo: ManagedProcess) -> CpuMeter:
    """Every process the demo measurements drive, each with what it started (Triton's python stubs), and
    the load generator (this process) alone."""
    return CpuMeter(
        [
            ProcessGroup(GATEWAY, stack.gateway.pid),
            ProcessGroup("triton", stack.triton.pid),
            ProcessGroup("milvus", stack.milvus.pid),
            ProcessGroup(NAIVE, naive.pid),
            ProcessGroup(ECHO, echo.pid),
            ProcessGroup(LOADGEN, os.getpid(), tree=False),
        ]
    )


def run_suite(profile: Profile, inputs: Inputs, state_dir: Path, console: Console) -> Collector:
    """Start every process, measure, stop every process (also on failure or Ctrl-C)."""
    stack = LocalStack(
        StackConfig(
            triton_repo=inputs.triton_repo,
            tokenizer_dir=inputs.tokenizers,
            state_dir=state_dir / "stack",
            gateway_port=0,
            metrics_port=0,
            gateway_env=GATEWAY_ENV,
            milvus_auto_compaction=False,  # settle() compacts once; nothing merges beside the measurements
        )
    )
    naive_port = free_port(HOST)
    naive = naive_server_process(
        NaiveServerConfig(inputs.nrms, inputs.two_tower, inputs.data_dir, host=HOST, port=naive_port),
        stack.config.logs / "naive-demo.log",
    )
    echo_port = free_port(HOST)
    echo = echo_server_process(HOST, echo_port, stack.config.logs / "echo.log")
    bench = Bench(profile, console)
    collector = bench.collector

    def stack_with_catalog() -> None:
        with collector.timed("stack_start"):
            stack.start()
        with collector.timed("index_catalog"):
            index_catalog(stack.gateway_address, inputs.data_dir)
        with collector.timed("settle_catalog"):
            served = MilvusSettings()
            settle(stack.milvus.uri, [served.news_collection, served.passage_collection], cancelled=bench.cancelled)

    with contextlib.ExitStack() as running:
        running.callback(stack.stop)
        running.callback(naive.stop)
        running.callback(echo.stop)
        console.log("starting Milvus, Triton, the LLM server and the gateway; the naive and echo servers meanwhile")
        with collector.timed("processes"):
            start_together(stack_with_catalog, naive.start, echo.start, cancelled=bench.cancelled)
        console.log(f"up in {collector.setup_s['processes']} s: {collector.setup_s}")
        demo = replace(bench, cpu_meter=demo_cpu_meter(stack, naive, echo))
        targets = f"{HOST}:{naive_port}", f"{HOST}:{echo_port}"
        news_dim, passage_dim = asyncio.run(measure_demo(demo, stack, *targets, inputs))
        naive.stop()
        echo.stop()
        for count in profile.sizes:
            measure_scale(bench, stack, inputs, SyntheticCatalog(count, news_dim, passage_dim))
    return collector


def build_suite(profile: Profile, collector: Collector, meta: dict, budgets_path: Path) -> dict:
    """The suite file: scenarios, ratios, overheads, recall, scale, then targets and budget checks."""
    scenarios = collector.scenarios
    suite = {
        "profile": profile.name,
        "meta": meta | {"setup_s": collector.setup_s},
        "scenarios": scenarios,
        "ratios": derive_ratios(scenarios, collector.overload),
        "overhead_ms": overhead_ms(scenarios),
        "cpu_ms_per_request": cpu_ms_per_request(scenarios),
        "max_rate": {
            rpc: {side: max_rate_within(scenarios, rpc, side) for side in (GATEWAY, NAIVE)}
            | {"p99_bound_ms": P99_BOUND_MS}
            for rpc in RPCS
        },
        "recall": collector.recall,
        "scale": collector.scale,
    }
    if collector.overload:
        suite["overload"] = collector.overload
    suite["targets"] = evaluate_targets(suite)
    budgets = load_budgets(budgets_path) if profile.comparisons else []
    suite["budgets"] = [check.to_dict() for check in check_budgets(suite["ratios"], budgets)]
    return suite


def run_meta(profile: Profile, inputs: Inputs, started: dt.datetime) -> dict:
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    return {
        "started": started.isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}",
        "git": revision.stdout.strip() or None,
        "inputs": inputs.to_dict(),
        "rounds": profile.rounds,
        "window_s": profile.window_s,
        "warmup_s": profile.warmup_s,
        "k": K,
    }


def write_results(suite: dict, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps(suite, indent=2) + "\n")
    markdown_path.write_text(render.render_markdown(suite))
    written = [json_path, markdown_path]
    written += filter(None, [plot_open_loop(suite, out_dir / f"{name}-open-loop.png")])
    written += filter(None, [plot_scale(suite, out_dir / f"{name}-scale.png")])
    return written


def parse_sizes(text: str) -> tuple[int, ...]:
    """ "10k,100k,1m" -> (10000, 100000, 1000000); "" -> ()."""
    sizes = []
    for part in filter(None, (p.strip().lower() for p in text.split(","))):
        scale = {"k": 1_000, "m": 1_000_000}.get(part[-1], 1)
        number = part[:-1] if scale > 1 else part
        if not number.isdigit() or int(number) == 0:
            raise argparse.ArgumentTypeError(f"catalog size {part!r}: expected e.g. 10k, 100000 or 1m")
        sizes.append(int(number) * scale)
    return tuple(sizes)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.suite", description=__doc__.split("\n")[0])
    parser.add_argument(
        "profile", choices=sorted(PROFILES), help="ci: short, budgets; full: everything, plots; overload: only that"
    )
    parser.add_argument("--name", help="results file name (default: the profile's name)")
    parser.add_argument("--sizes", type=parse_sizes, help="synthetic catalog sizes, e.g. 10k,100k,1m ('' for none)")
    parser.add_argument("--budgets", type=Path, default=BUDGETS, help="budgets file (%(default)s)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (%(default)s)")
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    if args.sizes is not None:
        profile = replace(profile, sizes=args.sizes)
    console = Console()
    started, clock = dt.datetime.now(dt.UTC), time.perf_counter()
    state_dir = STATE / profile.name
    try:
        load_budgets(args.budgets)  # a broken budgets file fails before minutes of measuring
        inputs = resolve_inputs(profile.build_inputs, console)
        console.log(f"profile {profile.name}: models from {inputs.origin} ({inputs.nrms.parent})")
        if profile.fresh_state:
            shutil.rmtree(state_dir, ignore_errors=True)
        collector = run_suite(profile, inputs, state_dir, console)
    except (
        FileNotFoundError,
        ValueError,
        StartupError,
        TimeoutError,
        ConnectionError,
        subprocess.CalledProcessError,
    ) as error:
        console.print(f"[red]benchmark suite failed:[/red] {error}")
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted:[/yellow] every process the suite started is stopped; no results written")
        return 130
    meta = run_meta(profile, inputs, started) | {"wall_s": round(time.perf_counter() - clock, 1)}
    suite = build_suite(profile, collector, meta, args.budgets)
    written = write_results(suite, args.out, args.name or profile.name)
    console.print(Markdown(render.render_summary(suite)))
    console.log("wrote " + ", ".join(map(str, written)))
    failed = [check for check in suite["budgets"] if not check["ok"]]
    for check in failed:
        console.print(f"[red]budget failed:[/red] {check['message']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
