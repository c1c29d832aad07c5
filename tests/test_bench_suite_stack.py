"""The suite's measurements against the real tiny stack: gateway vs direct dependency calls, and recall."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import tritonclient.grpc.aio as triton_aio
from rich.console import Console

from benchmarks.components import DIRECT_CALLS, CaseRequests, Dependencies, recommend_cases, search_cases
from benchmarks.recall import ann_recall
from benchmarks.report import GATEWAY, overhead_ms, scenario_name
from benchmarks.suite import Bench, Profile, direct_endpoints, gateway_endpoint
from server.config import MilvusSettings, RecommendSettings
from server.milvus import MilvusStore

pytestmark = pytest.mark.stack

TINY = Profile("test", rounds=2, window_s=0.3, warmup_s=0.1, answer_s=1.0, recommend_cases=20)


async def measure(stack, data_dir) -> tuple[Bench, dict]:
    bench = Bench(TINY, Console(quiet=True))
    settings = MilvusSettings(uri=stack.milvus.uri)
    triton = triton_aio.InferenceServerClient(stack.triton.grpc_url)
    try:
        async with MilvusStore(settings) as store, gateway_endpoint(GATEWAY, stack.gateway_address) as ours:
            deps = Dependencies(triton, store, settings.news_collection, settings.passage_collection)
            news = await deps.catalog_vectors(settings.news_collection)
            history = RecommendSettings().max_history
            recommend = await recommend_cases(deps, data_dir, news, 10, history, TINY.recommend_cases)
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
            users = [case.user for case in recommend]
            recall = await ann_recall(store, settings.news_collection, news, np.stack(users))
    finally:
        await triton.close()
    return bench, recall.to_dict()


def test_gateway_and_its_direct_dependency_calls_are_measured_side_by_side(stack, tiny_data) -> None:
    bench, recall = asyncio.run(measure(stack, tiny_data.root))
    scenarios = bench.collector.scenarios
    for rpc, calls in DIRECT_CALLS.items():
        for side in (GATEWAY, *calls):
            measured = scenarios[scenario_name(rpc, "c1", side)]
            assert measured["ok"] > 0 and not measured["errors"], measured.get("error_examples")
            assert measured["windows"] == TINY.rounds
        gateway_stages = scenarios[scenario_name(rpc, "c1")]["stages"]
        assert set(calls) <= set(gateway_stages)  # the direct calls are named as the gateway's own stages
    assert set(overhead_ms(scenarios)) == {"recommend@c1", "search@c1"}
    assert 0 < recall["recall"] <= 1 and recall["queries"] > 0
