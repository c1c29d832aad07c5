"""A Milvus whose port refuses connections is failed fast (UNAVAILABLE at once), not waited on until the deadline."""

from __future__ import annotations

import asyncio
import socket

import grpc
import numpy as np
import pytest
from waiting import await_until

from devstack.process import free_port
from server.config import MilvusSettings
from server.errors import DependencyTimeout, DependencyUnavailable
from server.milvus import MilvusStore
from server.milvus.store import REFUSED_RECHECK_S, connection_refused

pytestmark = pytest.mark.anyio


async def test_connection_refused_tells_a_closed_port_from_a_listening_one() -> None:
    port = free_port()
    assert await connection_refused(f"http://127.0.0.1:{port}", 1.0)
    with socket.create_server(("127.0.0.1", port)):
        assert not await connection_refused(f"http://127.0.0.1:{port}", 1.0)
    assert not await connection_refused("/tmp/some-milvus-lite.db", 1.0)


async def test_after_a_refused_probe_calls_fail_at_once_and_a_listening_port_lifts_it() -> None:
    port = free_port()
    store = MilvusStore(MilvusSettings(uri=f"http://127.0.0.1:{port}", timeout_s=30.0, health_timeout_s=0.5))
    try:
        assert not await store.ready()
        with pytest.raises(DependencyUnavailable, match="refuses connections"):
            await store.get("news", ["N1"], ["title"])  # without the fast path: pymilvus retries for 30 s
        with pytest.raises(DependencyUnavailable, match="refuses connections"):
            await store.search("news", np.ones((1, 4), np.float32), 3)
        with socket.create_server(("127.0.0.1", port)):  # something listens again (Milvus restarting)
            await asyncio.sleep(REFUSED_RECHECK_S)  # no probe needed: calls re-check the port themselves
            with pytest.raises((DependencyTimeout, DependencyUnavailable)) as error:
                await store.get("news", ["N1"], ["title"], timeout=0.5)
            assert "refuses connections" not in str(error.value)
    finally:
        await asyncio.wait_for(store.close(), 10)


async def test_ready_waits_for_the_search_channel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Searches run on their own gRPC channel: health says SERVING only once that channel is connected too (after
    a Milvus restart it may still be waiting out its reconnect backoff while pymilvus's channel is back)."""
    port = free_port()
    store = MilvusStore(MilvusSettings(uri=f"http://127.0.0.1:{port}", health_timeout_s=0.5))

    async def collections(**kwargs: object) -> list[str]:
        return []

    monkeypatch.setattr(store._client, "list_collections", collections)  # pymilvus's side of the probe passes
    store._open_raw_search()  # as the first search does
    server = grpc.aio.server()
    try:
        assert not await store.ready()  # nothing listens for the search channel
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await await_until(store.ready, 5.0, "ready once the search channel can connect")
    finally:
        await server.stop(grace=None)
        await asyncio.wait_for(store.close(), 10)
