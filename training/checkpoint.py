"""Checkpoints: weights plus everything needed to rebuild, evaluate and compare a run without its logs.

Stored with `torch.save` as plain dicts/lists/strings/numbers/tensors, so they load with
`torch.load(weights_only=True)` (no pickled code runs when a checkpoint is opened).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from training.config import NRMSRunConfig, RunConfig, TwoTowerRunConfig
from training.loop import FitResult
from training.models.nrms import NRMS
from training.models.two_tower import TwoTower
from training.text import TokenizerRef

FORMAT_VERSION = 1
RANKING_KEY = "ranking"  # extra[RANKING_KEY]: NRMS's popularity-aware ranking weights (contract.ranking.RankingWeights)


@dataclass
class Checkpoint:
    run: RunConfig
    state_dict: dict[str, torch.Tensor]
    tokenizers: dict[str, TokenizerRef]  # text field ("title", "query", "passage") -> reference
    history: list[dict] = field(default_factory=list)
    best_metrics: dict[str, float] = field(default_factory=dict)
    best_epoch: int = 0
    created_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    extra: dict = field(default_factory=dict)  # e.g. data manifest, wall time

    @classmethod
    def from_fit(
        cls, run: RunConfig, result: FitResult, tokenizers: dict[str, TokenizerRef], **extra: object
    ) -> Checkpoint:
        """The checkpoint of a finished `training.loop.fit`: its best weights, history and metrics."""
        return cls(
            run=run,
            state_dict=result.best_state,
            tokenizers=tokenizers,
            history=result.history,
            best_metrics=result.best_metrics,
            best_epoch=result.best_epoch,
            extra=dict(extra),
        )

    @property
    def kind(self) -> str:
        return self.run.kind

    def build_model(self) -> nn.Module:
        """The model with these weights, in eval mode (pre-trained vectors come from the weights)."""
        model: nn.Module = NRMS(self.run.model) if self.kind == "nrms" else TwoTower(self.run.model)
        model.load_state_dict(self.state_dict)
        return model.eval()

    def parameter_count(self) -> int:
        return sum(t.numel() for t in self.state_dict.values())

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format_version": FORMAT_VERSION,
            "run": self.run.model_dump(mode="json"),
            "state_dict": self.state_dict,
            "tokenizers": {name: ref.to_dict() for name, ref in self.tokenizers.items()},
            "history": self.history,
            "best_metrics": self.best_metrics,
            "best_epoch": self.best_epoch,
            "created_at": self.created_at,
            "extra": self.extra,
        }
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(payload, tmp)
        tmp.replace(path)  # a crash mid-write never leaves a truncated checkpoint behind
        return path

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        version = payload.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"{path}: checkpoint format {version}, this code reads {FORMAT_VERSION}")
        run_cls = NRMSRunConfig if payload["run"]["kind"] == "nrms" else TwoTowerRunConfig
        return cls(
            run=run_cls.model_validate(payload["run"]),
            state_dict=payload["state_dict"],
            tokenizers={name: TokenizerRef.from_dict(ref) for name, ref in payload["tokenizers"].items()},
            history=payload["history"],
            best_metrics=payload["best_metrics"],
            best_epoch=payload["best_epoch"],
            created_at=payload["created_at"],
            extra=payload["extra"],
        )
