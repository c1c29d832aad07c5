"""Where every generated file lives: the one artifact layout training, export, the dev stack and benchmarks share.

Paths are relative to the working directory (the repository root for `make` targets). Commands take
another root on their command line; these are the defaults.

    artifacts/
      data/mind, data/msmarco        offline data sets (`python -m training data`)
      checkpoints/<run>.pt           trained models (`python -m training train`)
      reports/                       training.json, export.json, curves
      serving/onnx, serving/tokenizers/<field>.json, serving/triton-<profile>/,
      serving/ranking.json           (`python -m export models`)
      stack/                         the local stack's state and logs (`python -m devstack up`)
      logs/                          logs of servers started by hand
      feedback/<YYYY-MM-DD>/         the gateway's feedback log: MIND behaviors.tsv + news.tsv per UTC day
      bench/, bench-ci/              benchmark state and the CI benchmark's own models
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ARTIFACTS = Path("artifacts")
DATA = ARTIFACTS / "data"
MIND_DATA = DATA / "mind"
MSMARCO_DATA = DATA / "msmarco"
CHECKPOINTS = ARTIFACTS / "checkpoints"
REPORTS = ARTIFACTS / "reports"
TRAINING_REPORT = REPORTS / "training.json"
EXPORT_REPORT = REPORTS / "export.json"
STACK = ARTIFACTS / "stack"
LOGS = ARTIFACTS / "logs"
FEEDBACK = ARTIFACTS / "feedback"
BENCH = ARTIFACTS / "bench"
BENCH_CI = ARTIFACTS / "bench-ci"

# Default run names: a run's checkpoint is `<checkpoints>/<run name>.pt`.
NRMS_RUN = "nrms"
TWO_TOWER_RUN = "two_tower"

Profile = Literal["cpu", "gpu"]
PROFILES: tuple[Profile, ...] = ("cpu", "gpu")


@dataclass(frozen=True)
class ServingLayout:
    """What `python -m export models` writes under `root` and the servers read."""

    root: Path = ARTIFACTS / "serving"

    @property
    def onnx(self) -> Path:
        return self.root / "onnx"

    @property
    def tokenizers(self) -> Path:
        return self.root / "tokenizers"

    @property
    def ranking(self) -> Path:
        """The popularity-aware ranking's weights (`contract.ranking.RankingWeights` as JSON)."""
        return self.root / "ranking.json"

    def repository(self, profile: Profile) -> Path:
        """The Triton model repository of `profile` (cpu: python backend; gpu: onnxruntime backend)."""
        return self.root / f"triton-{profile}"


SERVING = ServingLayout()


def checkpoint_file(run_name: str, directory: Path = CHECKPOINTS) -> Path:
    """The checkpoint a training run named `run_name` writes into `directory`."""
    return Path(directory) / f"{run_name}.pt"


def tokenizer_file(tokenizer_dir: Path, text_field: str) -> Path:
    """The tokenizer definition of `text_field` (a `contract.TEXT_FIELDS` value) inside `tokenizer_dir`."""
    return Path(tokenizer_dir) / f"{text_field}.json"
