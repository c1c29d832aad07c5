"""Command line: `python -m export {models,catalog} --help`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from contract import channel, layout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    models = commands.add_parser("models", help="checkpoints -> ONNX (parity-checked) -> Triton repositories")
    models.add_argument("--nrms", type=Path, default=layout.checkpoint_file(layout.NRMS_RUN))
    models.add_argument("--two-tower", type=Path, default=layout.checkpoint_file(layout.TWO_TOWER_RUN))
    models.add_argument("--out", type=Path, default=layout.SERVING.root, help="serving root (%(default)s)")
    models.add_argument("--report", type=Path, default=layout.EXPORT_REPORT)
    catalog = commands.add_parser("catalog", help="upsert the demo news and passages through a running gateway")
    catalog.add_argument("--target", default="127.0.0.1:50051", help="gateway address (%(default)s)")
    catalog.add_argument("--data", type=Path, default=layout.DATA, help="data root (%(default)s)")
    catalog.add_argument("--batch", type=int, default=256, help="items per UpsertItems call (%(default)s)")
    channel.add_arguments(catalog)
    args = parser.parse_args(argv)
    console = Console()
    if args.command == "models":
        from export.models import export_all

        for checkpoint in (args.nrms, args.two_tower):
            if not checkpoint.exists():
                console.print(f"[red]{checkpoint} not found: run `make train` first")
                return 1
        report = export_all(args.nrms, args.two_tower, layout.ServingLayout(args.out), args.report)
        console.print(export_table(report))
        console.log(f"wrote {args.report}")
    else:
        from export.catalog import index_catalog

        security = channel.from_arguments(catalog, args)
        counts = index_catalog(args.target, args.data, args.batch, security=security)
        console.log(f"indexed {counts.news} news articles and {counts.passages} passages via {args.target}")
    return 0


def export_table(report: dict) -> Table:
    table = Table(title="exported encoders (ONNX Runtime vs PyTorch)")
    for column in ("model", "version", "max |diff|", "padding |diff|", "inputs", "MB"):
        table.add_column(column)
    for name, model in report["models"].items():
        inputs = ", ".join(t["name"] for t in model["inputs"])
        table.add_row(
            name,
            str(report["versions"][name]),
            f"{model['max_abs_diff']:.1e}",
            f"{model['padding_max_abs_diff']:.1e}",
            inputs,
            f"{model['bytes'] / 2**20:.1f}",
        )
    return table


if __name__ == "__main__":
    sys.exit(main())
