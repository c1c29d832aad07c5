"""gRPC serving helpers for tests: serve a `recstack.v1.Gateway` servicer for one call, count listening sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
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


def listening_sockets(port: int) -> int:
    """How many TCP sockets listen on `port` (Linux: /proc/net/tcp and tcp6, state 0A)."""
    count = 0
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            count += state == "0A" and int(local.rsplit(":", 1)[1], 16) == port
    return count
