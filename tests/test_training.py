"""Training pipeline: samples, determinism, checkpoints, configs, sweeps, reports and training.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_nrms_run, tiny_two_tower_run

from training.checkpoint import Checkpoint
from training.config import apply_overrides, load_run_config
from training.data.build import DatasetPaths
from training.data.mind import load_mind_split
from training.pipeline import run_training
from training.report import load_rows, plot_curves, rank, ranking_table
from training.sweep import grid_points, run_name
from training.train_nrms import draw_samples, sample_count, time_bucketed_batches, train_nrms

NRMS_KEYS = {"auc", "mrr", "ndcg@5", "ndcg@10"}
RETRIEVAL_KEYS = {"mrr@10", "recall@1", "recall@5", "recall@10", "recall@100", "ndcg@10", "map"}


def test_samples_pair_a_click_with_non_clicks_of_the_same_impression(tiny_data: DatasetPaths) -> None:
    split = load_mind_split(tiny_data.mind_train)
    index = {news_id: row for row, news_id in enumerate(sorted(split.news))}
    news_of = {row: news_id for news_id, row in index.items()}
    impressions = [imp for imp in split.impressions if 0 < sum(imp.labels) < len(imp.labels)]
    for positives in (None, 1):
        samples = draw_samples(impressions, index, 4, 10, positives, np.random.default_rng(0))
        assert len(samples) == sample_count(impressions, positives)
    for impression, sample in zip(impressions, samples, strict=True):  # positives=1: one per impression
        labels = dict(zip(impression.candidates, impression.labels, strict=True))
        assert labels[news_of[sample.candidates[0]]] == 1
        assert all(labels[news_of[row]] == 0 for row in sample.candidates[1:])
        assert [news_of[row] for row in sample.history] == list(impression.history[-10:])


def test_time_bucketed_batches_cover_every_sample_once() -> None:
    batches = time_bucketed_batches(1003, 100, np.random.default_rng(0))
    assert sorted(i for batch in batches for i in batch) == list(range(1003))
    assert all(list(batch) == list(range(batch.start, batch.stop)) for batch in batches)  # neighbours together
    assert [b.start for b in batches] != sorted(b.start for b in batches)  # batch order shuffled


def test_training_is_deterministic_under_a_seed(tiny_data: DatasetPaths) -> None:
    def weights(seed: int) -> dict[str, torch.Tensor]:
        return train_nrms(tiny_nrms_run(tiny_data, "train.epochs=1", f"train.seed={seed}")).state_dict

    first, again, other = weights(0), weights(0), weights(1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_checkpoint_round_trip(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    for kind, path in tiny_checkpoints.items():
        checkpoint = Checkpoint.load(path)
        copy = Checkpoint.load(checkpoint.save(tmp_path / f"{kind}.pt"))
        assert copy.run == checkpoint.run and copy.kind == kind
        assert copy.history == checkpoint.history and len(copy.history) >= 1
        assert copy.best_metrics == checkpoint.best_metrics
        assert copy.best_metrics == checkpoint.history[copy.best_epoch - 1]["dev"]
        assert copy.tokenizers == checkpoint.tokenizers
        assert all(torch.equal(copy.state_dict[k], v) for k, v in checkpoint.state_dict.items())
        torch.load(path, weights_only=True)  # loads without unpickling code
    nrms = Checkpoint.load(tiny_checkpoints["nrms"])
    assert set(nrms.best_metrics) == NRMS_KEYS
    assert set(Checkpoint.load(tiny_checkpoints["two_tower"]).best_metrics) == RETRIEVAL_KEYS


def test_a_rebuilt_model_computes_what_the_trained_one_did(tiny_models: dict[str, Checkpoint]) -> None:
    model = tiny_models["two_tower"].build_model()
    ids, mask = torch.tensor([[101, 2054, 102]]), torch.ones(1, 3, dtype=torch.long)
    again = tiny_models["two_tower"].build_model()
    torch.testing.assert_close(model.query_tower(ids, mask), again.query_tower(ids, mask))
    assert not model.training


def test_overrides_set_nested_keys_with_yaml_values() -> None:
    data = apply_overrides({"train": {"lr": 1.0}}, ["train.lr=0.5", "model.encoder=gru", "train.max_dev=null"])
    assert data == {"train": {"lr": 0.5, "max_dev": None}, "model": {"encoder": "gru"}}
    assert load_run_config(None, "nrms", ["train.lr=3e-4"]).train.lr == pytest.approx(3e-4)
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides({}, ["train.lr"])


def test_configs_reject_unknown_keys_bad_values_and_the_wrong_kind(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="learning_rate"):
        load_run_config(None, "nrms", ["train.learning_rate=1"])
    with pytest.raises(ValueError, match="encoder"):
        load_run_config(None, "two_tower", ["model.encoder=lstm"])
    config = tmp_path / "nrms.yaml"
    config.write_text("kind: nrms\n")
    with pytest.raises(ValueError, match="not 'two_tower'"):
        load_run_config(config, "two_tower")


def test_shipped_configs_are_valid() -> None:
    assert load_run_config(Path("configs/nrms.yaml"), "nrms").kind == "nrms"
    assert load_run_config(Path("configs/two_tower.yaml"), "two_tower").kind == "two_tower"


def test_sweep_grid_names_every_combination() -> None:
    points = grid_points({"model.encoder": ["mlp", "gru"], "model.shared_embeddings": [True, False]})
    assert len(points) == 4
    names = {run_name("enc", p) for p in points}
    assert len(names) == 4 and "enc-encoder=mlp-shared_embeddings=False" in names


def test_report_ranks_checkpoints_by_the_chosen_metric(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    base = Checkpoint.load(tiny_checkpoints["two_tower"])
    worse = Checkpoint.load(tiny_checkpoints["two_tower"])
    worse.best_metrics = {k: v / 2 for k, v in base.best_metrics.items()}
    paths = [worse.save(tmp_path / "worse.pt"), base.save(tmp_path / "base.pt")]
    ranked = rank(load_rows(paths), "mrr@10")
    assert [r.path.name for r in ranked] == ["base.pt", "worse.pt"]
    assert ranking_table(ranked, "mrr@10").row_count == 2
    png = plot_curves(base, tmp_path / "curve.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_make_train_writes_training_json_and_reuses_checkpoints(tiny_data: DatasetPaths, tmp_path: Path) -> None:
    nrms, two_tower = tiny_nrms_run(tiny_data, "train.epochs=1"), tiny_two_tower_run(tiny_data, "train.epochs=1")
    report = run_training(nrms, two_tower, checkpoints=tmp_path / "ckpt", reports=tmp_path / "reports")
    written = json.loads((tmp_path / "reports" / "training.json").read_text())
    assert written == json.loads(json.dumps(report))
    assert set(written["nrms"]["dev"]) == NRMS_KEYS
    assert {"popularity", "random"} <= set(written["nrms"]["baselines"])
    assert all(set(v) == NRMS_KEYS for v in written["nrms"]["baselines"].values())
    assert set(written["two_tower"]["dev"]) == RETRIEVAL_KEYS
    assert {"bm25", "bow_cosine"} <= set(written["two_tower"]["baselines"])
    assert all(set(v) == RETRIEVAL_KEYS for v in written["two_tower"]["baselines"].values())
    assert (tmp_path / "reports" / "curves" / "tiny_nrms.png").exists()
    modified = (tmp_path / "ckpt" / "tiny_nrms.pt").stat().st_mtime_ns
    run_training(nrms, two_tower, checkpoints=tmp_path / "ckpt", reports=tmp_path / "reports")
    assert (tmp_path / "ckpt" / "tiny_nrms.pt").stat().st_mtime_ns == modified  # same config: not retrained


def test_nrms_fine_tuning_starts_from_the_given_checkpoint(tiny_data: DatasetPaths, tiny_checkpoints) -> None:
    start = Checkpoint.load(tiny_checkpoints["nrms"])
    run = tiny_nrms_run(tiny_data, f"init_checkpoint={tiny_checkpoints['nrms']}", "train.lr=1e-12", "train.epochs=1")
    tuned = train_nrms(run)
    for name, weights in start.state_dict.items():
        torch.testing.assert_close(tuned.state_dict[name], weights, atol=1e-6, rtol=0)
