"""The suite's measurements against the real tiny stack: gateway vs direct dependency calls, recall, the
CPU per request of every process (the echo server as the floor), and the overload scenario's wiring."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc.aio as triton_aio
from rich.console import Console

from benchmarks.components import DIRECT_CALLS, CaseRequests, Dependencies, recommend_cases, search_cases
from benchmarks.cpu import CpuMeter, ProcessGroup
from benchmarks.echo_server import echo_server_process
from benchmarks.recall import ann_recall
from benchmarks.report import ECHO, GATEWAY, NAIVE, RPCS, cpu_ms_per_request, overhead_ms, scenario_name
from benchmarks.suite import LOADGEN, Bench, Profile, direct_endpoints, gateway_endpoint, measure_overload
from devstack.process import free_port
from server.config import MilvusSettings, RecommendSettings
from server.milvus import MilvusStore

pytestmark = pytest.mark.stack

TINY = Profile(
    "test", rounds=2, window_s=0.3, warmup_s=0.1, answer_s=1.0, recommend_cases=20, capacity_s=0.5, overload_s=1.0
)


async def measure(stack, data_dir, echo_target: str, meter: CpuMeter) -> tuple[Bench, dict]:
    bench = Bench(TINY, Console(quiet=True), cpu_meter=meter)
    settings = MilvusSettings(uri=stack.milvus.uri)
    triton = triton_aio.InferenceServerClient(stack.triton.grpc_url)
    try:
        async with (
            MilvusStore(settings) as store,
            gateway_endpoint(GATEWAY, stack.gateway_address) as ours,
            gateway_endpoint(ECHO, echo_target) as echo,
        ):
            deps = Dependencies(triton, store, settings.news_collection, settings.passage_collection)
            news = await deps.catalog_vectors(settings.news_collection)
            served = RecommendSettings(ranking_weights=stack.config.ranking_weights)
            recommend = await recommend_cases(deps, data_dir, news, 10, served, TINY.recommend_cases)
            search = await search_cases(deps, data_dir, stack.config.tokenizer_dir, 10)
            for rpc, cases, calls in (
                ("recommend", recommend, deps.recommend_calls()),
                ("search", search, deps.search_calls()),
            ):
                sides = [bench.side(ours, CaseRequests(cases, direct=False), rpc, concurrency=1)]
                sides += [
                    bench.side(e, CaseRequests(cases, direct=True), rpc, concurrency=1) for e in direct_endpoints(calls)
                ]
                await bench.compare(f"{rpc}@c1", sides)
                servers = (ours, echo)
                await bench.compare(
                    f"{rpc}@c8", [bench.side(e, CaseRequests(cases, direct=False), rpc, concurrency=8) for e in servers]
                )
            await measure_overload(bench, ours, CaseRequests(recommend, direct=False), stack.metrics_url)
            users = [case.user for case in recommend]
            recall = await ann_recall(store, settings.news_collection, news, np.stack(users))
    finally:
        await triton.close()
    return bench, recall.to_dict()


def test_gateway_and_its_direct_dependency_calls_are_measured_side_by_side(stack, tiny_data, tmp_path: Path) -> None:
    port = free_port()
    with echo_server_process("127.0.0.1", port, tmp_path / "echo.log") as echo:
        groups = [ProcessGroup(GATEWAY, stack.gateway.pid), ProcessGroup("triton", stack.triton.pid)]
        groups += [ProcessGroup("milvus", stack.milvus.pid), ProcessGroup(ECHO, echo.pid)]
        meter = CpuMeter([*groups, ProcessGroup(LOADGEN, os.getpid(), tree=False)])
        bench, recall = asyncio.run(measure(stack, tiny_data.root, f"127.0.0.1:{port}", meter))
    scenarios = bench.collector.scenarios
    for rpc, calls in DIRECT_CALLS.items():
        for side in (GATEWAY, *calls):
            measured = scenarios[scenario_name(rpc, "c1", side)]
            assert measured["ok"] > 0 and not measured["errors"], measured.get("error_examples")
            assert measured["windows"] == TINY.rounds
        gateway_stages = scenarios[scenario_name(rpc, "c1")]["stages"]
        assert set(calls) <= set(gateway_stages)  # the direct calls are named as the gateway's own stages
    assert set(overhead_ms(scenarios)) == {"recommend@c1", "search@c1"}
    cpu = cpu_ms_per_request(scenarios)
    for rpc in RPCS:
        busy = {group: ms for group, ms in cpu[f"{rpc}@c8"].items() if group != NAIVE}  # no naive server here
        assert all(ms is not None and ms > 0 for ms in busy.values()), cpu
        assert busy[ECHO] < busy[GATEWAY]  # the floor: gRPC alone costs less than the gateway's work
        assert scenarios[scenario_name(rpc, "c8", ECHO)]["cpu_ms_per_request"][LOADGEN] > 0
    assert 0 < recall["recall"] <= 1 and recall["queries"] > 0
    overload = bench.collector.overload  # the wiring; a tiny stack on a shared machine says nothing about goodput
    assert overload["capacity_rps"] > 0 and overload["offered_rps"] == pytest.approx(2 * overload["capacity_rps"], 0.01)
    assert (
        overload["codes"]["OK"] > 0
        and sum(overload["codes"].values()) == overload["scenarios"]["overloaded"]["requests"]
    )
    assert overload["scenarios"]["overloaded"]["deadline_ms"] == 200.0
    admitted = overload["gateway_counters"]["recstack_dependency_calls_total{dependency=triton,outcome=ok}"]
    assert admitted >= overload["codes"]["OK"]  # every OK Recommend called Triton, counted over the window
    assert overload["cpu_cores"][GATEWAY] > 0
