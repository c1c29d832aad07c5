"""The four encoders as served by the real tritonserver (python backend over the exported ONNX) compute
what the PyTorch checkpoints compute, on text tokenized with the shipped tokenizer files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tritonclient.grpc as triton

import contract
from contract.tokenizer import TextTokenizer
from training.checkpoint import Checkpoint

pytestmark = pytest.mark.stack

TEXTS = ["Election results spark protests", "Storm hits the coast", "a", "Ünïcödé headline 🚀 " * 20]


def served(url: str, model: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
    request = []
    for name, array in inputs.items():
        tensor = triton.InferInput(name, list(array.shape), "INT64" if array.dtype == np.int64 else "FP32")
        tensor.set_data_from_numpy(array)
        request.append(tensor)
    with triton.InferenceServerClient(url) as client:
        return client.infer(model, request, client_timeout=10).as_numpy(contract.EMBEDDING)


@pytest.mark.parametrize(
    ("model", "checkpoint", "tower", "field"),
    [
        (contract.NEWS_ENCODER, "nrms", "news_encoder", "title"),
        (contract.QUERY_ENCODER, "two_tower", "query_tower", "query"),
        (contract.DOC_ENCODER, "two_tower", "doc_tower", "passage"),
    ],
)
def test_text_encoders_match_pytorch(stack, tiny_serving, tiny_models, model, checkpoint, tower, field) -> None:
    ids, mask = TextTokenizer.from_file(tiny_serving.tokenizers / f"{field}.json").encode(TEXTS)
    got = served(stack.triton.grpc_url, model, {contract.INPUT_IDS: ids, contract.ATTENTION_MASK: mask})
    with torch.no_grad():
        module = getattr(tiny_models[checkpoint].build_model(), tower)
        want = module(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_user_encoder_matches_pytorch_including_an_empty_history(stack, tiny_models: dict[str, Checkpoint]) -> None:
    model = tiny_models["nrms"].build_model()
    dim = tiny_models["nrms"].run.model.news_dim
    history = np.random.default_rng(0).normal(size=(3, 4, dim)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=np.int64)
    got = served(stack.triton.grpc_url, contract.USER_ENCODER, {contract.HISTORY: history, contract.HISTORY_MASK: mask})
    with torch.no_grad():
        want = model.user_encoder(torch.from_numpy(history), torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_allclose(got[2], model.user_encoder.cold_start.detach().numpy(), atol=1e-6)
