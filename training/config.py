"""Run configurations: YAML files in configs/, validated here, overridable from the command line.

A run config holds everything that defines a training run (model shape, optimisation, data), and
is stored verbatim in the checkpoint, so any run can be rebuilt and compared without its logs.
Overrides use dotted keys with YAML values: `--set train.lr=3e-4 --set model.encoder=gru`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from contract import layout


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainConfig(Strict):
    """Optimisation shared by both models."""

    epochs: int = Field(5, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Linear warm-up share of all steps, then cosine.")
    grad_clip: float = Field(1.0, gt=0)
    patience: int = Field(2, ge=1, description="Stop after this many epochs without a better dev metric.")
    seed: int = 0
    threads: int = Field(2, ge=1, description="torch intra-op threads.")
    max_dev: int | None = Field(None, ge=1, description="Evaluate on at most this many dev items (tests).")


class NRMSModelConfig(Strict):
    vocab_size: int = 30522
    word_dim: int = 384
    heads: int = 16
    head_dim: int = 16
    attention_hidden: int = 200
    dropout: float = Field(0.2, ge=0, lt=1)
    pretrained_embeddings: bool = True
    freeze_embeddings: bool = True
    max_title_tokens: int = Field(32, ge=3)
    max_history: int = Field(50, ge=1)

    @property
    def news_dim(self) -> int:
        return self.heads * self.head_dim


class TwoTowerModelConfig(Strict):
    encoder: Literal["mlp", "gru", "attention"] = "attention"
    shared_embeddings: bool = True
    vocab_size: int = 30522
    word_dim: int = 384
    hidden_dim: int = 256
    heads: int = 8
    idf_pooling: bool = Field(True, description="Start word pooling weights at the collection's IDF (else 1).")
    dropout: float = Field(0.1, ge=0, lt=1)
    pretrained_embeddings: bool = True
    freeze_embeddings: bool = False
    max_query_tokens: int = Field(32, ge=3)
    max_passage_tokens: int = Field(128, ge=3)


class NRMSRunConfig(Strict):
    kind: Literal["nrms"] = "nrms"
    name: str = layout.NRMS_RUN
    data_dir: Path = layout.MIND_DATA
    model: NRMSModelConfig = NRMSModelConfig()
    train: TrainConfig = TrainConfig()
    negatives: int = Field(4, ge=1, description="K sampled negatives per positive (same impression).")
    positives_per_impression: int | None = Field(
        None, ge=1, description="Clicks of an impression used per epoch (redrawn each epoch); None = all."
    )
    ranker_holdout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Latest fraction of train impressions NRMS never sees; the popularity-aware ranker fits there.",
    )
    init_checkpoint: Path | None = Field(
        None, description="Start from this NRMS checkpoint's weights (fine-tuning, e.g. on a feedback log)."
    )
    metric: str = "auc"


class TwoTowerRunConfig(Strict):
    kind: Literal["two_tower"] = "two_tower"
    name: str = layout.TWO_TOWER_RUN
    data_dir: Path = layout.MSMARCO_DATA
    model: TwoTowerModelConfig = TwoTowerModelConfig()
    train: TrainConfig = TrainConfig(lr=5e-4, batch_size=128, epochs=8, patience=3)
    temperature: float = Field(0.05, gt=0, description="InfoNCE temperature.")
    hard_negatives: int = Field(0, ge=0, description="BM25-mined negatives per query, added to the batch.")
    metric: str = "mrr@10"


RunConfig = NRMSRunConfig | TwoTowerRunConfig


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys (`train.lr=3e-4`) in a nested dict; values are parsed as YAML scalars."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r}: expected key=value, e.g. train.lr=3e-4")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        node[leaf] = yaml.safe_load(raw)
    return data


def load_run_config(path: Path | None, kind: str, overrides: list[str] | None = None) -> RunConfig:
    """A validated run config of `kind` from an optional YAML file plus overrides."""
    data = (yaml.safe_load(Path(path).read_text()) or {}) if path else {}
    data = apply_overrides(data, overrides or [])
    data.setdefault("kind", kind)
    if data["kind"] != kind:
        raise ValueError(f"{path}: config is for {data['kind']!r}, not {kind!r}")
    model = NRMSRunConfig if kind == "nrms" else TwoTowerRunConfig
    return model.model_validate(data)
