"""Command line: `python -m training {data,train,report,sweep} --help`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler

from contract import layout
from training.config import load_run_config
from training.pipeline import run_training

CONFIGS = Path("configs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="build the offline MIND-format and MS MARCO-format sets")
    data.add_argument("--out", type=Path, default=layout.DATA, help="output directory (%(default)s)")
    data.add_argument("--seed", type=int, default=0, help="generator seed (%(default)s)")

    train = commands.add_parser(
        "train",
        help="train NRMS and the two-tower (skipped when unchanged) and write reports/training.json",
        description="Overrides: dotted keys with YAML values, e.g. --nrms train.lr=3e-4 --two-tower model.encoder=gru",
    )
    train.add_argument("--nrms-config", type=Path, default=CONFIGS / "nrms.yaml")
    train.add_argument("--two-tower-config", type=Path, default=CONFIGS / "two_tower.yaml")
    train.add_argument("--nrms", action="append", default=[], metavar="KEY=VALUE", help="NRMS config override")
    train.add_argument("--two-tower", action="append", default=[], metavar="KEY=VALUE", help="two-tower override")
    train.add_argument("--force", action="store_true", help="retrain even when a checkpoint matches the config")
    train.add_argument(
        "--zero-shot",
        action="store_true",
        help="also score zero-shot MiniLM (encodes the whole collection once: ~10 min on 2 cores, then cached)",
    )
    train.add_argument("--checkpoints", type=Path, default=layout.CHECKPOINTS)
    train.add_argument("--reports", type=Path, default=layout.REPORTS)

    report = commands.add_parser("report", help="rank checkpoints by a dev metric and plot their curves")
    report.add_argument("paths", nargs="*", type=Path, help="checkpoints or directories (default: %(default)s)")
    report.add_argument("--kind", choices=["nrms", "two_tower"], help="only this model kind")
    report.add_argument("--metric", help="rank by this metric (default: auc for nrms, mrr@10 for two_tower)")
    report.add_argument("--curves", type=Path, default=layout.REPORTS / "curves", help="where PNG curves go")

    sweep = commands.add_parser("sweep", help="train every config of a grid and rank the results")
    sweep.add_argument("grid", type=Path, help="sweep file, e.g. configs/sweeps/two_tower_encoders.yaml")
    sweep.add_argument("--out", type=Path, default=layout.CHECKPOINTS / "sweeps")

    args = parser.parse_args(argv)
    console = Console()
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console)])
    logging.getLogger("bm25s").setLevel(logging.WARNING)  # its DEBUG lines would fill the training log
    return COMMANDS[args.command](args, console)


def cmd_data(args: argparse.Namespace, console: Console) -> int:
    from training.data.build import build_datasets

    paths = build_datasets(args.out, seed=args.seed)
    console.log(f"datasets ready: {paths}")
    return 0


def cmd_train(args: argparse.Namespace, console: Console) -> int:
    from training.data.build import build_datasets

    build_datasets(layout.DATA)
    nrms = load_run_config(args.nrms_config, "nrms", args.nrms)
    two_tower = load_run_config(args.two_tower_config, "two_tower", args.two_tower)
    run_training(
        nrms,
        two_tower,
        force=args.force,
        zero_shot=args.zero_shot,
        checkpoints=args.checkpoints,
        reports=args.reports,
        console=console,
    )
    return 0


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    from training.report import load_rows, plot_curves, ranking_table

    paths = expand_checkpoints(args.paths or [layout.CHECKPOINTS])
    rows = load_rows(paths, args.kind)
    if not rows:
        console.print(f"[red]no checkpoints found in {', '.join(map(str, args.paths or [layout.CHECKPOINTS]))}")
        return 1
    for kind in sorted({r.checkpoint.kind for r in rows}):
        kind_rows = [r for r in rows if r.checkpoint.kind == kind]
        metric = args.metric or kind_rows[0].checkpoint.run.metric
        console.print(ranking_table(kind_rows, metric))
    for row in rows:
        plot_curves(row.checkpoint, args.curves / f"{row.checkpoint.run.name}.png")
    console.log(f"curves in {args.curves}")
    return 0


def cmd_sweep(args: argparse.Namespace, console: Console) -> int:
    from training.sweep import run_sweep

    run_sweep(args.grid, args.out, console)
    return 0


def expand_checkpoints(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        found.extend(sorted(path.rglob("*.pt")) if path.is_dir() else [path])
    return found


COMMANDS = {"data": cmd_data, "train": cmd_train, "report": cmd_report, "sweep": cmd_sweep}

if __name__ == "__main__":
    sys.exit(main())
