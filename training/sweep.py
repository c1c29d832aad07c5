"""Grid sweeps: train every combination of a few config values and rank the runs in one table.

A sweep file names the model kind, a base config, fixed overrides and a grid:

    kind: two_tower
    base: configs/two_tower.yaml
    set: [train.epochs=4]
    grid:
      model.encoder: [mlp, gru, attention]
      model.shared_embeddings: [true, false]

Runs are named after their grid values and reuse a checkpoint trained with the same config.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console

from training.config import load_run_config
from training.pipeline import checkpoint_path, train_or_reuse
from training.report import Row, ranking_table


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str
    base: Path | None = None
    set: list[str] = Field(default_factory=list)
    grid: dict[str, list] = Field(min_length=1)


def grid_points(grid: dict[str, list]) -> list[dict[str, object]]:
    """Every combination of the grid's values, in file order."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]


def run_name(sweep: str, point: dict[str, object]) -> str:
    return sweep + "".join(f"-{key.rsplit('.', 1)[-1]}={value}" for key, value in point.items())


def run_sweep(path: Path, out: Path, console: Console) -> list[Row]:
    spec = SweepSpec.model_validate(yaml.safe_load(Path(path).read_text()))
    sweep = Path(path).stem
    rows = []
    points = grid_points(spec.grid)
    for number, point in enumerate(points, start=1):
        name = run_name(sweep, point)
        overrides = [
            *spec.set,
            *(f"{key}={json.dumps(value)}" for key, value in point.items()),
        ]  # JSON is YAML
        run = load_run_config(spec.base, spec.kind, [*overrides, f"name={name}"])
        console.rule(f"sweep {sweep}: run {number}/{len(points)} {name}")
        target = checkpoint_path(run, out / sweep)
        rows.append(Row(target, train_or_reuse(run, target, force=False, console=console)))
    console.print(ranking_table(rows, rows[0].checkpoint.run.metric))
    return rows
