"""Prometheus metrics, per-request stage timings and structured (JSON) logs for the gateway.

Metric names:
- `recstack_rpc_seconds{method, code}`: latency of every RPC by its final gRPC status code;
- `recstack_stage_seconds{stage}`: time per pipeline stage (e.g. `triton.user_encoder`, `milvus.search`);
- `recstack_inflight_rpcs{method}`: RPCs being served now;
- `recstack_item_cache_total{result}`: catalog lookups served from memory (`hit`) or Milvus (`miss`), and entries
  re-read from Milvus in the background before they expired (`refreshed`; see `server.item_cache`);
- `recstack_item_cache_warm`: 1 once the item cache warm-up has finished, `recstack_item_cache_warmup_failed`
  1 when it failed (requests then read Milvus), `recstack_item_cache_warmup_vectors` and
  `recstack_item_cache_warmup_seconds` what it loaded and how long it took;
- `recstack_coalesced_calls{call}`: how many concurrent calls each downstream request carried
  (`milvus.search`, `triton.users`, `triton.texts`; see `server.batching`);
- `recstack_dependency_calls_total{dependency, outcome}`: calls to `triton`, `milvus` or `llm` made for an
  RPC, counted when the RPC ends: `ok` if it ended OK, `wasted` if not (cancelled, deadline passed,
  failed). A coalesced call counts once for each RPC it carried; a call a coalescer dropped before
  sending it (its caller had gone) is not counted (see `CallLedger`);
- `recstack_admission_rejected_total{method, reason}`: requests rejected with RESOURCE_EXHAUSTED before any
  work, because the method's concurrency limit was reached (`limit`) or the caller's deadline was shorter
  than the recent latency (`deadline`); `recstack_admission_limit{method}`: the current adaptive limit
  (see `server.admission`); `recstack_admission_deadline_left_seconds{method}`: how much of its caller's deadline a
  limited request still had when it reached admission (callers that set one). gRPC starts a call's server-side
  deadline when the call arrives, and under overload calls wait in gRPC's own queue before any handler runs (grpc.aio
  accepts them one at a time through the event loop): that wait shows nowhere else, neither in
  `recstack_rpc_seconds` (it starts at the handler) nor as event-loop lag. For clients with one deadline D, the
  wait is D minus this (sharpest for D <= 0.3 s, where the buckets are);
- `recstack_feedback_impressions_total{version}`, `recstack_feedback_clicks_total{version}`,
  `recstack_feedback_shown_total{version}`: impressions, clicks and shown items written durably to the feedback
  log, by the model version that served them (click-through rate per version: clicks / shown);
  `recstack_feedback_forgotten_total{reason}`: served answers dropped from memory before their feedback came
  (`expired` after `feedback.impression_ttl_s`, `capacity` beyond `feedback.max_pending_impressions`);
  `recstack_feedback_left_out_ids_total`: shown or history ids not written because MIND's format cannot hold them
  (they contain `-`, its label separator; see `server.feedback`).

With `gateway.workers` > 1 the supervisor serves the metrics of all workers together (see `server.workers`):
counters and histograms are summed, `recstack_inflight_rpcs` and `recstack_admission_limit` summed over the live
workers (the whole gateway's), `recstack_item_cache_warm` and `..._warmup_vectors` are the smallest of the live
workers' (warm once every worker is), `..._warmup_failed` and `..._warmup_seconds` the largest.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TypeVar

import structlog
from prometheus_client import Counter, Gauge, Histogram
from structlog.typing import Processor

# 0.25 ms .. 10 s: the gateway's fast paths sit at a few milliseconds, Answer at seconds.
LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.25, 0.5, 1, 2.5, 5, 10)

RPC_SECONDS = Histogram("recstack_rpc_seconds", "Gateway RPC latency.", ["method", "code"], buckets=LATENCY_BUCKETS)
VERSION_SECONDS = Histogram(
    "recstack_recommend_version_seconds",
    "Recommend latency by the model version that served it (its count: requests per version).",
    ["version", "outcome"],
    buckets=LATENCY_BUCKETS,
)
STAGE_SECONDS = Histogram("recstack_stage_seconds", "Time per pipeline stage.", ["stage"], buckets=LATENCY_BUCKETS)
INFLIGHT = Gauge("recstack_inflight_rpcs", "RPCs in progress.", ["method"], multiprocess_mode="livesum")
ITEM_CACHE = Counter(
    "recstack_item_cache_total", "Catalog lookups served from memory or not; entries refreshed ahead.", ["result"]
)
CACHE_WARM_METRIC = "recstack_item_cache_warm"
CACHE_WARMUP_FAILED_METRIC = "recstack_item_cache_warmup_failed"
CACHE_WARMUP_VECTORS_METRIC = "recstack_item_cache_warmup_vectors"
CACHE_WARMUP_SECONDS_METRIC = "recstack_item_cache_warmup_seconds"
CACHE_WARM = Gauge(
    CACHE_WARM_METRIC, "1 once the item cache warm-up has finished, else 0.", multiprocess_mode="livemin"
)
CACHE_WARMUP_FAILED = Gauge(
    CACHE_WARMUP_FAILED_METRIC, "1 when the item cache warm-up failed, else 0.", multiprocess_mode="livemax"
)
CACHE_WARMUP_VECTORS = Gauge(
    CACHE_WARMUP_VECTORS_METRIC, "News vectors in gateway memory when the warm-up ended.", multiprocess_mode="livemin"
)
CACHE_WARMUP_SECONDS = Gauge(
    CACHE_WARMUP_SECONDS_METRIC, "How long the item cache warm-up took.", multiprocess_mode="livemax"
)
BATCH_SIZE = Histogram(
    "recstack_coalesced_calls", "Calls merged into one downstream request.", ["call"], buckets=(1, 2, 4, 8, 16, 32, 64)
)
FEEDBACK_IMPRESSIONS = Counter(
    "recstack_feedback_impressions_total", "Impressions written to the feedback log.", ["version"]
)
FEEDBACK_CLICKS = Counter("recstack_feedback_clicks_total", "Clicks written to the feedback log.", ["version"])
FEEDBACK_SHOWN = Counter(
    "recstack_feedback_shown_total", "Items shown in the impressions written to the feedback log.", ["version"]
)
FEEDBACK_FORGOTTEN = Counter(
    "recstack_feedback_forgotten_total", "Served answers forgotten before their feedback came.", ["reason"]
)
FEEDBACK_LEFT_OUT = Counter(
    "recstack_feedback_left_out_ids_total", "Shown or history ids the feedback log's format cannot hold."
)
DEPENDENCY_CALLS = Counter(
    "recstack_dependency_calls_total",
    "Dependency calls made for RPCs, by whether the RPC ended OK (ok) or not (wasted).",
    ["dependency", "outcome"],
)

ADMISSION_REJECTED = Counter(
    "recstack_admission_rejected_total", "Requests rejected by admission control.", ["method", "reason"]
)
# Deadlines left: fine below 0.3 s, where an overload's queueing shows against typical service-to-service deadlines.
DEADLINE_LEFT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2, 0.3, 0.5, 1, 2.5, 5, 10, 30)
ADMISSION_DEADLINE_LEFT = Histogram(
    "recstack_admission_deadline_left_seconds",
    "Caller's deadline left when a limited request reached admission (requests with a deadline only).",
    ["method"],
    buckets=DEADLINE_LEFT_BUCKETS,
)
ADMISSION_LIMIT = Gauge(
    "recstack_admission_limit", "Current adaptive concurrency limit.", ["method"], multiprocess_mode="livesum"
)


@dataclass
class DependencyCall:
    """One call to `dependency` made (or about to be made) for an RPC."""

    dependency: str
    sent: bool = True  # False while a coalescer holds it queued; a call never sent is not counted


Metric = TypeVar("Metric", Counter, Gauge, Histogram)


@functools.cache
def labelled(metric: Metric, *values: str) -> Metric:
    """`metric.labels(*values)`, bound once per label values: `labels()` validates and locks on every call,
    a measurable share of a request's CPU on the hot path."""
    return metric.labels(*values)


