"""What the benchmark suite serves: checkpoints, the exported Triton repository, tokenizers, the demo data.

Two sources, chosen by `resolve_inputs`:
- "demo": what `make train` and `make export` wrote (artifacts/checkpoints, artifacts/serving), used
  whenever it is complete;
- "bench-ci": otherwise, for `make bench-ci` on a fresh clone, models of the demo's exact shapes (the
  same configs/*.yaml: dims, heads, token and history lengths) trained for ONE epoch, written under
  artifacts/bench-ci/ by the same entry points (`python -m training train`, `python -m export models`).
  Latency depends on the models' shapes, not on their quality; one epoch still gives real embeddings.
  `make bench` (profile "full") needs the demo models instead: its recall numbers are about them.
  Built once: delete artifacts/bench-ci/ to rebuild them (e.g. after changing configs/*.yaml).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console

import contract
from contract import layout

# One epoch, small dev evaluations: ~3.5 min on this 2-core machine (measured), the demo's shapes.
BENCH_CI_TRAINING = (
    *("--nrms", "train.epochs=1", "--nrms", "train.max_dev=200"),
    *("--two-tower", "train.epochs=1", "--two-tower", "train.max_dev=50"),
)


@dataclass(frozen=True)
class Inputs:
    origin: str  # "demo" or "bench-ci"
    nrms: Path
    two_tower: Path
    serving: Path  # export root: triton-cpu/, tokenizers/
    data_dir: Path

    @classmethod
    def at(cls, origin: str, checkpoints: Path, serving: Path, data_dir: Path = layout.DATA) -> Inputs:
        nrms, two_tower = (layout.checkpoint_file(run, checkpoints) for run in (layout.NRMS_RUN, layout.TWO_TOWER_RUN))
        return cls(origin, nrms, two_tower, Path(serving), data_dir)

    @property
    def triton_repo(self) -> Path:
        return layout.ServingLayout(self.serving).repository("cpu")

    @property
    def tokenizers(self) -> Path:
        return layout.ServingLayout(self.serving).tokenizers

    def missing(self) -> list[Path]:
        """Files the suite needs that do not exist (empty when complete)."""
        needed = [
            self.nrms,
            self.two_tower,
            *(self.triton_repo / model / "config.pbtxt" for model in contract.MODEL_NAMES),
            *(layout.tokenizer_file(self.tokenizers, field) for field in contract.TEXT_FIELDS),
            self.data_dir / layout.MIND_DATA.relative_to(layout.DATA) / "dev" / "behaviors.tsv",
            self.data_dir / layout.MSMARCO_DATA.relative_to(layout.DATA) / "queries.dev.tsv",
        ]
        return [path for path in needed if not path.exists()]

    def to_dict(self) -> dict:
        return {key: str(value) for key, value in asdict(self).items()}


DEMO = Inputs.at("demo", layout.CHECKPOINTS, layout.SERVING.root)
CI_BUILT = Inputs.at("bench-ci", layout.BENCH_CI / "checkpoints", layout.BENCH_CI / "serving")


def resolve_inputs(build_if_missing: bool, console: Console) -> Inputs:
    """The demo inputs when complete; else (when allowed) the bench-ci ones, built if missing."""
    if not DEMO.missing():
        return DEMO
    if not build_if_missing:
        missing = ", ".join(map(str, DEMO.missing()))
        raise FileNotFoundError(f"demo models missing ({missing}): run `make export` (it trains first if needed)")
    if CI_BUILT.missing():
        console.log(f"demo models not found: training one-epoch models of the same shapes under {layout.BENCH_CI}")
        build_ci_inputs(CI_BUILT)
    return CI_BUILT


def build_ci_inputs(inputs: Inputs) -> None:
    """Train (the data is built first when missing) and export, through the project's own command lines."""
    checkpoints, reports = inputs.nrms.parent, layout.BENCH_CI / "reports"
    train = [sys.executable, "-m", "training", "train", "--checkpoints", str(checkpoints), "--reports", str(reports)]
    subprocess.run([*train, *BENCH_CI_TRAINING], check=True)
    export = [
        sys.executable,
        "-m",
        "export",
        "models",
        "--nrms",
        str(inputs.nrms),
        "--two-tower",
        str(inputs.two_tower),
    ]
    subprocess.run([*export, "--out", str(inputs.serving), "--report", str(reports / "export.json")], check=True)
    if inputs.missing():
        raise FileNotFoundError(f"bench-ci inputs still missing after the build: {inputs.missing()}")
