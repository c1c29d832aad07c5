"""Triton python-backend model: one ONNX graph run by onnxruntime on CPU, with ragged dynamic batching.

`export.triton_repo` copies this file verbatim to `<repo>/<model>/<version>/model.py`, beside
`model.onnx`; Triton's python-backend stub runs it (it is never imported by the project itself).

Contract:
- Input/output names and dtypes come from the model config; the ONNX graph uses the same names.
  Batch is dim 0 (`max_batch_size > 0`); outputs have no dynamic dims (one fixed-size row per item).
- `execute` gets a LIST of requests (dynamic batching). Requests may differ on dynamic dims (token
  length, history length): each input is zero-padded to the batch maximum, all requests are
  concatenated, run once, and the output rows are split back per request. The graphs mask padding,
  so zeros are neutral (id 0, mask 0, history vector 0).
- Within one request, inputs must agree on every dynamic dim they share (input_ids/attention_mask
  on L, history/history_mask on H); dynamic dims must be >= 1, floats finite and integers (ids,
  masks) >= 0. Triton itself rejects wrong names, dtypes, ranks, fixed dims and unequal batch sizes
  before `execute`.
- A request that breaks the contract, or that onnxruntime rejects (e.g. a token id outside the
  vocabulary), gets an error response naming the problem; the other requests still get answers.
- Config `parameters`: `intra_op_threads` (default 1) sets onnxruntime's intra-op thread count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

Arrays = dict[str, np.ndarray]


class RequestError(ValueError):
    """One request breaks the contract; the message goes back to that caller only."""


@dataclass(frozen=True)
class InputSpec:
    name: str
    dims: tuple[int, ...]  # without the batch dim; -1 is dynamic

    def dynamic_axes(self) -> list[int]:
        """Axes of the full [batch, *dims] array that are dynamic (the batch axis excluded)."""
        return [axis + 1 for axis, size in enumerate(self.dims) if size == -1]


def check_request(arrays: Arrays, specs: list[InputSpec]) -> None:
    """Raise RequestError when one request's inputs disagree on dynamic dims, are empty, non-finite or negative.

    (Triton already checked names, dtypes, ranks, fixed dims and that the batch sizes agree.)
    """
    shapes = {name: array.shape for name, array in arrays.items()}
    sizes_by_axis: dict[int, dict[str, int]] = {}
    for spec in specs:
        for axis in spec.dynamic_axes():
            sizes_by_axis.setdefault(axis, {})[spec.name] = shapes[spec.name][axis]
    for axis, sizes in sizes_by_axis.items():
        if len(set(sizes.values())) > 1:
            raise RequestError(f"inputs disagree on the length of dim {axis}: {sizes}")
        if 0 in sizes.values():
            raise RequestError(f"dim {axis} is empty {sizes}; dynamic dims need length >= 1")
    for name, array in arrays.items():
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise RequestError(f"input '{name}' contains NaN or infinity")
        if np.issubdtype(array.dtype, np.integer) and (array < 0).any():  # onnxruntime's Gather wraps negatives
            raise RequestError(f"input '{name}' contains negative values; ids and masks are >= 0")


def pad_and_concat(batch: list[Arrays]) -> Arrays:
    """Zero-pad every input to the batch's largest shape and concatenate the requests along dim 0."""
    merged = {}
    for name in batch[0]:
        arrays = [request[name] for request in batch]
        target = np.max([array.shape for array in arrays], axis=0)
        padded = [
            np.pad(array, [(0, 0)] + [(0, int(t - s)) for s, t in zip(array.shape[1:], target[1:], strict=True)])
            for array in arrays
        ]
        merged[name] = np.concatenate(padded)
    return merged


def split_rows(outputs: Arrays, batch_sizes: list[int]) -> list[Arrays]:
    """Cut each output back into one slice of rows per request."""
    bounds = np.cumsum(batch_sizes)[:-1]
    pieces = {name: np.split(array, bounds) for name, array in outputs.items()}
    return [{name: parts[i] for name, parts in pieces.items()} for i in range(len(batch_sizes))]


class TritonPythonModel:
    """Serves `model.onnx` from its version directory; see the module docstring for the contract."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.model_name = args["model_name"]
        self.inputs = [InputSpec(i["name"], tuple(int(d) for d in i["dims"])) for i in config["input"]]
        self.output_names = [o["name"] for o in config["output"]]
        parameters = config.get("parameters", {})
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters.get("intra_op_threads", {}).get("string_value", "1"))
        options.inter_op_num_threads = 1
        onnx_path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self._check_graph_names(onnx_path)

    def _check_graph_names(self, onnx_path: Path) -> None:
        graph_inputs = {i.name for i in self.session.get_inputs()}
        graph_outputs = {o.name for o in self.session.get_outputs()}
        config_inputs = {spec.name for spec in self.inputs}
        if graph_inputs != config_inputs or not set(self.output_names) <= graph_outputs:
            raise pb_utils.TritonModelException(
                f"{onnx_path}: graph inputs {sorted(graph_inputs)} / outputs {sorted(graph_outputs)} do not "
                f"match config inputs {sorted(config_inputs)} / outputs {sorted(self.output_names)}"
            )

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        valid: list[tuple[int, Arrays]] = []
        for index, request in enumerate(requests):
            arrays = {
                spec.name: pb_utils.get_input_tensor_by_name(request, spec.name).as_numpy() for spec in self.inputs
            }
            try:
                check_request(arrays, self.inputs)
            except RequestError as error:
                responses[index] = self._error(str(error), pb_utils.TritonError.INVALID_ARG)
            else:
                valid.append((index, arrays))
        if valid:
            indices, batch = zip(*valid, strict=True)
            for index, result in zip(indices, self._run(list(batch)), strict=True):
                responses[index] = result
        return responses

    def _run(self, batch: list[Arrays]) -> list:
        """One onnxruntime run for the whole batch; if it fails, each request alone, so only the culprit fails."""
        try:
            outputs = self._infer(pad_and_concat(batch))
        except Exception as error:  # onnxruntime's own exception types, e.g. a token id outside the vocabulary
            if len(batch) > 1:
                return [self._run([arrays])[0] for arrays in batch]
            return [self._error(f"onnxruntime failed on this request: {error}", pb_utils.TritonError.INTERNAL)]
        sizes = [next(iter(arrays.values())).shape[0] for arrays in batch]
        return [self._response(rows) for rows in split_rows(outputs, sizes)]

    def _infer(self, inputs: Arrays) -> Arrays:
        return dict(zip(self.output_names, self.session.run(self.output_names, inputs), strict=True))

    def _response(self, outputs: Arrays):
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, a) for n, a in outputs.items()])

    def _error(self, message: str, code: int):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"model '{self.model_name}': {message}", code))

    def finalize(self) -> None:
        """Release onnxruntime's session (and its memory) before the stub exits or the model unloads."""
        del self.session