class CallLedger:
    """The dependency calls made for one RPC, counted into DEPENDENCY_CALLS by its outcome when it ends.

    `RequestContext.remaining` records a call just before it is made; a coalescer takes that record
    over (`latest_dependency_call`) and marks it sent only when its batch goes out.
    """

    def __init__(self) -> None:
        self.calls: list[DependencyCall] = []

    def close(self, ok: bool) -> None:
        outcome = "ok" if ok else "wasted"
        for call in self.calls:
            if call.sent:
                labelled(DEPENDENCY_CALLS, call.dependency, outcome).inc()


_LEDGER: ContextVar[CallLedger | None] = ContextVar("recstack_call_ledger", default=None)


@contextmanager
def call_ledger() -> Iterator[CallLedger]:
    """A ledger for the dependency calls the block makes (closing it is the caller's job)."""
    ledger = CallLedger()
    token = _LEDGER.set(ledger)
    try:
        yield ledger
    finally:
        _LEDGER.reset(token)


def record_dependency_call(dependency: str) -> None:
    """Record a call to `dependency` in the current RPC's ledger (none outside an RPC)."""
    ledger = _LEDGER.get()
    if ledger is not None:
        ledger.calls.append(DependencyCall(dependency))


def latest_dependency_call() -> DependencyCall | None:
    """The current RPC's most recently recorded call: the one its code is making right now."""
    ledger = _LEDGER.get()
    return ledger.calls[-1] if ledger is not None and ledger.calls else None


def record_cache_warmup(vectors: int, seconds: float, failed: bool) -> None:
    """Publish the item cache warm-up's outcome (its gauges are all 0 while it runs)."""
    CACHE_WARMUP_VECTORS.set(vectors)
    CACHE_WARMUP_SECONDS.set(seconds)
    (CACHE_WARMUP_FAILED if failed else CACHE_WARM).set(1)


class StageTimer:
    """Wall-clock time of each stage of one request, in order; also observed into STAGE_SECONDS."""

    def __init__(self) -> None:
        self.stages: list[tuple[str, float]] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            self.stages.append((name, elapsed * 1000.0))
            labelled(STAGE_SECONDS, name).observe(elapsed)


def configure_logging(level: str = "INFO", json: bool = True) -> None:
    """Structured logs on stderr: one JSON object per line (or coloured key=value for a terminal).

    Records from libraries' stdlib loggers go through the same renderer; httpx's per-request INFO
    lines (one per LLM health probe) are kept to warnings.
    """
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(logging.WARNING)
