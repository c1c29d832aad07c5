"""Compare checkpoints: a ranked table of their dev metrics, size and date, and training curves as PNG."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from rich.table import Table

from training.checkpoint import Checkpoint


@dataclass(frozen=True)
class Row:
    path: Path
    checkpoint: Checkpoint

    @property
    def size_mb(self) -> float:
        return self.path.stat().st_size / 2**20


def load_rows(paths: list[Path], kind: str | None = None) -> list[Row]:
    rows = [Row(p, Checkpoint.load(p)) for p in paths]
    return [r for r in rows if kind is None or r.checkpoint.kind == kind]


def rank(rows: list[Row], metric: str) -> list[Row]:
    """Best first by `metric` (higher is better); checkpoints without it go last."""
    missing = float("-inf")
    return sorted(rows, key=lambda r: r.checkpoint.best_metrics.get(metric, missing), reverse=True)


def ranking_table(rows: list[Row], metric: str) -> Table:
    metrics = sorted({m for r in rows for m in r.checkpoint.best_metrics}, key=lambda m: (m != metric, m))
    table = Table(title=f"checkpoints ranked by {metric}")
    for column in ["#", "run", "kind", *metrics, "best epoch", "params", "size MB", "created"]:
        table.add_column(column, justify="left" if column in ("run", "kind", "created") else "right")
    for place, row in enumerate(rank(rows, metric), start=1):
        ckpt = row.checkpoint
        values = [f"{ckpt.best_metrics[m]:.4f}" if m in ckpt.best_metrics else "-" for m in metrics]
        table.add_row(
            str(place),
            ckpt.run.name,
            ckpt.kind,
            *values,
            str(ckpt.best_epoch),
            f"{ckpt.parameter_count() / 1e6:.1f}M",
            f"{row.size_mb:.1f}",
            ckpt.created_at.replace("T", " ")[:16],
        )
    return table


def plot_curves(checkpoint: Checkpoint, path: Path) -> Path:
    """Training loss and every dev metric per epoch, the best epoch marked."""
    epochs = [h["epoch"] for h in checkpoint.history]
    fig, (loss_ax, dev_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    loss_ax.plot(epochs, [h["train_loss"] for h in checkpoint.history], marker="o")
    loss_ax.set(title=f"{checkpoint.run.name}: train loss", xlabel="epoch")
    for metric in checkpoint.history[0]["dev"] if checkpoint.history else []:
        dev_ax.plot(epochs, [h["dev"][metric] for h in checkpoint.history], marker="o", label=metric)
    dev_ax.axvline(checkpoint.best_epoch, color="grey", linestyle="--", linewidth=1, label="best epoch")
    dev_ax.set(title="dev metrics", xlabel="epoch")
    dev_ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
