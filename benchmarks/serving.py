"""Serving helpers shared by the suite's own `recstack.v1.Gateway` servers (the naive baseline, the echo floor)."""

from __future__ import annotations

import asyncio
import signal

import grpc

from recstack.v1 import gateway_pb2_grpc as pb_grpc


async def start_server(
    servicer: pb_grpc.GatewayServicer, host: str = "127.0.0.1", port: int = 0
) -> tuple[grpc.aio.Server, int]:
    """Serve `servicer` on host:port (0 = any free port); returns the started server and its port."""
    server = grpc.aio.server()
    pb_grpc.add_GatewayServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    await server.start()
    return server, bound


async def serve_until_signalled(server: grpc.aio.Server, ready_line: str) -> None:
    """Print `ready_line` (flushed: launchers and logs see it at once), serve until SIGINT/SIGTERM, stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(ready_line, flush=True)
    await stop.wait()
    await server.stop(grace=1.0)
