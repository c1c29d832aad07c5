"""The echo server (the suite's floor): canned answers of the requested size, k checked, load runs cleanly."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_serving import over_grpc

from benchmarks.echo_server import PASSAGE_TEXT, TITLE, EchoGateway, echo_server_process
from benchmarks.loadgen import LoadConfig, run_load
from devstack.process import free_port
from recstack.v1 import gateway_pb2 as pb

ECHO = EchoGateway(max_k=20)


def test_recommend_answers_k_news_items_shaped_like_the_gateways() -> None:
    response = over_grpc(ECHO, lambda stub: stub.Recommend(pb.RecommendRequest(user_id="u", k=7), timeout=10))
    assert len(response.items) == 7 and len({item.id for item in response.items}) == 7
    scores = [item.score for item in response.items]
    assert scores == sorted(scores, reverse=True)
    assert all(item.title == TITLE and item.category and item.published.seconds > 0 for item in response.items)
    assert [timing.stage for timing in response.timings] == ["echo.canned"]


def test_search_answers_k_passages_with_their_text() -> None:
    response = over_grpc(ECHO, lambda stub: stub.Search(pb.SearchRequest(query="anything", k=3), timeout=10))
    assert len(response.passages) == 3
    assert all(p.text == PASSAGE_TEXT and p.doc_id and p.title for p in response.passages)


@pytest.mark.parametrize("k", [0, 21])
def test_a_k_out_of_range_is_invalid_argument_naming_k(k: int) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        over_grpc(ECHO, lambda stub: stub.Search(pb.SearchRequest(query="q", k=k), timeout=10))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith("k:")


def test_upserts_are_not_served() -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        over_grpc(ECHO, lambda stub: stub.UpsertItems(pb.UpsertItemsRequest(), timeout=10))
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_its_process_serves_the_load_generator_at_concurrency_8(tmp_path: Path) -> None:
    port = free_port()
    with echo_server_process("127.0.0.1", port, tmp_path / "echo.log") as process:
        config = LoadConfig(
            target=f"127.0.0.1:{port}",
            mix={"recommend": 1.0, "search": 1.0},
            concurrency=8,
            duration_s=0.5,
            warmup_s=0.1,
            synthetic_items=100,
        )
        result = asyncio.run(run_load(config)).to_dict()
    assert not process.running()
    assert result["ok"] > 0 and result["errors"] == {}
    assert "ready 127.0.0.1:" in (tmp_path / "echo.log").read_text()
