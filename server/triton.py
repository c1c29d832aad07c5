"""Triton façade: texts and click histories in, embeddings out, over KServe v2 gRPC.

The gateway tokenizes (with the same tokenizer files training used) and sends token ids, rather
than running a tokenizer model inside Triton: tokenizing here costs tens of microseconds, while an
ensemble step in front of each encoder would add a python-backend hop (~0.3-0.5 ms measured per
call on this machine) to every Search and to every title encoded by Recommend and UpsertItems.

Every call carries a deadline; Triton's gRPC errors become `server.errors` in one place (`_infer`).
The underlying gRPC channel reconnects by itself, so calls succeed again once Triton is back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from numpy.typing import NDArray
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

import contract
from contract import layout
from contract.tokenizer import TextTokenizer
from server.config import TritonSettings
from server.errors import DependencyTimeout, DependencyUnavailable


class TritonEncoders:
    """The four served encoders behind one client."""

    def __init__(self, settings: TritonSettings, tokenizers: dict[str, TextTokenizer]) -> None:
        missing = set(contract.TEXT_FIELDS) - set(tokenizers)
        if missing:
            raise ValueError(f"no tokenizer for text fields {sorted(missing)}")
        self.settings = settings
        self.tokenizers = tokenizers
        self._client = triton_aio.InferenceServerClient(
            settings.url,
            ssl=settings.ssl,
            root_certificates=_path(settings.ssl_root_certificates),
            private_key=_path(settings.ssl_private_key),
            certificate_chain=_path(settings.ssl_certificate_chain),
        )
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
        return await self._infer(self._models[text_field], inputs, timeout_s, model_version)

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
        return await self._infer(self.settings.user_encoder, inputs, timeout_s, model_version)

    async def embedding_dims(self) -> dict[str, int]:
        """Output size D of every encoder, read from Triton's model metadata."""
        dims = {}
        for model in self.model_names:
            try:
                metadata = await self._client.get_model_metadata(model, client_timeout=self.settings.timeout_s)
            except InferenceServerException as error:
                raise _mapped(model, error) from error
            (output,) = (o for o in metadata.outputs if o.name == contract.EMBEDDING)
            dims[model] = int(output.shape[-1])
        return dims

    async def ready(self) -> bool:
        """Server ready and every encoder loaded; never raises (used by health checks)."""
        try:
            timeout = self.settings.timeout_s
            if not await self._client.is_server_ready(client_timeout=timeout):
                return False
            for model in self.model_names:
                if not await self._client.is_model_ready(model, client_timeout=timeout):
                    return False
            return True
        except Exception:
            return False

    async def close(self) -> None:
        await self._client.close()

    async def _infer(
        self, model: str, inputs: dict[str, NDArray[Any]], timeout_s: float | None, model_version: str = ""
    ) -> NDArray[np.float32]:
        request = []
        for name, array in inputs.items():
            tensor = InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            request.append(tensor)
        timeout = min(timeout_s, self.settings.timeout_s) if timeout_s else self.settings.timeout_s
        try:
            result = await self._client.infer(
                model,
                request,
                model_version=model_version,
                outputs=[InferRequestedOutput(contract.EMBEDDING)],
                client_timeout=timeout,
            )
        except InferenceServerException as error:
            raise _mapped(model, error) from error
        return np.asarray(result.as_numpy(contract.EMBEDDING), dtype=np.float32)


def _path(path: Path | None) -> str | None:
    return str(path) if path is not None else None


def _mapped(model: str, error: InferenceServerException) -> Exception:
    status = error.status() or ""
    detail = f"{model}: {error.message()}"
    if status == str(grpc.StatusCode.DEADLINE_EXCEEDED):
        return DependencyTimeout("triton", detail)
    return DependencyUnavailable("triton", f"{detail} ({status or 'no status'})")
