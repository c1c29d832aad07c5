"""Recommend throughput of a 1-worker and an N-worker gateway (`gateway.workers`), measured in one run.

    python -m benchmarks.workers [--workers 2] [--concurrency 16] [--channels 16] [--rounds 4] [--window-s 5]

Starts the local stack (Milvus, Triton; no LLM) with its usual 1-worker gateway in a fresh state folder, indexes the
demo catalog through it, then starts an N-worker gateway on the same Triton and Milvus. Once both item caches are
warm, the two gateways are measured in alternating closed-loop windows (benchmarks.alternation: the other one idles
meanwhile), each over `--channels` connections of its own so that an N-worker gateway's connections spread over its
workers (one connection reaches one worker). Prints each side's QPS and latency, and writes them as JSON with --json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path

from benchmarks.alternation import Side, alternate
from benchmarks.loadgen import GatewayClient, LoadConfig
from benchmarks.suite import wait_for_cache_warm
from contract import layout
from devstack.local import HOST, LocalStack, StackConfig
from devstack.process import ManagedProcess, free_port
from export.catalog import index_catalog
from server.transport import READY_LINE


def start_workers_gateway(stack: LocalStack, workers: int, log_path: Path) -> tuple[ManagedProcess, str, str]:
    """An N-worker gateway beside the stack's own; (process, address, metrics URL) once every worker serves."""
    port, metrics_port = free_port(HOST), free_port(HOST)
    env = {
        **os.environ,
        **stack.gateway_environment(port),
        "RECSTACK_GATEWAY__METRICS_PORT": str(metrics_port),
        "RECSTACK_GATEWAY__WORKERS": str(workers),
    }
    process = ManagedProcess(
        name=f"gateway-{workers}-workers",
        argv=[sys.executable, "-m", "server"],
        log_path=log_path,
        ready=lambda: READY_LINE in log_path.read_text(errors="replace"),  # printed once all workers serve
        env=env,
        startup_timeout_s=300.0,
    )
    process.start()
    return process, f"{HOST}:{port}", f"http://{HOST}:{metrics_port}/metrics"


async def measure(targets: dict[str, str], args: argparse.Namespace) -> dict[str, dict]:
    async with AsyncExitStack() as exits:
        sides = []
        for name, target in targets.items():
            config = LoadConfig(
                target=target,
                concurrency=args.concurrency,
                channels=args.channels,
                duration_s=args.window_s,
                warmup_s=args.warmup_s,
                data_dir=args.data_dir,
            )
            client = await exits.enter_async_context(GatewayClient.connect(config))
            sides.append(Side.create(name, "gateway", config, client, config.request_factory()))
        results = await alternate(sides, args.rounds)
    return {name: result.to_dict() for name, result in results.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.workers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="workers of the second gateway (%(default)s)")
    parser.add_argument("--concurrency", type=int, default=16, help="closed-loop clients (%(default)s)")
    parser.add_argument("--channels", type=int, default=16, help="connections per gateway (%(default)s)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds (%(default)s)")
    parser.add_argument("--window-s", type=float, default=5.0, help="measured seconds per window (%(default)s)")
    parser.add_argument("--warmup-s", type=float, default=1.0, help="unmeasured seconds per window (%(default)s)")
    parser.add_argument("--data-dir", type=Path, default=layout.DATA, help="demo data (%(default)s)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="recstack-workers-") as state:
        config = StackConfig(
            state_dir=Path(state),
            gateway_port=0,
            metrics_port=0,
            llm=False,
            gateway_env={"RECSTACK_MILVUS__WRITE_TIMEOUT_S": "60"},  # indexing on a busy shared machine
        )
        with LocalStack(config) as stack:
            index_catalog(stack.gateway_address, args.data_dir)
            process, address, metrics_url = start_workers_gateway(stack, args.workers, config.logs / "workers.log")
            with process:
                wait_for_cache_warm(stack.metrics_url)
                wait_for_cache_warm(metrics_url)
                targets = {"1 worker": stack.gateway_address, f"{args.workers} workers": address}
                results = asyncio.run(measure(targets, args))
    for name, result in results.items():
        latency = f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms"
        print(f"{name}: {result['qps']} req/s, {latency}, errors {result['errors']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
