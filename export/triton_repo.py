"""Write the contract's ONNX models into a Triton model repository, in one of two profiles.

Layout: `<repo>/<model>/config.pbtxt` and `<repo>/<model>/<version>/model.onnx`. Each export into an
existing repository adds a NEW version directory (highest + 1); the config serves only the newest
(`version_policy: latest 1`), so loading the model again swaps versions while the old one keeps serving.

Profiles (the same `model.onnx`, names and dims; only config.pbtxt, and model.py for cpu, differ):
- `gpu` (production, NGC tritonserver image): `backend: "onnxruntime"`, KIND_GPU instances, dynamic
  batching (optionally with a bounded queue that rejects on timeout), warmup, optional TensorRT.
  Triton's onnxruntime backend batches only requests of EQUAL shape (no ragged batching): callers
  that pad token/history lengths to a few buckets get bigger batches.
- `cpu` (this machine, CI, demo: the bundled tritonserver has only the python backend):
  `backend: "python"`, KIND_CPU, the same dynamic batching plus `allow_ragged_batch` on every input
  (without it Triton batches only equal shapes), and `export/triton_model.py` copied to `model.py`,
  which zero-pads requests of different lengths into one onnxruntime run.

The ONNX graph is checked against the ModelSpec first (names, dtypes, ranks, dynamic vs fixed dims,
weights inside the file, the output shape of one zero-sample run); a mismatch raises SpecMismatch
naming the file and the tensor.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf import text_format
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import triton_to_np_dtype

from contract import ModelSpec, TensorSpec
from contract.layout import Profile

PYTHON_MODEL = Path(__file__).with_name("triton_model.py")
VERSION_DIR = re.compile(r"[1-9][0-9]*")  # Triton ignores other names (and those with a leading zero)


class SpecMismatch(ValueError):
    """An ONNX graph does not implement its ModelSpec (names, dtypes, ranks or dims)."""


class TritonOptions(BaseModel):
    """Serving knobs written into config.pbtxt; defaults suit the CPU profile on a 2-core machine."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_batch_size: int = Field(64, gt=0, description="Largest batch (sum of request batch sizes).")
    preferred_batch_sizes: tuple[int, ...] = (16, 32, 64)
    max_queue_delay_us: int = Field(
        0, ge=0, description="How long a request may wait for a batch to fill; 0 batches what queued meanwhile."
    )
    # Off by default: with any default_queue_policy, the bundled Triton 2.51 stalled ~1% of requests for
    # ~500 ms (measured, python backend); see triton-inference-server/server#8870 before enabling it.
    queue_policy: bool = Field(False, description="Bound the queue and reject requests that wait too long.")
    queue_timeout_us: int = Field(1_000_000, gt=0, description="queue_policy: queued longer than this, rejected.")
    max_queue_size: int = Field(1024, gt=0, description="queue_policy: requests beyond this are rejected at once.")
    instance_count: int = Field(1, gt=0, description="Model instances (per GPU for the gpu profile).")
    intra_op_threads: int = Field(1, gt=0, description="cpu profile: onnxruntime threads per instance.")
    warmup_batch_sizes: tuple[int, ...] = (1,)
    warmup_length: int = Field(16, gt=0, description="Concrete size of dynamic dims in warmup samples.")
    tensorrt: bool = Field(False, description="gpu profile: run through onnxruntime's TensorRT provider.")
    tensorrt_precision: Literal["FP32", "FP16"] = "FP16"
    tensorrt_workspace_bytes: int = Field(1 << 30, gt=0)

    @model_validator(mode="after")
    def _batch_sizes_fit(self) -> TritonOptions:
        for field in ("preferred_batch_sizes", "warmup_batch_sizes"):
            sizes = getattr(self, field)
            if any(size < 1 or size > self.max_batch_size for size in sizes):
                raise ValueError(f"{field}: every size must be in 1..max_batch_size ({self.max_batch_size})")
        return self


def write_model(
    repo: Path, spec: ModelSpec, onnx_path: Path, profile: Profile, options: TritonOptions | None = None
) -> Path:
    """Check `onnx_path` against `spec`, add it as the next version of `spec.name`; return the version dir."""
    return write_repository(repo, [(spec, onnx_path)], profile, options)[spec.name]


