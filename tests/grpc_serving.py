"""Serve a `recstack.v1.Gateway` servicer in this process for one call: the benchmarks' test helper."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from benchmarks.serving import start_server
from recstack.v1 import gateway_pb2_grpc as pb_grpc

T = TypeVar("T")


def over_grpc(servicer: pb_grpc.GatewayServicer, call: Callable[[pb_grpc.GatewayStub], Awaitable[T]]) -> T:
    """Serve `servicer` on a free loopback port, run `call(stub)`, stop."""

    async def scenario() -> T:
        server, port = await start_server(servicer)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await call(pb_grpc.GatewayStub(channel))
        finally:
            await server.stop(0)

    return asyncio.run(scenario())
