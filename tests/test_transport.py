"""`server.transport.bind` over several servers: the listeners of one gateway process share one port
(`gateway.listeners`), the kernel spreads connections over them, and the others keep serving when one stops."""

from __future__ import annotations

from typing import Any

import grpc
from grpc_serving import listening_sockets

from contract.channel import OWN_CONNECTION_OPTION
from recstack.v1 import gateway_pb2 as pb
from recstack.v1 import gateway_pb2_grpc as pb_grpc
from server.transport import bind


class Named(pb_grpc.GatewayServicer):
    """Answers Recommend with its own name, so a test can tell which listener served a call."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def Recommend(self, request: pb.RecommendRequest, context: Any) -> pb.RecommendResponse:
        return pb.RecommendResponse(model_version=self.name)


async def answered_by(port: int, connections: int) -> set[str]:
    """Which listeners answered one Recommend on each of `connections` new connections."""
    names = set()
    for _ in range(connections):
        options = [(OWN_CONNECTION_OPTION, 1)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            response = await pb_grpc.GatewayStub(channel).Recommend(pb.RecommendRequest(), timeout=5)
        names.add(response.model_version)
    return names


async def test_listeners_share_one_port_and_each_takes_connections() -> None:
    servers = []
    for name in ("a", "b", "c"):
        server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
        pb_grpc.add_GatewayServicer_to_server(Named(name), server)
        servers.append(server)
    port = bind(servers, "127.0.0.1:0", None)
    for server in servers:
        await server.start()
    try:
        assert listening_sockets(port) == 3
        # 30 connections over 3 listeners: all three are reached unless the kernel's spread fails (p ~ 2e-5)
        assert await answered_by(port, 30) == {"a", "b", "c"}
        await servers[0].stop(grace=None)
        assert listening_sockets(port) == 2
        assert await answered_by(port, 10) <= {"b", "c"}  # the others still take every new connection
    finally:
        for server in servers:
            await server.stop(grace=None)
