"""The floor: a bare grpc.aio `recstack.v1.Gateway` answering Recommend and Search with canned responses.

The responses are shaped like the gateway's: `k` news items (id, title, category, score, publication
time) or `k` passages (id, text, title, category, score, document id), one stage timing, built with the
gateway's own converters (`server.service`) once per `k` and reused. No model, no index, no validation
beyond `k`, no metrics: what a request costs here is gRPC, protobuf and the event loop, the least any
server of this proto can cost. It runs on uvloop, as the gateway does. The suite measures it beside the
gateway and the naive server at concurrency 8 (CPU milliseconds per request, benchmarks/cpu.py).
UpsertItems, DeleteItems and Answer answer UNIMPLEMENTED.

    python -m benchmarks.echo_server --port 50053
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
import uvloop

from benchmarks.serving import serve_until_signalled, start_server
from devstack.process import ManagedProcess, port_open
from recstack.v1 import gateway_pb2 as pb
from recstack.v1 import gateway_pb2_grpc as pb_grpc
from server.config import GatewaySettings
from server.pipeline.common import Item
from server.service import add_news_results, passage_results

DEFAULT_PORT = 50053
STAGE = "echo.canned"
MAX_K = GatewaySettings().max_k  # the gateway's bound on k
PUBLISHED = 1_573_000_000  # a MIND-era publication time, unix seconds
# Typical lengths of the demo data: a MIND news title, an MS MARCO passage.
TITLE = "Canned headline of about the length of a typical MIND news title"
PASSAGE_TEXT = ("A canned passage standing in for an MS MARCO passage of typical length. " * 5).strip()


@functools.cache
def recommend_response(k: int) -> pb.RecommendResponse:
    """k news items, best first, with a personal ranking's fields set."""
    items = [
        Item(item_id=f"N{10_000 + rank}", score=10.0 - rank / k, title=TITLE, category="news", published=PUBLISHED)
        for rank in range(k)
    ]
    response = pb.RecommendResponse(history_used=k, timings=[pb.StageTiming(stage=STAGE)])
    add_news_results(response.items, items)
    return response


@functools.cache
def search_response(k: int) -> pb.SearchResponse:
    """k passages, most similar first."""
    items = [
        Item(
            item_id=f"P{rank}_0",
            score=0.9 - rank / (2 * k),
            title=TITLE,
            category="news",
            text=PASSAGE_TEXT,
            doc_id=f"D{rank}",
        )
        for rank in range(k)
    ]
    return pb.SearchResponse(passages=passage_results(items), timings=[pb.StageTiming(stage=STAGE)])


class EchoGateway(pb_grpc.GatewayServicer):
    """Recommend and Search with the canned response for the request's `k` (1..`max_k`)."""

    def __init__(self, max_k: int = MAX_K) -> None:
        self.max_k = max_k

    async def Recommend(self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext) -> pb.RecommendResponse:
        return recommend_response(await self._k(request.k, context))

    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        return search_response(await self._k(request.k, context))

    async def _k(self, k: int, context: grpc.aio.ServicerContext) -> int:
        if not 1 <= k <= self.max_k:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"k: must be within [1, {self.max_k}], got {k}")
        return k


def echo_server_process(host: str, port: int, log_path: Path, startup_timeout_s: float = 60.0) -> ManagedProcess:
    """The server as a child process (not started: use `with` or `.start()`); ready when its port accepts."""
    return ManagedProcess(
        name="echo-server",
        argv=[sys.executable, "-m", "benchmarks.echo_server", "--host", host, "--port", str(port)],
        log_path=log_path,
        ready=lambda: port_open(host, port),
        startup_timeout_s=startup_timeout_s,
        stop_grace_s=5.0,
    )


async def serve(host: str, port: int) -> None:
    """Listen, print `ready HOST:PORT`, serve until SIGINT/SIGTERM."""
    server, bound = await start_server(EchoGateway(), host, port)
    await serve_until_signalled(server, f"ready {host}:{bound}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.echo_server", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on (%(default)s)")
    args = parser.parse_args(argv)
    uvloop.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
