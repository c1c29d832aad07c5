"""Per-model Triton benchmark: latency and throughput through tritonclient at several batch sizes and
concurrency levels, with Triton's own split of a request's time into queueing and compute.

    python -m benchmarks.triton_bench --repo artifacts/serving/triton-cpu     # starts tritonserver
    python -m benchmarks.triton_bench --url 127.0.0.1:8001                   # an already running one

Each (model, batch, concurrency) runs closed loop for `--duration-s` after a short warm-up. Triton's
statistics (`get_inference_statistics`) are read before and after, so `queue_ms` (mean time a request
waited for an instance) and `compute_ms` (mean time per execution: input + infer + output) come from
the server itself; `avg_batch` = inferences / executions shows what dynamic batching merged.
Inputs are synthetic with the demo's shapes: titles 16 tokens, queries 10, passages 128, histories 20.
Results: `benchmarks/results/triton.json` and a markdown table next to it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as triton_aio
from rich.console import Console
from rich.table import Table
from tritonclient.grpc import InferInput

import contract
from benchmarks.stats import Histogram
from devstack.triton import TritonServer

TOKENS = {contract.NEWS_ENCODER: 16, contract.QUERY_ENCODER: 10, contract.DOC_ENCODER: 128}
HISTORY = 20
VOCAB = 30522
MODELS = (contract.NEWS_ENCODER, contract.USER_ENCODER, contract.QUERY_ENCODER, contract.DOC_ENCODER)


@dataclass
class TritonScenario:
    model: str
    batch: int
    concurrency: int
    requests: int
    errors: int
    requests_per_s: float
    inferences_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    queue_ms: float
    compute_ms: float
    avg_batch: float


def request_inputs(model: str, batch: int, dim: int, rng: np.random.Generator) -> list[InferInput]:
    if model == contract.USER_ENCODER:
        arrays = {
            contract.HISTORY: rng.normal(size=(batch, HISTORY, dim)).astype(np.float32),
            contract.HISTORY_MASK: np.ones((batch, HISTORY), dtype=np.int64),
        }
    else:
        ids = rng.integers(1000, VOCAB, size=(batch, TOKENS[model]), dtype=np.int64)
        arrays = {contract.INPUT_IDS: ids, contract.ATTENTION_MASK: np.ones_like(ids)}
    inputs = []
    for name, array in arrays.items():
        tensor = InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32 else "INT64")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


async def server_counters(client: triton_aio.InferenceServerClient, model: str) -> dict[str, int]:
    (stats,) = (await client.get_inference_statistics(model, as_json=True))["model_stats"]
    inference = stats["inference_stats"]

    def ns(key: str) -> int:
        return int(inference.get(key, {}).get("ns", 0))

    return {
        "requests": int(inference.get("success", {}).get("count", 0)),
        "queue_ns": ns("queue"),
        "compute_ns": ns("compute_input") + ns("compute_infer") + ns("compute_output"),
        "executions": int(stats.get("execution_count", 0)),
        "inferences": int(stats.get("inference_count", 0)),
    }


async def closed_loop(
    client: triton_aio.InferenceServerClient,
    model: str,
    make: Callable[[], list[InferInput]],
    concurrency: int,
    seconds: float,
) -> tuple[Histogram, int, int]:
    """(latency histogram, completed requests, failed requests) of `concurrency` workers for `seconds`."""
    histogram, done, failed = Histogram(), 0, 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done, failed
        inputs = make()
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                await client.infer(model, inputs, client_timeout=10)
            except Exception:
                failed += 1
                continue
            histogram.record((time.perf_counter() - started) * 1000)
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return histogram, done, failed


async def run_scenario(url: str, model: str, dim: int, batch: int, concurrency: int, seconds: float) -> TritonScenario:
    rng = np.random.default_rng(0)
    async with triton_aio.InferenceServerClient(url) as client:
        await closed_loop(client, model, lambda: request_inputs(model, batch, dim, rng), concurrency, 0.5)  # warm-up
        before = await server_counters(client, model)
        histogram, done, failed = await closed_loop(
            client, model, lambda: request_inputs(model, batch, dim, rng), concurrency, seconds
        )
        after = await server_counters(client, model)
    delta = {key: after[key] - before[key] for key in before}
    return TritonScenario(
        model=model,
        batch=batch,
        concurrency=concurrency,
        requests=done,
        errors=failed,
        requests_per_s=round(done / seconds, 1),
        inferences_per_s=round(done * batch / seconds, 1),
        p50_ms=round(histogram.percentile(50), 3),
        p90_ms=round(histogram.percentile(90), 3),
        p99_ms=round(histogram.percentile(99), 3),
        queue_ms=round(delta["queue_ns"] / max(delta["requests"], 1) / 1e6, 3),
        compute_ms=round(delta["compute_ns"] / max(delta["executions"], 1) / 1e6, 3),
        avg_batch=round(delta["inferences"] / max(delta["executions"], 1), 2),
    )


async def model_dims(url: str, models: tuple[str, ...]) -> dict[str, int]:
    async with triton_aio.InferenceServerClient(url) as client:
        dims = {}
        for model in models:
            metadata = await client.get_model_metadata(model, as_json=True)
            if model == contract.USER_ENCODER:
                (history,) = (i for i in metadata["inputs"] if i["name"] == contract.HISTORY)
                dims[model] = int(history["shape"][-1])
            else:
                dims[model] = 0
        return dims


async def run_all(
    url: str, models: tuple[str, ...], batches: list[int], levels: list[int], seconds: float, console: Console
) -> list[TritonScenario]:
    dims = await model_dims(url, models)
    results = []
    for model in models:
        for batch in batches:
            for concurrency in levels:
                result = await run_scenario(url, model, dims[model], batch, concurrency, seconds)
                console.log(
                    f"{model} batch {batch} c{concurrency}: p50 {result.p50_ms} ms, "
                    f"{result.inferences_per_s} inferences/s, avg batch {result.avg_batch}"
                )
                results.append(result)
    return results


def markdown(results: list[TritonScenario]) -> str:
    header = (
        "| model | batch | concurrency | p50 ms | p99 ms | req/s | inferences/s | queue ms | compute ms | avg batch |"
    )
    lines = [header, "|" + "---|" * 10]
    for r in results:
        lines.append(
            f"| {r.model} | {r.batch} | {r.concurrency} | {r.p50_ms} | {r.p99_ms} | {r.requests_per_s} | "
            f"{r.inferences_per_s} | {r.queue_ms} | {r.compute_ms} | {r.avg_batch} |"
        )
    return "\n".join(lines) + "\n"


def table(results: list[TritonScenario]) -> Table:
    view = Table(title="Triton per model (closed loop through tritonclient.grpc.aio)")
    for column in ("model", "batch", "c", "p50 ms", "p99 ms", "inf/s", "queue ms", "compute ms", "avg batch"):
        view.add_column(column, justify="left" if column == "model" else "right")
    for r in results:
        values = (r.batch, r.concurrency, r.p50_ms, r.p99_ms, r.inferences_per_s, r.queue_ms, r.compute_ms, r.avg_batch)
        view.add_row(r.model, *map(str, values))
    return view


def csv_ints(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.triton_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="host:port of a running Triton's gRPC endpoint")
    where.add_argument("--repo", type=Path, help="a model repository to serve with the bundled tritonserver")
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--batches", type=csv_ints, default=[1, 8, 32], help="default 1,8,32")
    parser.add_argument("--concurrency", type=csv_ints, default=[1, 4, 16], help="default 1,4,16")
    parser.add_argument("--duration-s", type=float, default=3.0, help="per scenario (default 3)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/triton.json"))
    args = parser.parse_args(argv)
    console = Console()
    models = tuple(args.models)

    def measure(url: str) -> list[TritonScenario]:
        return asyncio.run(run_all(url, models, args.batches, args.concurrency, args.duration_s, console))

    if args.url:
        results = measure(args.url)
    else:
        with TritonServer(args.repo, models, args.out.parent / "triton-bench.log") as server:
            results = measure(server.grpc_url)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"scenarios": [asdict(r) for r in results]}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(results))
    console.print(table(results))
    console.log(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
