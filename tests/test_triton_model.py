"""The python-backend model's batching helpers, without a server (the server tests cover `execute`)."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from triton_fixtures import NEWS_DIM, SPECS, export_tiny_model, run_onnx, sample_inputs

from contract import USER_ENCODER
from devstack.triton import Bundle


@pytest.fixture(scope="module")
def model_py() -> ModuleType:
    """export/triton_model.py, importable here once Triton's triton_python_backend_utils is on the path."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(Bundle.locate().backends / "python"))
        return importlib.import_module("export.triton_model")


def text_request(lengths: list[int]) -> dict[str, np.ndarray]:
    """A request of len(lengths) rows, padded to its own longest row; ids are 1 + position."""
    width = max(lengths)
    mask = (np.arange(width)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    return {"input_ids": (np.arange(width) + 1)[None, :] * mask, "attention_mask": mask}


def test_requests_of_different_lengths_are_zero_padded_and_split_back(model_py: ModuleType) -> None:
    batch = [text_request([2]), text_request([5, 1]), text_request([3])]
    merged = model_py.pad_and_concat(batch)
    assert merged["input_ids"].shape == merged["attention_mask"].shape == (4, 5)
    row = 0
    for request in batch:
        rows, width = request["input_ids"].shape
        for name, array in request.items():
            np.testing.assert_array_equal(merged[name][row : row + rows, :width], array)
            assert not merged[name][row : row + rows, width:].any()
        row += rows

    outputs = {"embedding": np.arange(4 * 3, dtype=np.float32).reshape(4, 3)}
    pieces = model_py.split_rows(outputs, [1, 2, 1])
    assert [piece["embedding"].tolist() for piece in pieces] == [
        outputs["embedding"][0:1].tolist(),
        outputs["embedding"][1:3].tolist(),
        outputs["embedding"][3:4].tolist(),
    ]


TEXT_INPUTS = [("input_ids", (-1,)), ("attention_mask", (-1,))]
USER_INPUTS = [("history", (-1, 4)), ("history_mask", (-1,))]


@pytest.mark.parametrize(
    ("inputs", "arrays", "message"),
    [
        (
            TEXT_INPUTS,
            {"input_ids": np.ones((1, 3), np.int64), "attention_mask": np.ones((1, 2), np.int64)},
            r"disagree on the length of dim 1: \{'input_ids': 3, 'attention_mask': 2\}",
        ),
        (
            TEXT_INPUTS,
            {"input_ids": np.ones((1, 0), np.int64), "attention_mask": np.ones((1, 0), np.int64)},
            "dim 1 is empty",
        ),
        (
            USER_INPUTS,
            {"history": np.ones((2, 3, 4), np.float32), "history_mask": np.ones((2, 2), np.int64)},
            "'history': 3, 'history_mask': 2",
        ),
        (
            USER_INPUTS,
            {"history": np.full((1, 2, 4), np.inf, np.float32), "history_mask": np.ones((1, 2), np.int64)},
            "'history' contains NaN or infinity",
        ),
        (
            TEXT_INPUTS,
            {"input_ids": -np.ones((1, 2), np.int64), "attention_mask": np.ones((1, 2), np.int64)},
            "'input_ids' contains negative values",
        ),
    ],
    ids=["mask length", "empty", "history length", "infinity", "negative id"],
)
def test_a_request_that_breaks_the_contract_is_named(model_py: ModuleType, inputs, arrays, message: str) -> None:
    specs = [model_py.InputSpec(name, dims) for name, dims in inputs]
    with pytest.raises(model_py.RequestError, match=message):
        model_py.check_request(arrays, specs)


def test_a_valid_request_passes(model_py: ModuleType, tmp_path: Path) -> None:
    """Valid requests (an all-zero mask, a cold start, included) pass the checks, and the batched run the
    model makes of them (zero-padded, concatenated, split back) gives each one what the ONNX graph gives
    it alone."""
    spec = SPECS[USER_ENCODER]
    specs = [model_py.InputSpec(tensor.name, tensor.dims) for tensor in spec.inputs]
    onnx_path = export_tiny_model(spec, tmp_path / "user.onnx")
    cold_start = {"history": np.zeros((2, 3, NEWS_DIM), np.float32), "history_mask": np.zeros((2, 3), np.int64)}
    requests = [cold_start, sample_inputs(spec, batch=1, length=5, rng=np.random.default_rng(1))]
    for arrays in requests:
        model_py.check_request(arrays, specs)
    merged = model_py.pad_and_concat(requests)
    outputs = model_py.split_rows({spec.output.name: run_onnx(onnx_path, merged)}, [2, 1])
    for arrays, output in zip(requests, outputs, strict=True):
        embedding = output[spec.output.name]
        assert embedding.shape == (len(arrays["history"]), NEWS_DIM) and embedding.dtype == np.float32
        np.testing.assert_allclose(embedding, run_onnx(onnx_path, arrays), rtol=1e-5, atol=1e-6)
    cold = outputs[0][spec.output.name]
    np.testing.assert_array_equal(cold[0], cold[1])  # no clicks: both rows get the learned cold-start vector