def write_repository(
    repo: Path,
    exports: Sequence[tuple[ModelSpec, Path]],
    profile: Profile,
    options: TritonOptions | None = None,
) -> dict[str, Path]:
    """Add each graph as the next version of its model; everything is checked before anything is written.

    Returns model name -> the new version directory.
    """
    names = [spec.name for spec, _ in exports]
    if len(set(names)) != len(names):
        raise ValueError(f"each model may appear once per write, got {names}")
    options = options or TritonOptions()
    configs = [model_config(spec, profile, options) for spec, _ in exports]
    for spec, onnx_path in exports:
        check_onnx_matches(spec, onnx_path)
    return {
        spec.name: _add_version(Path(repo) / spec.name, onnx_path, config)
        for (spec, onnx_path), config in zip(exports, configs, strict=True)
    }


def _add_version(model_dir: Path, onnx_path: Path, config: mc.ModelConfig) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    version_dir = model_dir / str(next_version(model_dir))
    staging = model_dir / f".{version_dir.name}.partial"  # not numeric: invisible to Triton until renamed
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    shutil.copyfile(onnx_path, staging / "model.onnx")
    if config.backend == "python":
        shutil.copyfile(PYTHON_MODEL, staging / "model.py")
    staging.rename(version_dir)
    _write_atomically(model_dir / "config.pbtxt", text_format.MessageToString(config))
    return version_dir


def next_version(model_dir: Path) -> int:
    """1 + the highest numeric version directory under `model_dir` (1 when there is none)."""
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and VERSION_DIR.fullmatch(p.name)]
    return max(versions, default=0) + 1


def model_config(spec: ModelSpec, profile: Profile, options: TritonOptions) -> mc.ModelConfig:
    """The config.pbtxt message for `spec` in `profile`."""
    if profile not in ("cpu", "gpu"):
        raise ValueError(f"profile must be 'cpu' or 'gpu', got {profile!r}")
    if options.tensorrt and profile != "gpu":
        raise ValueError("tensorrt applies only to the gpu profile (the cpu profile runs the python backend)")
    cpu = profile == "cpu"
    config = mc.ModelConfig(
        name=spec.name,
        backend="python" if cpu else "onnxruntime",
        max_batch_size=options.max_batch_size,
        version_policy=mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=1)),
        input=[
            mc.ModelInput(name=t.name, data_type=_triton_type(t), dims=_dims(spec, t), allow_ragged_batch=cpu)
            for t in spec.inputs
        ],
        output=[mc.ModelOutput(name=spec.output.name, data_type=_triton_type(spec.output), dims=spec.output.dims)],
        instance_group=[
            mc.ModelInstanceGroup(
                kind=mc.ModelInstanceGroup.KIND_CPU if cpu else mc.ModelInstanceGroup.KIND_GPU,
                count=options.instance_count,
            )
        ],
        dynamic_batching=_dynamic_batching(options),
        model_warmup=[_warmup(spec, batch_size, options.warmup_length) for batch_size in options.warmup_batch_sizes],
    )
    if cpu:
        config.parameters["intra_op_threads"].string_value = str(options.intra_op_threads)
    if options.tensorrt:
        config.optimization.CopyFrom(_tensorrt(options))
    return config


def _dims(spec: ModelSpec, tensor: TensorSpec) -> tuple[int, ...]:
    if any(d == 0 or d < -1 for d in tensor.dims):
        raise SpecMismatch(f"{spec.name}: '{tensor.name}' dims {tensor.dims}: each must be -1 or a positive size")
    return tensor.dims


def _triton_type(tensor: TensorSpec) -> int:
    return mc.DataType.Value(f"TYPE_{tensor.dtype}")


def _dynamic_batching(options: TritonOptions) -> mc.ModelDynamicBatching:
    batching = mc.ModelDynamicBatching(
        preferred_batch_size=options.preferred_batch_sizes,
        max_queue_delay_microseconds=options.max_queue_delay_us,
    )
    if options.queue_policy:
        # REJECT is the enum's zero value, so the text format leaves it out; it is still what Triton reads.
        batching.default_queue_policy.CopyFrom(
            mc.ModelQueuePolicy(
                timeout_action=mc.ModelQueuePolicy.REJECT,
                default_timeout_microseconds=options.queue_timeout_us,
                max_queue_size=options.max_queue_size,
            )
        )
    return batching


