"""gRPC serving helpers for tests: serve a `recstack.v1.Gateway` servicer for one call, fake Triton's KServe v2
service in-process, count listening sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

import contract
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


class FakeTriton(service_pb2_grpc.GRPCInferenceServiceServicer):
    """An in-process KServe v2 service: always ready, every model with a `dim`-wide embedding, inference answered
    with zeros; records each call's peer."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.peers: list[str] = []

    async def ServerReady(self, request: Any, context: Any) -> service_pb2.ServerReadyResponse:
        self.peers.append(context.peer())
        return service_pb2.ServerReadyResponse(ready=True)

    async def ModelReady(self, request: Any, context: Any) -> service_pb2.ModelReadyResponse:
        self.peers.append(context.peer())
        return service_pb2.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request: Any, context: Any) -> service_pb2.ModelMetadataResponse:
        self.peers.append(context.peer())
        output = service_pb2.ModelMetadataResponse.TensorMetadata(
            name=contract.EMBEDDING, datatype="FP32", shape=[-1, self.dim]
        )
        return service_pb2.ModelMetadataResponse(name=request.name, outputs=[output])

    async def ModelInfer(self, request: Any, context: Any) -> service_pb2.ModelInferResponse:
        self.peers.append(context.peer())
        embedding = np.zeros((request.inputs[0].shape[0], self.dim), np.float32)
        output = service_pb2.ModelInferResponse.InferOutputTensor(
            name=contract.EMBEDDING, datatype="FP32", shape=embedding.shape
        )
        return service_pb2.ModelInferResponse(outputs=[output], raw_output_contents=[embedding.tobytes()])
