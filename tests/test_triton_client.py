"""`server.triton.TritonEncoders` against an in-process KServe v2 gRPC service (no Triton needed)."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest
from grpc_serving import FakeTriton
from tritonclient.grpc import service_pb2_grpc

import contract
from server.config import TritonSettings
from server.triton import TritonEncoders

pytestmark = pytest.mark.anyio

DIM = 4


async def test_readiness_metadata_and_inference_share_one_connection() -> None:
    """A health check that says SERVING has reached Triton over the connection requests use. With a second client
    for readiness, health said SERVING after a Triton restart while requests, whose channel was still waiting out its
    reconnect backoff, failed UNAVAILABLE."""
    triton = FakeTriton(DIM)
    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(triton, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    tokenizers: Any = dict.fromkeys(contract.TEXT_FIELDS)  # only the user encoder is called
    encoders = TritonEncoders(TritonSettings(url=f"127.0.0.1:{port}"), tokenizers)
    try:
        assert await encoders.ready()
        assert await encoders.embedding_dims() == dict.fromkeys(encoders.model_names, DIM)
        users = await encoders.encode_users(np.zeros((2, 3, DIM), np.float32), np.ones((2, 3), np.int64))
        assert users.shape == (2, DIM)
    finally:
        await encoders.close()
        await server.stop(grace=None)
    models = len(encoders.model_names)
    assert len(triton.peers) == 1 + models + models + 1  # ServerReady, ModelReady and ModelMetadata each, ModelInfer
    assert len(set(triton.peers)) == 1