def _warmup(spec: ModelSpec, batch_size: int, length: int) -> mc.ModelWarmup:
    """A zero-filled sample of `batch_size` rows, dynamic dims set to `length`."""
    return mc.ModelWarmup(
        name=f"zeros_batch{batch_size}_length{length}",
        batch_size=batch_size,
        inputs={
            t.name: mc.ModelWarmup.Input(
                data_type=_triton_type(t), dims=[length if d == -1 else d for d in t.dims], zero_data=True
            )
            for t in spec.inputs
        },
    )


def _tensorrt(options: TritonOptions) -> mc.ModelOptimizationPolicy:
    accelerator = mc.ModelOptimizationPolicy.ExecutionAccelerators.Accelerator(
        name="tensorrt",
        parameters={
            "precision_mode": options.tensorrt_precision,
            "max_workspace_size_bytes": str(options.tensorrt_workspace_bytes),
        },
    )
    return mc.ModelOptimizationPolicy(
        execution_accelerators=mc.ModelOptimizationPolicy.ExecutionAccelerators(gpu_execution_accelerator=[accelerator])
    )


def check_onnx_matches(spec: ModelSpec, onnx_path: Path) -> None:
    """Raise SpecMismatch unless the graph's inputs/outputs are exactly the spec's (batch dim 0 dynamic).

    The graph's declared inputs/outputs are compared first; exporters often leave output dims symbolic,
    so the graph is then run once on a zero sample to check the output's real shape.
    """
    _check_declared_tensors(spec, onnx_path)
    _check_output_shape(spec, onnx_path)


def _check_declared_tensors(spec: ModelSpec, onnx_path: Path) -> None:
    model = onnx.load(str(onnx_path), load_external_data=False)
    graph = model.graph
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer):
        raise SpecMismatch(f"{onnx_path}: weights are in external data files; save them inside the .onnx file")
    initializers = {t.name for t in graph.initializer}
    inputs = {v.name: v for v in graph.input if v.name not in initializers}
    _check_tensors(onnx_path, "input", spec.inputs, inputs)
    _check_tensors(onnx_path, "output", (spec.output,), {v.name: v for v in graph.output})


def _check_tensors(
    onnx_path: Path, kind: str, expected: Sequence[TensorSpec], actual: dict[str, onnx.ValueInfoProto]
) -> None:
    if sorted(actual) != sorted(t.name for t in expected):
        raise SpecMismatch(
            f"{onnx_path}: graph {kind}s {sorted(actual)} != spec {kind}s {sorted(t.name for t in expected)}"
        )
    for tensor in expected:
        where = f"{onnx_path}: {kind} '{tensor.name}'"
        tensor_type = actual[tensor.name].type.tensor_type
        graph_dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if graph_dtype != np.dtype(triton_to_np_dtype(tensor.dtype)):
            raise SpecMismatch(f"{where} has dtype {graph_dtype} in the graph, spec says {tensor.dtype}")
        graph_dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
        expected_dims = [-1, *tensor.dims]
        if len(graph_dims) != len(expected_dims):
            raise SpecMismatch(f"{where} has rank {len(graph_dims)}, spec says {len(expected_dims)} [batch, *dims]")
        for axis, (graph_dim, spec_dim) in enumerate(zip(graph_dims, expected_dims, strict=True)):
            if graph_dim != -1 and graph_dim != spec_dim:
                what = "dynamic (export it with dynamic_axes)" if spec_dim == -1 else f"{spec_dim}"
                raise SpecMismatch(f"{where} dim {axis} is {graph_dim} in the graph, spec says {what}")


def _check_output_shape(spec: ModelSpec, onnx_path: Path, batch: int = 2, length: int = 3) -> None:
    sample = {
        t.name: np.zeros([batch, *(length if d == -1 else d for d in t.dims)], triton_to_np_dtype(t.dtype))
        for t in spec.inputs
    }
    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        (output,) = session.run([spec.output.name], sample)
    except Exception as error:  # onnxruntime's own exception types
        raise SpecMismatch(f"{onnx_path}: onnxruntime could not run a zero sample: {error}") from error
    expected = (batch, *spec.output.dims)
    if output.shape != expected:
        raise SpecMismatch(
            f"{onnx_path}: output '{spec.output.name}' has shape {output.shape} for a zero sample, spec says {expected}"
        )


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)
