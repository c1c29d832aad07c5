"""The Triton repository writer, without a server: config.pbtxt contents, versions, spec/ONNX checks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from google.protobuf import text_format
from pydantic import ValidationError
from triton_fixtures import CONTRACT_SPECS, SPECS, export_tiny_model
from tritonclient.grpc import model_config_pb2 as mc

from contract import QUERY_ENCODER, USER_ENCODER, TensorSpec
from export.triton_repo import (
    PYTHON_MODEL,
    SpecMismatch,
    TritonOptions,
    next_version,
    write_model,
    write_repository,
)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("onnx")
    return {spec.name: export_tiny_model(spec, base / f"{spec.name}.onnx") for spec in CONTRACT_SPECS}


def read_config(model_dir: Path) -> mc.ModelConfig:
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())


@pytest.mark.parametrize("spec", CONTRACT_SPECS, ids=lambda spec: spec.name)
def test_cpu_profile_is_the_python_backend_with_ragged_inputs_and_model_py(
    tmp_path: Path, graphs: dict[str, Path], spec
) -> None:
    options = TritonOptions(max_batch_size=32, preferred_batch_sizes=(8, 32), intra_op_threads=2)
    version_dir = write_model(tmp_path, spec, graphs[spec.name], "cpu", options)
    config = read_config(version_dir.parent)

    assert (config.name, config.backend, config.max_batch_size) == (spec.name, "python", 32)
    assert [(i.name, mc.DataType.Name(i.data_type), tuple(i.dims), i.allow_ragged_batch) for i in config.input] == [
        (t.name, f"TYPE_{t.dtype}", t.dims, True) for t in spec.inputs
    ]
    assert [(o.name, tuple(o.dims)) for o in config.output] == [(spec.output.name, spec.output.dims)]
    assert [(g.kind, g.count) for g in config.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 1)]
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 32]
    assert config.version_policy.latest.num_versions == 1
    assert config.parameters["intra_op_threads"].string_value == "2"
    assert version_dir.name == "1"
    assert (version_dir / "model.onnx").read_bytes() == graphs[spec.name].read_bytes()
    assert (version_dir / "model.py").read_text() == PYTHON_MODEL.read_text()


def test_warmup_samples_have_the_spec_dtypes_and_concrete_dims(tmp_path: Path, graphs: dict[str, Path]) -> None:
    spec = SPECS[USER_ENCODER]
    options = TritonOptions(warmup_batch_sizes=(1, 8), warmup_length=5)
    config = read_config(write_model(tmp_path, spec, graphs[USER_ENCODER], "gpu", options).parent)
    assert [w.batch_size for w in config.model_warmup] == [1, 8]
    history = config.model_warmup[0].inputs["history"]
    assert (mc.DataType.Name(history.data_type), list(history.dims), history.zero_data) == ("TYPE_FP32", [5, 16], True)
    assert list(config.model_warmup[0].inputs["history_mask"].dims) == [5]


def test_gpu_profile_is_onnxruntime_on_gpu_without_ragged_inputs_or_model_py(
    tmp_path: Path, graphs: dict[str, Path]
) -> None:
    options = TritonOptions(instance_count=2, queue_policy=True, queue_timeout_us=5000, max_queue_size=10)
    version_dir = write_model(tmp_path, SPECS[QUERY_ENCODER], graphs[QUERY_ENCODER], "gpu", options)
    config = read_config(version_dir.parent)

    assert config.backend == "onnxruntime"
    assert [(g.kind, g.count) for g in config.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, 2)]
    assert not any(i.allow_ragged_batch for i in config.input)
    policy = config.dynamic_batching.default_queue_policy
    assert (policy.timeout_action, policy.default_timeout_microseconds, policy.max_queue_size) == (
        mc.ModelQueuePolicy.REJECT,
        5000,
        10,
    )
    assert not config.HasField("optimization")
    assert sorted(p.name for p in version_dir.iterdir()) == ["model.onnx"]


def test_queue_policy_is_off_unless_asked_for(tmp_path: Path, graphs: dict[str, Path]) -> None:
    config = read_config(write_model(tmp_path, SPECS[QUERY_ENCODER], graphs[QUERY_ENCODER], "gpu").parent)
    assert not config.dynamic_batching.HasField("default_queue_policy")


def test_tensorrt_accelerator_is_behind_a_flag_and_gpu_only(tmp_path: Path, graphs: dict[str, Path]) -> None:
    options = TritonOptions(tensorrt=True, tensorrt_precision="FP16")
    config = read_config(write_model(tmp_path, SPECS[QUERY_ENCODER], graphs[QUERY_ENCODER], "gpu", options).parent)
    [accelerator] = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert accelerator.parameters["precision_mode"] == "FP16"
    with pytest.raises(ValueError, match="tensorrt applies only to the gpu profile"):
        write_model(tmp_path / "cpu", SPECS[QUERY_ENCODER], graphs[QUERY_ENCODER], "cpu", options)
    assert not (tmp_path / "cpu").exists()


def test_each_export_adds_the_next_version_and_the_config_serves_only_the_newest(
    tmp_path: Path, graphs: dict[str, Path]
) -> None:
    spec = SPECS[QUERY_ENCODER]
    model_dir = tmp_path / spec.name
    (model_dir / "not-a-version").mkdir(parents=True)
    (model_dir / "007").mkdir()  # Triton ignores names with a leading zero, and so does the numbering
    versions = [write_model(tmp_path, spec, graphs[spec.name], "cpu").name for _ in range(3)]
    assert versions == ["1", "2", "3"]
    assert next_version(model_dir) == 4
    assert not list(model_dir.glob(".*"))  # no staging leftovers
    assert read_config(model_dir).version_policy.latest.num_versions == 1


def test_write_repository_writes_every_model(tmp_path: Path, graphs: dict[str, Path]) -> None:
    written = write_repository(tmp_path, [(spec, graphs[spec.name]) for spec in CONTRACT_SPECS], "cpu")
    assert written == {spec.name: tmp_path / spec.name / "1" for spec in CONTRACT_SPECS}
    assert all(read_config(tmp_path / spec.name).name == spec.name for spec in CONTRACT_SPECS)


def _replace_input(spec, index: int, **changes):
    inputs = list(spec.inputs)
    inputs[index] = dataclasses.replace(inputs[index], **changes)
    return dataclasses.replace(spec, inputs=tuple(inputs))


MISMATCHES = {
    "input name": (QUERY_ENCODER, lambda s: _replace_input(s, 0, name="token_ids"), "graph inputs"),
    "input dtype": (QUERY_ENCODER, lambda s: _replace_input(s, 0, dtype="INT32"), "'input_ids' has dtype int64"),
    "input rank": (USER_ENCODER, lambda s: _replace_input(s, 0, dims=(-1,)), "'history' has rank 3"),
    "fixed dim": (USER_ENCODER, lambda s: _replace_input(s, 0, dims=(-1, 32)), "'history' dim 2 is 16"),
    "output dim": (
        QUERY_ENCODER,
        lambda s: dataclasses.replace(s, output=TensorSpec("embedding", "FP32", (64,))),
        r"output 'embedding' has shape \(2, 8\) for a zero sample, spec says \(2, 64\)",
    ),
    "output name": (
        QUERY_ENCODER,
        lambda s: dataclasses.replace(s, output=TensorSpec("vector", "FP32", (8,))),
        "graph outputs",
    ),
}


@pytest.mark.parametrize(("model", "change", "message"), MISMATCHES.values(), ids=list(MISMATCHES))
def test_a_graph_that_breaks_its_spec_is_refused_and_nothing_is_written(
    tmp_path: Path, graphs: dict[str, Path], model: str, change, message: str
) -> None:
    spec = change(SPECS[model])
    valid = next(other for other in CONTRACT_SPECS if other.name != model)  # written first, if anything were
    with pytest.raises(SpecMismatch, match=message) as error:
        write_repository(tmp_path, [(valid, graphs[valid.name]), (spec, graphs[model])], "cpu")
    assert str(graphs[model]) in str(error.value)
    assert not list(tmp_path.iterdir())


def test_a_graph_exported_without_dynamic_length_is_refused(tmp_path: Path) -> None:
    spec = SPECS[QUERY_ENCODER]
    static = export_tiny_model(spec, tmp_path / "static.onnx", dynamic=False)
    with pytest.raises(SpecMismatch, match=r"'input_ids' dim 0 is 2 in the graph, spec says dynamic"):
        write_model(tmp_path / "repo", spec, static, "cpu")


def test_options_reject_batch_sizes_above_the_maximum() -> None:
    with pytest.raises(ValidationError, match="preferred_batch_sizes"):
        TritonOptions(max_batch_size=8, preferred_batch_sizes=(4, 16))
