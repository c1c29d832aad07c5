"""Tiny ONNX graphs that follow contract.models exactly, for the Triton repository and server tests.

Text encoders: token embedding + masked mean pool (L2-normalised for the two-tower models).
User encoder: masked mean over the history + a linear layer; an all-zero mask gives a learned
cold-start vector. All graphs are exported with dynamic batch and length axes, like the real ones.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
import tritonclient.grpc as grpcclient
from torch import nn
from tritonclient.utils import np_to_triton_dtype

from contract import (
    DOC_ENCODER,
    NEWS_ENCODER,
    QUERY_ENCODER,
    USER_ENCODER,
    ModelSpec,
    text_model,
    user_model,
)

VOCAB = 50
NEWS_DIM = 16
TWO_TOWER_DIM = 8
CONTRACT_SPECS = (
    text_model(NEWS_ENCODER, NEWS_DIM),
    user_model(USER_ENCODER, NEWS_DIM),
    text_model(QUERY_ENCODER, TWO_TOWER_DIM),
    text_model(DOC_ENCODER, TWO_TOWER_DIM),
)
SPECS = {spec.name: spec for spec in CONTRACT_SPECS}


class TinyTextEncoder(nn.Module):
    def __init__(self, dim: int, normalize: bool) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, dim)
        self.normalize = normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        pooled = (self.embedding(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled


class TinyUserEncoder(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.project = nn.Linear(dim, dim)
        self.cold_start = nn.Parameter(torch.randn(dim))

    def forward(self, history: torch.Tensor, history_mask: torch.Tensor) -> torch.Tensor:
        mask = history_mask.unsqueeze(-1).to(history.dtype)
        count = mask.sum(1)
        pooled = self.project((history * mask).sum(1) / count.clamp(min=1.0))
        return torch.where(count > 0, pooled, self.cold_start.expand_as(pooled))


def export_tiny_model(spec: ModelSpec, path: Path, seed: int = 0, dynamic: bool = True) -> Path:
    """Export a randomly initialised tiny graph for `spec` to `path` (different seeds, different weights).

    `dynamic=False` reproduces the classic mistake: no dynamic_axes, so batch and length are fixed.
    """
    torch.manual_seed(seed)
    dim = spec.output.dims[0]
    module = TinyUserEncoder(dim) if spec.name == USER_ENCODER else TinyTextEncoder(dim, spec.name != NEWS_ENCODER)
    sample = sample_inputs(spec, batch=2, length=3, rng=np.random.default_rng(seed))
    dynamic_axes = {
        t.name: {0: "batch", **{axis + 1: "length" for axis, d in enumerate(t.dims) if d == -1}} for t in spec.inputs
    }
    dynamic_axes[spec.output.name] = {0: "batch"}
    with warnings.catch_warnings():  # the legacy exporter (dynamo=False) is deliberate: see the PLAYBOOK
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module.eval(),
            tuple(torch.from_numpy(array) for array in sample.values()),
            str(path),
            input_names=list(sample),
            output_names=[spec.output.name],
            dynamic_axes=dynamic_axes if dynamic else None,
            dynamo=False,
        )
    return path


def sample_inputs(spec: ModelSpec, batch: int, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random valid inputs: ids in 1..VOCAB-1 or float history, masks with >= 1 real position per row."""
    lengths = rng.integers(1, length + 1, size=batch)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    first, second = (t.name for t in spec.inputs)
    if spec.name == USER_ENCODER:
        history = rng.standard_normal((batch, length, spec.inputs[0].dims[1])).astype(np.float32)
        return {first: history, second: mask}
    return {first: rng.integers(1, VOCAB, size=(batch, length), dtype=np.int64), second: mask}


def run_onnx(path: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The reference answer: onnxruntime run directly on the same graph."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)[0]


def infer_inputs(arrays: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    """tritonclient inputs (sync and aio clients take the same objects) for named arrays."""
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs
