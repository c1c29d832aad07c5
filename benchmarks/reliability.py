"""Reliability of the real local stack: dependencies killed under load, durable acknowledged writes, a soak.

    python -m benchmarks.reliability chaos durability   # make chaos: capacity, then SIGKILL triton, milvus,
                                                        # llm, gateway under open-loop load; then durability
    python -m benchmarks.reliability soak --minutes 10  # make soak: mixed load at 70% of capacity
    python -m benchmarks.reliability chaos durability soak --minutes 2   # all three on one stack

A run starts one stack (`--state-dir`), measures the named sections in order, and writes each into
benchmarks/results/reliability.json (other sections, e.g. "fuzz", are kept: `write_section`), then
renders reliability.md from the whole file.

Chaos, per part: open-loop load at `--load-fraction` of the closed-loop capacity mixing Recommend, Search
and UpsertItems (and Answer streams, for the LLM); the part's whole process group is SIGKILLed, left down
`--down-s`, restarted on the same ports and data. Measured: status codes of the affected RPCs that ended
between the kill and the restarted part being ready, ms from the kill to the first UNAVAILABLE, s from
the restart to the first OK and to the last error (`recovery_s`: from then on every request succeeded),
the gateway's health during and after, and whether the gateway process survived a dependency's death.

Durability: acknowledged upserts (vectors compared with the encoder's output for what was sent) and
deletes survive Milvus SIGKILLed right after the last acknowledgement, and the gateway SIGKILLed in the
middle of a stream of upsert batches and of delete batches.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pymilvus import MilvusClient
from rich.console import Console

from benchmarks.loadgen import OK, GatewayClient, LoadConfig, run_load
from benchmarks.workload import COMMON_WORDS, DemoRequests, RequestFactory, RequestOptions, RequestStream, Rpc
from devstack.local import LocalStack, StackConfig
from devstack.process import child_pids
from recstack.v1 import gateway_pb2 as pb
from recstack.v1 import gateway_pb2_grpc as pb_grpc
from server.config import MilvusSettings, TritonSettings
from server.health import ANSWER_SERVICE, SERVICE
from server.triton import TritonEncoders

RESULTS = Path("benchmarks/results/reliability.json")
SECTIONS = ("chaos", "durability", "soak")
MIX: dict[Rpc, float] = {"recommend": 3.0, "search": 2.0, "upsert": 1.0}
ANSWER_MIX: dict[Rpc, float] = {**MIX, "answer": 1.0}
# Codes a client may see while a dependency is down; anything else (INTERNAL, UNKNOWN, client-side) is a bug.
OUTAGE_CODES = frozenset({OK, "UNAVAILABLE", "DEADLINE_EXCEEDED"})
# Above the gateway's own dependency deadlines (2 s per Triton/Milvus call), as a client's deadline should be:
# with 2 s, calls hanging on a dead Milvus end by the CLIENT's deadline, the admission controller learns
# "recent latency 2 s", and it rejects the next 2 s-deadline calls up front (RESOURCE_EXHAUSTED).
DEADLINE_S = 5.0
HEALTH_POLL_S = 0.2
ANSWER_TOKENS = 8
ANSWER_DEADLINE_S = 30.0  # a whole (short) answer on a busy CPU: prompt processing takes seconds
RECOVERY_TIMEOUT_S = 60.0
INDEX_ATTEMPTS = 3
ENCODE_BATCH = 32  # rows per Triton request when checking vectors (the encoders' max batch is 64)
NEWS_COLLECTION = MilvusSettings().news_collection


# ------------------------------------------------------------------------------------------------ load


@dataclass(frozen=True)
class Outcome:
    """How one request ended (perf_counter times)."""

    rpc: str
    sent: float
    finished: float
    code: str


class BackgroundLoad:
    """Open-loop load at `rate` req/s in its own thread (the caller kills and restarts processes meanwhile).

    Request i is sent at start + i/rate whatever the server does; at most `max_in_flight` are pending
    (a due request beyond that is skipped and counted in `skipped`).
    """

    def __init__(
        self, target: str, factory: RequestFactory, mix: dict[Rpc, float], rate: float, max_in_flight: int = 256
    ) -> None:
        self.config = LoadConfig(target=target, mix=mix, rate=rate, deadline_ms=DEADLINE_S * 1000)
        self.stream = RequestStream(factory, mix, seed=0)
        self.max_in_flight = max_in_flight
        self.outcomes: list[Outcome] = []
        self.skipped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="load", daemon=True)

    def __enter__(self) -> BackgroundLoad:
        self.stream.prime()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    async def _run(self) -> None:
        interval = 1.0 / (self.config.rate or 1.0)
        pending: set[asyncio.Task[None]] = set()
        async with GatewayClient.connect(self.config) as client:
            start = time.perf_counter()
            for i in range(1_000_000_000):
                if self._stop.is_set():
                    break
                await asyncio.sleep(max(0.0, start + i * interval - time.perf_counter()))
                if len(pending) >= self.max_in_flight:
                    self.skipped += 1
                    continue
                task = asyncio.create_task(self._issue(client, *next(self.stream)))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*pending)

    def succeeded_since(self, start: float, rpcs: frozenset[str]) -> bool:
        """Whether a request of one of `rpcs` sent at or after `start` has ended OK."""
        return any(o.code == OK and o.sent >= start and o.rpc in rpcs for o in list(self.outcomes))

    async def _issue(self, client: GatewayClient, rpc: Rpc, request: Any) -> None:
        sent = time.perf_counter()
        reply = await client.call(rpc, request, ANSWER_DEADLINE_S if rpc == "answer" else DEADLINE_S)
        self.outcomes.append(Outcome(rpc, sent, reply.finished, reply.code))


class HealthWatch:
    """Polls the gateway's health for `service` in a thread; `seen` holds (perf_counter time, status name)."""

    def __init__(self, target: str, service: str) -> None:
        self.target, self.service = target, service
        self.seen: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while not self._stop.wait(HEALTH_POLL_S):
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=self.service), timeout=1.0)
                    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                except grpc.RpcError as error:
                    status = f"UNREACHABLE_{error.code().name}"
                self.seen.append((time.perf_counter(), status))

    def serving_again(self, since: float) -> float | None:
        """When SERVING was first seen at or after `since` (None: not yet)."""
        return next((at for at, status in self.seen if at >= since and status == "SERVING"), None)

    def between(self, start: float, end: float | None) -> list[str]:
        """The statuses seen from `start` until `end` (None: until the last poll)."""
        return sorted({status for at, status in self.seen if start <= at and (end is None or at < end)})

    def last(self) -> str:
        return self.seen[-1][1] if self.seen else "NONE"


# ------------------------------------------------------------------------------------------------ chaos


def workload(data_dir: Path) -> RequestFactory:
    """Requests from the demo data under `data_dir`; answers short enough to end well within DEADLINE_S."""
    return DemoRequests(data_dir, RequestOptions(max_tokens=ANSWER_TOKENS))


@dataclass(frozen=True)
class Part:
    """A process of the stack that chaos kills: its pid now, how to bring it back, what depends on it."""

    name: str
    pid: Callable[[], int]
    restart: Callable[[], None]  # stop (reaps, frees leftovers) then start on the same ports and data
    affected: frozenset[str]  # RPCs that fail while it is down
    health_service: str


def parts(stack: LocalStack) -> dict[str, Part]:
    """The four parts chaos kills, in the order it kills them."""
    assert stack.triton and stack.milvus and stack.gateway, "the stack is not started"
    every = frozenset(ANSWER_MIX)
    found = {
        "triton": Part("triton", lambda: stack.triton.pid, _restarter(stack.triton), every, SERVICE),
        "milvus": Part("milvus", lambda: stack.milvus.pid, _restarter(stack.milvus), every, SERVICE),
        "gateway": Part("gateway", lambda: stack.gateway.pid, _restarter(stack.gateway), every, SERVICE),
    }
    if stack.llm is not None:
        found["llm"] = Part("llm", lambda: stack.llm.pid, _restarter(stack.llm), frozenset({"answer"}), ANSWER_SERVICE)
    order = ("triton", "milvus", "llm", "gateway")
    return {name: found[name] for name in order if name in found}


def _restarter(process: Any) -> Callable[[], None]:
    def restart() -> None:
        process.stop()
        process.start()

    return restart


def kill_group(pid: int) -> None:
    """SIGKILL the process group `pid` leads: the part and every helper it started (Triton's stubs)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


@dataclass
class KillReport:
    """What one kill-and-restart looked like from the clients and from the health service."""

    part: Part
    killed: float
    restarted: float
    ready: float
    until: float
    outcomes: list[Outcome]
    health: HealthWatch
    gateway_pid_unchanged: bool | None

    def to_dict(self) -> dict[str, Any]:
        affected = [o for o in self.outcomes if o.rpc in self.part.affected]
        during = [o for o in affected if self.killed <= o.finished < self.ready]
        unavailable = [o.finished for o in affected if o.finished >= self.killed and o.code == "UNAVAILABLE"]
        after = sorted((o for o in affected if o.sent >= self.restarted), key=lambda o: o.sent)
        first_ok = next((o.finished for o in after if o.code == OK), None)
        errors_after = [o for o in after if o.code != OK]
        unaffected_errors = Counter(
            o.code for o in self.outcomes if o.rpc not in self.part.affected and o.code != OK and o.sent >= self.killed
        )
        in_flight_streams = Counter(
            o.code for o in self.outcomes if o.rpc == "answer" and o.sent < self.killed < o.finished
        )
        serving_again = self.health.serving_again(self.restarted)
        report: dict[str, Any] = {
            "codes": dict(Counter(o.code for o in during)),
            "unexpected_codes": sorted({o.code for o in during} - OUTAGE_CODES),
            "first_unavailable_ms": _ms(min(unavailable) - self.killed) if unavailable else None,
            "restart_s": round(self.ready - self.restarted, 2),
            "first_ok_s": round(first_ok - self.restarted, 2) if first_ok is not None else None,
            "recovery_s": round(max((o.finished for o in errors_after), default=self.restarted) - self.restarted, 2),
            "errors_after_restart": dict(Counter(o.code for o in errors_after)),
            "ok_after_restart": sum(o.code == OK for o in after),
            "health_during": self.health.between(self.killed, serving_again),
            "serving_again_s": round(serving_again - self.restarted, 2) if serving_again is not None else None,
            "health_after": self.health.last(),
            "unaffected_rpc_errors": dict(unaffected_errors),
        }
        if in_flight_streams:
            report["answer_streams_in_flight"] = dict(in_flight_streams)
        if self.gateway_pid_unchanged is not None:
            report["gateway_pid_unchanged"] = self.gateway_pid_unchanged
        return report


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 1)


def kill_under_load(
    stack: LocalStack, part: Part, factory: RequestFactory, rate: float, down_s: float, settle_s: float
) -> KillReport:
    """Load for a few seconds, SIGKILL `part`, keep it down `down_s`, restart it, load `settle_s` more."""
    mix = ANSWER_MIX if "answer" in part.affected and len(part.affected) == 1 else MIX
    gateway_pid = stack.gateway.pid
    with (
        HealthWatch(stack.gateway_address, part.health_service) as health,
        BackgroundLoad(stack.gateway_address, factory, mix, rate) as load,
    ):
        time.sleep(3.0)
        killed = time.perf_counter()
        kill_group(part.pid())
        time.sleep(down_s)
        restarted = time.perf_counter()
        part.restart()
        ready = time.perf_counter()
        _wait_until(lambda: health.last() == "SERVING")
        _wait_until(lambda: load.succeeded_since(restarted, part.affected))
        time.sleep(settle_s)
        until = time.perf_counter()
    unchanged = None if part.name == "gateway" else stack.gateway.running() and stack.gateway.pid == gateway_pid
    return KillReport(part, killed, restarted, ready, until, load.outcomes, health, unchanged)


def _wait_until(condition: Callable[[], bool], timeout_s: float = RECOVERY_TIMEOUT_S) -> None:
    """Poll `condition` until it holds or `timeout_s` passed (the report then shows what did not recover)."""
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(HEALTH_POLL_S)


def measure_capacity(target: str, factory: RequestFactory, seconds: float = 8.0) -> float:
    """OK requests per second of the mix in a short closed loop (8 workers)."""
    config = LoadConfig(target=target, mix=MIX, concurrency=8, duration_s=seconds, warmup_s=2.0)
    result = asyncio.run(run_load(config, factory))
    return result.overall.ok / seconds


def chaos(stack: LocalStack, factory: RequestFactory, load_fraction: float, down_s: float, settle_s: float) -> dict:
    """Capacity first, then every part killed and restarted under open-loop load at `load_fraction` of it."""
    capacity = measure_capacity(stack.gateway_address, factory)
    rate = max(1.0, capacity * load_fraction)
    section: dict[str, Any] = {"capacity_rps": round(capacity, 1), "load_rps": round(rate, 1)}
    for name, part in parts(stack).items():
        section[name] = kill_under_load(stack, part, factory, rate, down_s, settle_s).to_dict()
    return section


# ------------------------------------------------------------------------------------------------ durability


def news_batch(prefix: str, batch: int, size: int) -> list[pb.NewsItem]:
    """`size` news items with ids `prefix`-`batch`-`i` and seeded titles (the text the vectors come from)."""
    words = random.Random(f"{prefix}-{batch}")
    return [
        pb.NewsItem(
            id=f"{prefix}-{batch}-{i}", title=" ".join(words.choices(COMMON_WORDS, k=8)), category="reliability"
        )
        for i in range(size)
    ]


@dataclass
class StoredCheck:
    """Reads Milvus directly and encodes titles on Triton to check what the gateway acknowledged."""

    stack: LocalStack

    def vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        client = MilvusClient(self.stack.milvus.uri, timeout=30.0)
        try:
            rows = client.get(
                NEWS_COLLECTION, ids=list(ids), output_fields=["id", "vector"], consistency_level="Strong"
            )
        finally:
            client.close()
        return {row["id"]: np.asarray(row["vector"], np.float32) for row in rows}

    def expected(self, items: Sequence[pb.NewsItem]) -> dict[str, np.ndarray]:
        async def encode() -> np.ndarray:
            settings = TritonSettings(url=self.stack.triton.grpc_url, tokenizer_dir=self.stack.config.tokenizer_dir)
            encoders = TritonEncoders.from_settings(settings)
            try:
                titles = [item.title for item in items]
                chunks = [titles[i : i + ENCODE_BATCH] for i in range(0, len(titles), ENCODE_BATCH)]
                return np.concatenate([await encoders.encode_texts("title", chunk, timeout_s=30.0) for chunk in chunks])
            finally:
                await encoders.close()

        return {item.id: vector for item, vector in zip(items, asyncio.run(encode()), strict=True)}

    def present_with_vectors(self, items: Sequence[pb.NewsItem]) -> tuple[int, int]:
        """(how many of `items` are stored, how many of those hold the vector their title encodes to)."""
        stored, expected = self.vectors([item.id for item in items]), self.expected(items)
        equal = sum(np.allclose(stored[i], expected[i], atol=1e-5) for i in stored)
        return len(stored), int(equal)


def milvus_kill_durability(stack: LocalStack, batches: int = 5, size: int = 100, deleted: int = 1) -> dict:
    """Upsert `batches`, delete the first `deleted` of them, upsert one more; SIGKILL Milvus right after that
    last acknowledgement, restart it, and look for every acknowledged write."""
    prefix = f"dur-milvus-{time.time_ns()}"
    written = [news_batch(prefix, b, size) for b in range(batches + 1)]
    with grpc.insecure_channel(stack.gateway_address) as channel:
        stub = pb_grpc.GatewayStub(channel)
        for items in written[:batches]:
            stub.UpsertItems(pb.UpsertItemsRequest(news=items), timeout=30)
        for items in written[:deleted]:
            stub.DeleteItems(pb.DeleteItemsRequest(news_ids=[i.id for i in items]), timeout=30)
        stub.UpsertItems(pb.UpsertItemsRequest(news=written[batches]), timeout=30)
        kill_group(stack.milvus.pid)
    stack.milvus.stop()
    stack.milvus.start()
    kept = [item for items in written[deleted:] for item in items]
    gone = [item.id for items in written[:deleted] for item in items]
    check = StoredCheck(stack)
    present, equal = check.present_with_vectors(kept)
    return {
        "acknowledged": len(kept),
        "present_after_restart": present,
        "vectors_equal": equal,
        "deleted": len(gone),
        "deleted_absent": not check.vectors(gone),
    }


@dataclass
class WriteStream:
    """Sends batches one after another in a thread until one fails; `acknowledged` are the ones that succeeded."""

    target: str
    requests: list[Any]  # UpsertItemsRequest or DeleteItemsRequest
    acknowledged: list[int] = field(default_factory=list)
    failure: str = ""

    def run(self) -> None:
        with grpc.insecure_channel(self.target) as channel:
            stub = pb_grpc.GatewayStub(channel)
            for index, request in enumerate(self.requests):
                send = stub.UpsertItems if isinstance(request, pb.UpsertItemsRequest) else stub.DeleteItems
                try:
                    send(request, timeout=30)
                except grpc.RpcError as error:
                    self.failure = error.code().name
                    return
                self.acknowledged.append(index)


def gateway_kill_mid_stream(stack: LocalStack, stream: WriteStream, kill_after: int) -> None:
    """Run `stream`, SIGKILL the gateway once `kill_after` batches were acknowledged, restart the gateway."""
    thread = threading.Thread(target=stream.run, daemon=True)
    thread.start()
    while len(stream.acknowledged) < kill_after and thread.is_alive():
        time.sleep(0.01)
    kill_group(stack.gateway.pid)
    thread.join()
    stack.gateway.stop()
    stack.gateway.start()


def gateway_kill_durability(stack: LocalStack, batches: int = 40, size: int = 25, kill_after: int = 5) -> dict:
    """SIGKILL the gateway in the middle of a stream of upsert batches, then of delete batches of the same
    items: every acknowledged upsert batch is present (with its vectors), every acknowledged delete absent."""
    prefix = f"dur-gateway-{time.time_ns()}"
    written = [news_batch(prefix, b, size) for b in range(batches)]
    upserts = WriteStream(stack.gateway_address, [pb.UpsertItemsRequest(news=items) for items in written])
    gateway_kill_mid_stream(stack, upserts, kill_after)
    acked = [item for b in upserts.acknowledged for item in written[b]]
    check = StoredCheck(stack)
    present, equal = check.present_with_vectors(acked)
    deletes = WriteStream(
        stack.gateway_address,
        [pb.DeleteItemsRequest(news_ids=[item.id for item in written[b]]) for b in upserts.acknowledged],
    )
    gateway_kill_mid_stream(stack, deletes, max(1, len(upserts.acknowledged) // 2))
    deleted = [item.id for b in deletes.acknowledged for item in written[upserts.acknowledged[b]]]
    return {
        "upsert_batches_acknowledged": len(upserts.acknowledged),
        "upsert_stream_ended_with": upserts.failure or "all acknowledged",
        "acknowledged": len(acked),
        "present_after_restart": present,
        "vectors_equal": equal,
        "delete_batches_acknowledged": len(deletes.acknowledged),
        "delete_stream_ended_with": deletes.failure or "all acknowledged",
        "deleted_absent": not check.vectors(deleted),
    }


def durability(stack: LocalStack) -> dict:
    milvus = milvus_kill_durability(stack)
    gateway = gateway_kill_durability(stack)
    return {
        "acknowledged": milvus["acknowledged"],
        "present_after_restart": milvus["present_after_restart"],
        "deleted_absent": milvus["deleted_absent"] and gateway["deleted_absent"],
        "milvus_kill": milvus,
        "gateway_kill": gateway,
    }


# ------------------------------------------------------------------------------------------------ soak


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants alive now."""
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue.extend(child_pids(pid))
    return found


def rss_and_fds(root: int) -> tuple[int, int]:
    """Resident memory (bytes) and open file descriptors of the process tree under `root`."""
    rss = fds = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{pid}/status").read_text()
            rss += next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:"))
            fds += len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds


def soak(stack: LocalStack, factory: RequestFactory, minutes: float, load_fraction: float, sample_s: float) -> dict:
    """Mixed load at `load_fraction` of capacity for `minutes`; RSS and fds of each part sampled; growth is
    measured from the end of the warm-up (the first fifth of the run, at least 30 s)."""
    capacity = measure_capacity(stack.gateway_address, factory)
    rate = max(1.0, capacity * load_fraction)
    pids = {name: part.pid() for name, part in parts(stack).items()}
    duration_s = minutes * 60.0
    warmup_s = max(30.0, duration_s / 5)
    samples: dict[str, list[tuple[int, int]]] = {name: [] for name in pids}
    with BackgroundLoad(stack.gateway_address, factory, MIX, rate) as load:
        started = time.monotonic()
        time.sleep(warmup_s)
        while time.monotonic() - started < duration_s:
            for name, pid in pids.items():
                samples[name].append(rss_and_fds(pid))
            time.sleep(sample_s)
        for name, pid in pids.items():
            samples[name].append(rss_and_fds(pid))
    processes = {name: _growth(rows) for name, rows in samples.items()}
    errors = Counter(o.code for o in load.outcomes if o.code != OK)
    return {
        "minutes": minutes,
        "load_rps": round(rate, 1),
        "requests": len(load.outcomes),
        "errors": sum(errors.values()),
        "error_codes": dict(errors),
        "skipped_sends": load.skipped,
        "rss_growth_pct": processes["gateway"]["rss_growth_pct"],
        "processes": processes,
    }


def _growth(samples: list[tuple[int, int]]) -> dict[str, Any]:
    (rss_first, fds_first), (rss_last, fds_last) = samples[0], samples[-1]
    return {
        "rss_mb_after_warmup": round(rss_first / 2**20, 1),
        "rss_mb_end": round(rss_last / 2**20, 1),
        "rss_mb_max": round(max(rss for rss, _ in samples) / 2**20, 1),
        "rss_growth_pct": round(100.0 * (rss_last - rss_first) / rss_first, 2) if rss_first else None,
        "fds_after_warmup": fds_first,
        "fds_end": fds_last,
    }


# ------------------------------------------------------------------------------------------------ results


def write_section(key: str, value: dict, path: Path = RESULTS) -> dict:
    """Set one top-level section of the results file, keeping the others; render the .md beside it."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    path.with_suffix(".md").write_text(render_markdown(data))
    return data


def render_markdown(data: dict) -> str:
    """reliability.md: one table per section, one row per entry (nested values as compact JSON)."""
    lines = ["# Reliability", "", "Written by `python -m benchmarks.reliability` (see its docstring).", ""]
    for section, body in sorted(data.items()):
        lines += [f"## {section}", "", "| key | value |", "|---|---|"]
        for key, value in body.items():
            shown = json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else str(value)
            lines.append(f"| {key} | `{shown}` |")
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ CLI


@contextlib.contextmanager
def demo_stack(state_dir: Path, console: Console) -> Iterator[tuple[LocalStack, RequestFactory]]:
    """The stack over the demo models (or the bench-ci ones), gateway on a fixed port, demo catalog indexed."""
    from benchmarks.inputs import resolve_inputs
    from devstack.process import free_port
    from export.catalog import index_catalog

    inputs = resolve_inputs(build_if_missing=True, console=console)
    config = StackConfig(
        triton_repo=inputs.triton_repo,
        tokenizer_dir=inputs.tokenizers,
        state_dir=state_dir,
        gateway_port=free_port(),
        metrics_port=0,
    )
    console.log(f"starting the stack under {state_dir}")
    with LocalStack(config) as stack:
        for attempt in range(1, INDEX_ATTEMPTS + 1):  # upserts are idempotent: a retry rewrites the same rows
            console.log(f"indexing the demo catalog (attempt {attempt})")
            try:
                index_catalog(stack.gateway_address, inputs.data_dir)
                break
            except grpc.RpcError as error:
                if attempt == INDEX_ATTEMPTS:
                    raise
                console.log(f"indexing failed ({error.code().name}); a busy machine slows Milvus, retrying")
        yield stack, workload(inputs.data_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.reliability",
        description="Kill the stack's processes under load, check acknowledged writes survive, soak; "
        f"results go into {RESULTS} (+ .md), one section per command.",
    )
    parser.add_argument("--state-dir", type=Path, help="where the stack keeps its data (default: a new temp dir)")
    parser.add_argument(
        "sections",
        nargs="+",
        choices=SECTIONS,
        help="what to measure, in order, on one stack: chaos (SIGKILL triton, milvus, llm, gateway under load), "
        "durability (acknowledged upserts/deletes vs SIGKILL of milvus and of the gateway), soak (mixed load, "
        "RSS, fds and errors per process)",
    )
    parser.add_argument("--load-fraction", type=float, help="open-loop rate / capacity (chaos 0.5, soak 0.7)")
    parser.add_argument("--down-s", type=float, default=3.0, help="chaos: seconds each part stays dead (3)")
    parser.add_argument("--settle-s", type=float, default=10.0, help="chaos: seconds of load after recovery (10)")
    parser.add_argument("--minutes", type=float, default=10.0, help="soak: length of the run (10)")
    parser.add_argument("--sample-s", type=float, default=10.0, help="soak: seconds between RSS/fd samples (10)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="recstack-reliability-"))
    with demo_stack(state_dir, console) as (stack, factory):
        for section in args.sections:
            console.log(f"measuring {section}")
            if section == "chaos":
                fraction = args.load_fraction or 0.5
                write_section(section, chaos(stack, factory, fraction, args.down_s, args.settle_s))
            elif section == "durability":
                write_section(section, durability(stack))
            else:
                fraction = args.load_fraction or 0.7
                write_section(section, soak(stack, factory, args.minutes, fraction, args.sample_s))
    console.print_json(RESULTS.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
