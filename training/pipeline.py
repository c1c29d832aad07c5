"""`make train`: data if missing, both models if their config changed, baselines, one report.

Writes `artifacts/reports/training.json`:
`{"nrms": {"dev": {...}, "ranked": {"dev": {...}}, "baselines": {"popularity": {...}, "random": {...}}, ...},
  "two_tower": {"dev": {...}, "baselines": {"bm25": {...}, "bow_cosine": {...}, ...}, ...}}`
with every model scored on exactly the same dev impressions / queries as its baselines.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from contract import layout
from training.baselines import (
    BagOfWordsRetriever,
    BM25Retriever,
    ClickThroughRanker,
    MiniLMRetriever,
    PopularityRanker,
    RandomRanker,
    evaluate_recommender,
    evaluate_retriever,
)
from training.checkpoint import RANKING_KEY, Checkpoint
from training.config import NRMSRunConfig, RunConfig, TwoTowerRunConfig
from training.metrics import mind_metrics
from training.ranking import fit_popularity_aware
from training.report import plot_curves
from training.train_nrms import evaluable, load_mind, train_nrms
from training.train_two_tower import dev_subset, load_retrieval, train_two_tower

log = logging.getLogger(__name__)


def checkpoint_path(run: RunConfig, directory: Path = layout.CHECKPOINTS) -> Path:
    return layout.checkpoint_file(run.name, directory)


def train_or_reuse(run: RunConfig, path: Path, force: bool, console: Console) -> Checkpoint:
    """The checkpoint at `path` when it was trained with exactly `run`, else a freshly trained one."""
    if path.exists() and not force:
        existing = Checkpoint.load(path)
        if existing.run == run:
            console.log(f"{run.name}: up to date ({path}), not retraining")
            return existing
        console.log(f"{run.name}: config changed since {path} was trained, retraining")
    started = time.perf_counter()
    checkpoint = train_nrms(run) if run.kind == "nrms" else train_two_tower(run)
    checkpoint.extra["train_seconds"] = round(time.perf_counter() - started, 1)
    checkpoint.save(path)
    console.log(f"{run.name}: saved {path} ({checkpoint.extra['train_seconds']}s)")
    return checkpoint


def nrms_section(run: NRMSRunConfig, checkpoint: Checkpoint, path: Path) -> dict:
    """NRMS, its baselines and (with a `ranker_holdout`) the served popularity-aware ranking, on the same dev
    impressions; the ranking's weights are stored in the checkpoint at `path` (export reads them there)."""
    train, dev = load_mind(run.data_dir)
    impressions = evaluable(dev.impressions, run.train.max_dev)
    clicks = PopularityRanker.from_impressions(train.impressions, impressions)
    ranked = {}
    if run.ranker_holdout > 0:
        weights, scores = fit_popularity_aware(run, checkpoint, train, dev, impressions)
        ranked = {"ranked": {"dev": mind_metrics([imp.labels for imp in impressions], scores)}}
        if checkpoint.extra.get(RANKING_KEY) != asdict(weights):
            checkpoint.extra[RANKING_KEY] = asdict(weights)
            checkpoint.save(path)
    return {
        "dev": checkpoint.best_metrics,
        **ranked,
        "baselines": {
            # "popularity" is the stronger of the two popularity rankers on this data (see README).
            "popularity": evaluate_recommender(ClickThroughRanker.from_impressions(train.impressions), impressions),
            "popularity_clicks": evaluate_recommender(clicks, impressions),
            "random": evaluate_recommender(RandomRanker(run.train.seed), impressions),
        },
        **_run_summary(checkpoint),
    }


def two_tower_section(run: TwoTowerRunConfig, checkpoint: Checkpoint, zero_shot: bool, cache: Path) -> dict:
    data = load_retrieval(run.data_dir)
    dev = dev_subset(data.dev, run.train.max_dev)
    retrievers = {"bm25": BM25Retriever(), "bow_cosine": BagOfWordsRetriever()}
    if zero_shot:
        retrievers["minilm_zero_shot"] = MiniLMRetriever(cache_dir=cache)
    return {
        "dev": checkpoint.best_metrics,
        "baselines": {name: evaluate_retriever(r, data.collection, dev) for name, r in retrievers.items()},
        **_run_summary(checkpoint),
    }


def _run_summary(checkpoint: Checkpoint) -> dict:
    return {
        "best_epoch": checkpoint.best_epoch,
        "epochs_run": len(checkpoint.history),
        "parameters": checkpoint.parameter_count(),
        "created_at": checkpoint.created_at,
        **checkpoint.extra,
    }


def run_training(
    nrms: NRMSRunConfig,
    two_tower: TwoTowerRunConfig,
    *,
    force: bool = False,
    zero_shot: bool = False,
    checkpoints: Path = layout.CHECKPOINTS,
    reports: Path = layout.REPORTS,
    console: Console | None = None,
) -> dict:
    """Train (or reuse) both models, score baselines on the same dev data, write training.json and curves."""
    console = console or Console()
    report: dict = {}
    nrms_ckpt = train_or_reuse(nrms, checkpoint_path(nrms, checkpoints), force, console)
    nrms_path = checkpoint_path(nrms, checkpoints)
    report["nrms"] = {**nrms_section(nrms, nrms_ckpt, nrms_path), "checkpoint": str(nrms_path)}
    tower_ckpt = train_or_reuse(two_tower, checkpoint_path(two_tower, checkpoints), force, console)
    report["two_tower"] = {
        **two_tower_section(two_tower, tower_ckpt, zero_shot, checkpoints / "cache"),
        "checkpoint": str(checkpoint_path(two_tower, checkpoints)),
    }
    for checkpoint in (nrms_ckpt, tower_ckpt):
        plot_curves(checkpoint, reports / "curves" / f"{checkpoint.run.name}.png")
    reports.mkdir(parents=True, exist_ok=True)
    (reports / layout.TRAINING_REPORT.name).write_text(json.dumps(report, indent=2) + "\n")
    for table in results_tables(report):
        console.print(table)
    console.log(f"wrote {reports / 'training.json'}")
    return report


TABLE_METRICS = {
    "nrms": ("auc", "mrr", "ndcg@5", "ndcg@10"),
    "two_tower": ("mrr@10", "recall@10", "ndcg@10", "map"),
}


def results_tables(report: dict) -> list[Table]:
    """Per task: the model and its baselines on the same dev split, one row per system."""
    tables = []
    for task, metrics in TABLE_METRICS.items():
        if task not in report:
            continue
        table = Table(title=f"{task}: dev split")
        table.add_column("system")
        for metric in metrics:
            table.add_column(metric, justify="right")
        ranked = {f"{task} + popularity/recency": report[task]["ranked"]["dev"]} if "ranked" in report[task] else {}
        for system, values in {task: report[task]["dev"], **ranked, **report[task]["baselines"]}.items():
            table.add_row(system, *(f"{values[m]:.4f}" for m in metrics))
        tables.append(table)
    return tables
