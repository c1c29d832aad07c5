"""Triton façade: texts and click histories in, embeddings out, over KServe v2 gRPC.

The gateway tokenizes (with the same tokenizer files training used) and sends token ids, rather
than running a tokenizer model inside Triton: tokenizing here costs tens of microseconds, while an
ensemble step in front of each encoder would add a python-backend hop (~0.3-0.5 ms measured per
call on this machine) to every Search and to every title encoded by Recommend and UpsertItems.

Every call carries a deadline; Triton's gRPC errors become `server.errors` in one place (`_mapped`).
The underlying gRPC channel reconnects by itself, so calls succeed again once Triton is back.

Inference goes through the KServe v2 service stub directly (`ModelInferRequest` with `raw_input_contents`
from the NumPy buffers, the embedding read with `np.frombuffer` from `raw_output_contents`): tritonclient's
`infer` builds `InferInput`/`InferResult` objects and copies every tensor once more on each call. Metadata
and readiness use the same stub and channel: a health check that says SERVING has reached Triton over the very
connection requests use (a second client's channel could be connected while this one still waits out its
reconnect backoff, and requests right after a Triton restart failed UNAVAILABLE while health said SERVING).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
from numpy.typing import NDArray
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.grpc.aio import MAX_GRPC_MESSAGE_SIZE
from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype

import contract
from contract import layout
from contract.tokenizer import TextTokenizer
from server.circuit import Circuit
from server.config import TritonSettings
from server.errors import DependencyTimeout, DependencyUnavailable

RECONNECT_BACKOFF_MS = 1000  # the longest wait between reconnection attempts to a Triton that is down


class TritonEncoders:
    """The four served encoders behind one client."""

    def __init__(self, settings: TritonSettings, tokenizers: dict[str, TextTokenizer]) -> None:
        missing = set(contract.TEXT_FIELDS) - set(tokenizers)
        if missing:
            raise ValueError(f"no tokenizer for text fields {sorted(missing)}")
        self.settings = settings
        self.tokenizers = tokenizers
        credentials = _credentials(settings)
        self._channel = _channel(settings.url, credentials)
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self.circuit = Circuit("triton", settings.stall_after_s)
        self._models = {
            contract.TITLE: settings.news_encoder,
            contract.QUERY: settings.query_encoder,
            contract.PASSAGE: settings.doc_encoder,
        }

    @classmethod
    def from_settings(cls, settings: TritonSettings) -> TritonEncoders:
        tokenizers = {
            f: TextTokenizer.from_file(layout.tokenizer_file(settings.tokenizer_dir, f)) for f in contract.TEXT_FIELDS
        }
        return cls(settings, tokenizers)

    @property
    def model_names(self) -> list[str]:
        return [*self._models.values(), self.settings.user_encoder]

    async def encode_texts(
        self, text_field: str, texts: list[str], timeout_s: float | None = None, model_version: str = ""
    ) -> NDArray[np.float32]:
        """Embeddings [len(texts), D] of titles ("title"), queries ("query") or passages ("passage"), by
        the encoder's Triton `model_version` ("": the newest loaded)."""
        ids, mask = self.tokenizers[text_field].encode(texts)
        inputs = {contract.INPUT_IDS: ids, contract.ATTENTION_MASK: mask}
        watched = text_field == contract.QUERY  # titles and passages are mostly ingest batches: seconds are fine
        return await self._infer(self._models[text_field], inputs, timeout_s, model_version, watched)

    async def encode_users(
        self,
        history: NDArray[np.float32],
        mask: NDArray[np.int64],
        timeout_s: float | None = None,
        model_version: str = "",
    ) -> NDArray[np.float32]:
        """User vectors [B, D] from clicked-news vectors [B, H, D] and their mask [B, H] (H >= 1)."""
        inputs: dict[str, NDArray[Any]] = {
            contract.HISTORY: history.astype(np.float32, copy=False),
            contract.HISTORY_MASK: mask,
        }
        return await self._infer(self.settings.user_encoder, inputs, timeout_s, model_version, watched=True)

    async def embedding_dims(self) -> dict[str, int]:
        """Output size D of every encoder, read from Triton's model metadata."""
        dims = {}
        for model in self.model_names:
            request = service_pb2.ModelMetadataRequest(name=model)
            try:
                metadata = await self._stub.ModelMetadata(request, timeout=self.settings.timeout_s)
            except grpc.aio.AioRpcError as error:
                raise _mapped(model, error) from error
            (output,) = (o for o in metadata.outputs if o.name == contract.EMBEDDING)
            dims[model] = int(output.shape[-1])
        return dims

    async def ready(self) -> bool:
        """Server ready and every encoder loaded; never raises (used by health checks)."""
        timeout = self.settings.timeout_s
        try:
            if not (await self._stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=timeout)).ready:
                return False
            for model in self.model_names:
                request = service_pb2.ModelReadyRequest(name=model)
                if not (await self._stub.ModelReady(request, timeout=timeout)).ready:
                    return False
            return True
        except Exception:  # a health probe reports, it does not raise
            return False

    async def close(self) -> None:
        await self._channel.close()

    async def _infer(
        self,
        model: str,
        inputs: dict[str, NDArray[Any]],
        timeout_s: float | None,
        model_version: str = "",
        watched: bool = False,
    ) -> NDArray[np.float32]:
        """One inference; `watched`: a request-path call (user and query encoders), which the circuit watches
        and which fails fast while it is open."""
        request = service_pb2.ModelInferRequest(model_name=model, model_version=model_version)
        for name, array in inputs.items():
            request.inputs.add(name=name, datatype=np_to_triton_dtype(array.dtype), shape=array.shape)
            request.raw_input_contents.append(array.tobytes())
        request.outputs.add(name=contract.EMBEDDING)
        timeout = min(timeout_s, self.settings.timeout_s) if timeout_s else self.settings.timeout_s
        if watched:
            self.circuit.check()
        with self.circuit.watching(watched):
            try:
                response = await self._stub.ModelInfer(request, timeout=timeout)
            except grpc.aio.AioRpcError as error:
                raise _mapped(model, error) from error
        (output,) = response.outputs
        embedding = np.frombuffer(response.raw_output_contents[0], dtype=triton_to_np_dtype(output.datatype))
        return embedding.reshape(tuple(output.shape)).astype(np.float32, copy=False)


def _credentials(settings: TritonSettings) -> grpc.ChannelCredentials | None:
    """TLS credentials from the settings' PEM files (None: plaintext)."""
    if not settings.ssl:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(settings.ssl_root_certificates),
        private_key=_read(settings.ssl_private_key),
        certificate_chain=_read(settings.ssl_certificate_chain),
    )


def _channel(url: str, credentials: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
    options = [("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE)]
    options.append(("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE))
    # gRPC's reconnect backoff grows to 120 s while Triton is down, so requests and the health probe (this same
    # channel) would not see it back for up to two minutes: retry the connection at least every second instead.
    options.append(("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS))
    options.append(("grpc.initial_reconnect_backoff_ms", min(RECONNECT_BACKOFF_MS, 200)))
    if credentials is None:
        return grpc.aio.insecure_channel(url, options=options)
    return grpc.aio.secure_channel(url, credentials, options=options)


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


def _mapped(model: str, error: grpc.aio.AioRpcError) -> Exception:
    """A failed call to Triton about `model` -> a server error."""
    detail = f"{model}: {error.details() or ''}"
    if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DependencyTimeout("triton", detail)
    return DependencyUnavailable("triton", f"{detail} ({error.code()})")
