"""Export the four encoders to ONNX and prove each graph computes what its PyTorch module computes.

Every graph has a dynamic batch (dim 0) and dynamic lengths (tokens, history); masks are explicit
inputs. Tensor names follow `contract.models`. Parity is checked with ONNX Runtime against
PyTorch on real inputs and on edge shapes (batch 1, length 1, maximum length, a history of one,
an empty history); the largest absolute difference per model goes into the export report.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

import contract
from contract import ModelSpec
from contract.tokenizer import TextTokenizer

OPSET = 17
PARITY_TOLERANCE = 1e-4

Inputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class ExportTarget:
    """One module to export, its contract, and the named input sets its parity is checked on."""

    spec: ModelSpec
    module: nn.Module
    parity_inputs: dict[str, Inputs]


@dataclass(frozen=True)
class ExportResult:
    spec: ModelSpec
    path: Path
    max_abs_diff: float
    per_case: dict[str, float]
    padding_diff: float

    def report(self) -> dict:
        return {
            "max_abs_diff": self.max_abs_diff,
            "parity_cases": self.per_case,
            "padding_max_abs_diff": self.padding_diff,
            "opset": OPSET,
            "inputs": [{"name": t.name, "dtype": t.dtype, "dims": [-1, *t.dims]} for t in self.spec.inputs],
            "outputs": [
                {"name": self.spec.output.name, "dtype": self.spec.output.dtype, "dims": [-1, *self.spec.output.dims]}
            ],
            "file": str(self.path),
            "bytes": self.path.stat().st_size,
        }


def dynamic_axes(spec: ModelSpec) -> dict[str, dict[int, str]]:
    axes = {}
    for tensor in spec.inputs:
        names = {0: "batch"}
        names.update({i + 1: f"{tensor.name}_len{i}" for i, d in enumerate(tensor.dims) if d == -1})
        axes[tensor.name] = names
    axes[spec.output.name] = {0: "batch"}
    return axes


def export_onnx(target: ExportTarget, path: Path) -> Path:
    """Write the ONNX graph for `target` to `path` and validate it with onnx.checker."""
    path.parent.mkdir(parents=True, exist_ok=True)
    example = next(iter(target.parity_inputs.values()))
    args = tuple(torch.from_numpy(example[t.name]) for t in target.spec.inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            target.module.eval(),
            args,
            str(path),
            input_names=[t.name for t in target.spec.inputs],
            output_names=[target.spec.output.name],
            dynamic_axes=dynamic_axes(target.spec),
            opset_version=OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(str(path), full_check=True)
    return path


def max_abs_diff(module: nn.Module, session: ort.InferenceSession, inputs: Inputs) -> float:
    with torch.no_grad():
        expected = module.eval()(*(torch.from_numpy(v) for v in inputs.values())).numpy()
    (actual,) = session.run(None, inputs)
    if actual.shape != expected.shape:
        raise AssertionError(f"onnx output shape {actual.shape} != torch {expected.shape}")
    return float(np.abs(actual - expected).max())


def export_and_verify(target: ExportTarget, path: Path) -> ExportResult:
    """Export, then compare ONNX Runtime with PyTorch on every parity case; raise if over tolerance."""
    export_onnx(target, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    per_case = {name: max_abs_diff(target.module, session, inputs) for name, inputs in target.parity_inputs.items()}
    worst = max(per_case.values())
    if worst > PARITY_TOLERANCE:
        raise AssertionError(f"{target.spec.name}: ONNX vs PyTorch max abs diff {worst:.2e} > {PARITY_TOLERANCE}")
    padding = padding_diff(session, target.parity_inputs["real_batch"], mask_name=target.spec.inputs[1].name)
    if padding > PARITY_TOLERANCE:
        raise AssertionError(f"{target.spec.name}: output changes with padding by {padding:.2e}")
    return ExportResult(target.spec, path, worst, per_case, padding)


def padding_diff(session: ort.InferenceSession, batch: Inputs, mask_name: str) -> float:
    """Largest change of a row's output between running padded inside `batch` and alone at its own length.

    Triton's dynamic batcher pads requests of different lengths into one batch, so this must be ~0.
    """
    (batched,) = session.run(None, batch)
    worst = 0.0
    for row in range(batched.shape[0]):
        length = max(1, int(batch[mask_name][row].sum()))
        (alone,) = session.run(None, {name: value[row : row + 1, :length] for name, value in batch.items()})
        worst = max(worst, float(np.abs(alone[0] - batched[row]).max()))
    return worst


def text_parity_inputs(tokenizer: TextTokenizer, texts: list[str], max_tokens: int) -> dict[str, Inputs]:
    """Real texts, batch 1, length 1 ([CLS] alone) and a text truncated to the maximum length."""

    def encoded(batch: list[str]) -> Inputs:
        ids, mask = tokenizer.encode(batch)
        return {contract.INPUT_IDS: ids, contract.ATTENTION_MASK: mask}

    longest = encoded([" ".join(texts) * 4])
    if longest[contract.INPUT_IDS].shape[1] != max_tokens:
        raise AssertionError(f"tokenizer does not truncate to {max_tokens} tokens")
    single_token = {
        contract.INPUT_IDS: np.array([[101]], dtype=np.int64),  # [CLS] alone
        contract.ATTENTION_MASK: np.ones((1, 1), dtype=np.int64),
    }
    return {
        "real_batch": encoded(texts),
        "batch_1": encoded(texts[:1]),
        "length_1": single_token,
        "max_length": longest,
    }


def history_parity_inputs(news_vectors: np.ndarray, max_history: int, seed: int = 0) -> dict[str, Inputs]:
    """Real news vectors as histories of mixed lengths, a history of one, an empty one and a full one."""
    rng = np.random.default_rng(seed)
    dim = news_vectors.shape[1]

    def histories(lengths: list[int], width: int) -> Inputs:
        history = np.zeros((len(lengths), width, dim), dtype=np.float32)
        mask = np.zeros((len(lengths), width), dtype=np.int64)
        for row, length in enumerate(lengths):
            history[row, :length] = news_vectors[rng.choice(len(news_vectors), size=length)]
            mask[row, :length] = 1
        return {contract.HISTORY: history, contract.HISTORY_MASK: mask}

    return {
        "real_batch": histories([1, 3, 7, 12, 20, 0], width=20),
        "history_1": histories([1], width=1),
        "empty_history": histories([0], width=1),
        "max_history": histories([max_history, max_history // 2], width=max_history),
    }
