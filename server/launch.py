"""`python -m server`'s command line: one gateway in this process, or a supervisor of `gateway.workers` of them.

A supervisor never imports the gateway itself (`server.app`: Triton, Milvus, numpy): it only starts and watches
processes, so it stays small.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from server.config import Settings, load_settings
from server.observability import configure_logging
from server.transport import InsecureExposure

TOKENIZERS_PARALLELISM = "TOKENIZERS_PARALLELISM"  # the tokenizers library's switch for its thread pool


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="The recstack gRPC gateway. Settings: YAML file < RECSTACK_* environment variables.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="YAML settings file, e.g. configs/production.yaml (default: none, built-in defaults)",
    )
    parser.add_argument("--port", type=int, help="override gateway.port (0 = any free port)")
    parser.add_argument(
        "--log-format",
        choices=["json", "console"],
        default="json",
        help="log lines as JSON or for a terminal (%(default)s)",
    )
    # Set by the supervisor on the processes it starts; never by hand.
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    port_override = {"gateway": {"port": args.port}} if args.port is not None else {}
    settings = load_settings(args.config, **port_override)
    configure_logging(json=args.log_format == "json")
    try:
        if args.worker is None and settings.gateway.worker_processes > 1:
            from server.workers import supervise

            raise SystemExit(supervise(settings, sys.argv[1:] if argv is None else argv))
        serve_here(settings, args.worker)
    except InsecureExposure as error:
        raise SystemExit(f"gateway refused to start: {error}") from None


def serve_here(settings: Settings, worker: int | None) -> None:
    """Run one gateway in this process (a supervisor's worker when `worker` is set) until it is told to stop."""
    # The request path tokenizes a few texts at a time (a Search's query; titles of unknown history items),
    # where the tokenizers library's thread pool costs more CPU than it saves: encode_batch of 2 / 4 queries
    # took 226 / 313 us of CPU with it and 97 / 126 us without (benchmarks/README.md). Set to keep it.
    os.environ.setdefault(TOKENIZERS_PARALLELISM, "false")
    import uvloop

    from server.app import serve

    uvloop.run(serve(settings, worker))
