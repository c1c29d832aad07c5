"""`make export` on tiny checkpoints: four verified graphs, both repositories, tokenizer files, report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

import contract
from contract.layout import ServingLayout
from contract.ranking import RankingWeights
from contract.tokenizer import TextTokenizer
from export.models import export_all
from export.onnx_export import PARITY_TOLERANCE
from training.checkpoint import Checkpoint
from training.text import text_tokenizer

MODELS = [contract.NEWS_ENCODER, contract.USER_ENCODER, contract.QUERY_ENCODER, contract.DOC_ENCODER]


@pytest.fixture(scope="module")
def exported(tiny_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[ServingLayout, dict]:
    root = tmp_path_factory.mktemp("serving")
    layout = ServingLayout(root)
    report = export_all(tiny_checkpoints["nrms"], tiny_checkpoints["two_tower"], layout, root / "export.json")
    return layout, report


def test_report_lists_every_model_within_tolerance(exported: tuple[ServingLayout, dict]) -> None:
    layout, report = exported
    assert json.loads((layout.root / "export.json").read_text()) == report
    assert sorted(report["models"]) == sorted(MODELS)
    for model in report["models"].values():
        assert 0 <= model["max_abs_diff"] <= PARITY_TOLERANCE
        assert model["padding_max_abs_diff"] <= PARITY_TOLERANCE
        assert "real_batch" in model["parity_cases"]
        assert model["opset"] >= 13 and model["outputs"][0]["name"] == contract.EMBEDDING
    cases = report["models"][contract.USER_ENCODER]["parity_cases"]
    assert {"history_1", "empty_history", "max_history"} <= set(cases)
    assert {"length_1", "max_length"} <= set(report["models"][contract.QUERY_ENCODER]["parity_cases"])


def test_the_ranking_weights_are_exported_content_only_when_the_checkpoint_has_none(
    exported: tuple[ServingLayout, dict],
) -> None:
    layout, report = exported
    assert report["ranking"] == str(layout.ranking)
    assert RankingWeights.from_json(layout.ranking) == RankingWeights(content=1.0, popularity=0.0, age=0.0)


def test_graphs_have_dynamic_batch_and_lengths(exported: tuple[ServingLayout, dict]) -> None:
    layout, _ = exported
    for name in MODELS:
        graph = onnx.load(str(layout.onnx / f"{name}.onnx"), load_external_data=False).graph
        onnx.checker.check_model(str(layout.onnx / f"{name}.onnx"))
        for tensor in graph.input:
            dims = tensor.type.tensor_type.shape.dim
            assert dims[0].dim_param and dims[1].dim_param, f"{name}.{tensor.name} has a fixed batch or length"


def test_both_profiles_are_written_with_the_same_graph(exported: tuple[ServingLayout, dict]) -> None:
    layout, report = exported
    for name in MODELS:
        cpu = layout.repository("cpu") / name
        gpu = layout.repository("gpu") / name
        version = str(report["versions"][name])
        assert (cpu / version / "model.onnx").read_bytes() == (gpu / version / "model.onnx").read_bytes()
        assert (cpu / version / "model.py").exists() and not (gpu / version / "model.py").exists()
        gpu_config = text_format.Parse((gpu / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert gpu_config.backend == "onnxruntime"
        assert gpu_config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU


def test_export_again_is_a_no_op_and_new_weights_add_a_version(
    tiny_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    layout = ServingLayout(tmp_path / "serving")
    first = export_all(tiny_checkpoints["nrms"], tiny_checkpoints["two_tower"], layout, tmp_path / "1.json")
    again = export_all(tiny_checkpoints["nrms"], tiny_checkpoints["two_tower"], layout, tmp_path / "a.json")
    assert again["versions"] == first["versions"]
    changed = Checkpoint.load(tiny_checkpoints["two_tower"])
    changed.state_dict = {k: v + 0.01 if v.is_floating_point() else v for k, v in changed.state_dict.items()}
    path = changed.save(tmp_path / "two_tower.pt")
    bumped = export_all(tiny_checkpoints["nrms"], path, layout, tmp_path / "b.json")
    assert bumped["versions"][contract.QUERY_ENCODER] == first["versions"][contract.QUERY_ENCODER] + 1
    assert bumped["versions"][contract.NEWS_ENCODER] == first["versions"][contract.NEWS_ENCODER]


def test_shipped_tokenizer_files_encode_like_training(
    exported: tuple[ServingLayout, dict], tiny_models: dict[str, Checkpoint]
) -> None:
    layout, _ = exported
    texts = ["Brexit talks stall again", "", "a " * 500, "Ünïcödé and emoji 🚀 in a headline"]
    refs = {"title": tiny_models["nrms"].tokenizers["title"], **tiny_models["two_tower"].tokenizers}
    for field, ref in refs.items():
        served = TextTokenizer.from_file(layout.tokenizers / f"{field}.json")
        for got, want in zip(served.encode(texts), text_tokenizer(ref).encode(texts), strict=True):
            np.testing.assert_array_equal(got, want)
        assert served.max_length == ref.max_length


def test_onnx_query_encoder_matches_the_checkpoint_on_text(
    exported: tuple[ServingLayout, dict], tiny_models: dict[str, Checkpoint]
) -> None:
    layout, _ = exported
    ids, mask = TextTokenizer.from_file(layout.tokenizers / "query.json").encode(["who won the election", "rain"])
    session = ort.InferenceSession(str(layout.onnx / f"{contract.QUERY_ENCODER}.onnx"))
    (onnx_out,) = session.run(None, {contract.INPUT_IDS: ids, contract.ATTENTION_MASK: mask})
    with torch.no_grad():
        torch_out = tiny_models["two_tower"].build_model().query_tower(torch.from_numpy(ids), torch.from_numpy(mask))
    np.testing.assert_allclose(onnx_out, torch_out.numpy(), atol=PARITY_TOLERANCE)
