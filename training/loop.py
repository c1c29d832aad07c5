"""The training loop both models share: AdamW, warm-up + cosine schedule, gradient clipping,
per-epoch dev evaluation, early stopping on a dev metric, and the best weights kept in memory.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from training.config import TrainConfig

log = logging.getLogger(__name__)

LossFn = Callable[[object], torch.Tensor]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def warmup_cosine(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up to 1, then cosine decay to 0 at `total_steps`."""
    warmup = max(1, int(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)  # one entry per epoch
    best_metrics: dict[str, float] = field(default_factory=dict)
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    stopped_early: bool = False


def fit(
    model: nn.Module,
    *,
    epoch_batches: Callable[[int], Iterable[object]],
    steps_per_epoch: int,
    loss_fn: LossFn,
    evaluate: Callable[[], dict[str, float]],
    config: TrainConfig,
    metric: str,
    label: str,
) -> FitResult:
    """Train `model` in place; afterwards it holds the weights of its best dev epoch.

    `epoch_batches(epoch)` yields that epoch's batches, `loss_fn(batch)` returns the batch loss and
    `evaluate()` returns dev metrics, which must include `metric` (higher is better).
    """
    torch.set_num_threads(config.threads)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, config.warmup_ratio))
    result = FitResult()
    best = -math.inf
    with _progress() as progress:
        task = progress.add_task(label, total=total_steps, info="")
        for epoch in range(1, config.epochs + 1):
            started = time.perf_counter()
            model.train()
            losses = []
            for batch in epoch_batches(epoch):
                loss = loss_fn(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                optimizer.step()
                scheduler.step()
                losses.append(loss.item())
                progress.update(task, advance=1, info=f"epoch {epoch} loss {np.mean(losses[-50:]):.4f}")
            model.eval()
            with torch.no_grad():
                metrics = evaluate()
            if metric not in metrics:
                raise KeyError(f"evaluate() returned {sorted(metrics)}, no early-stopping metric {metric!r}")
            entry = {
                "epoch": epoch,
                "train_loss": float(np.mean(losses)) if losses else float("nan"),
                "lr": scheduler.get_last_lr()[0],
                "seconds": round(time.perf_counter() - started, 2),
                "dev": metrics,
            }
            result.history.append(entry)
            progress.console.log(_epoch_line(label, entry))
            if metrics[metric] > best:
                best, result.best_epoch, result.best_metrics = metrics[metric], epoch, dict(metrics)
                result.best_state = copy.deepcopy(model.state_dict())
            elif epoch - result.best_epoch >= config.patience:
                result.stopped_early = True
                progress.console.log(f"{label}: early stop, no better {metric} for {config.patience} epochs")
                break
    model.load_state_dict(result.best_state)
    return result


def _epoch_line(label: str, entry: dict) -> str:
    dev = " ".join(f"{k}={v:.4f}" for k, v in entry["dev"].items())
    return f"{label} epoch {entry['epoch']}: loss={entry['train_loss']:.4f} {dev} ({entry['seconds']}s)"


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        transient=False,
    )
