"""Load generator for the `recstack.v1.Gateway` gRPC API (the real gateway or any server of the same proto).

Two modes:
- closed loop (`concurrency=N`): N workers, each sends its next request when the previous one answered
  (after the server's retry pushback, when a rejection carried one); latency = answer time − send time.
- open loop (`rate=R` req/s): request i is due at a fixed intended time (start + i/R) whatever the server
  does, and its latency is measured FROM THE INTENDED SEND TIME, so a server that falls behind shows the
  queueing it causes (no coordinated omission). At most `max_in_flight` requests are pending; a due
  request beyond that is not sent and counted as `dropped`; a send more than LATE_SEND_MS after its
  intended time is counted as `late` (the generator itself falling behind: its lag is in the latency).

Warm-up requests (intended/sent during the first `warmup_s`) run but are not recorded. The measured
window is `duration_s` long: requests that start in it are recorded (those still in flight at its end
are awaited, each bounded by the deadline). Throughput = OK requests / `duration_s`. Latency
percentiles cover OK requests; failures are counted by gRPC status code name (a client-side failure as
`CLIENT_<exception>`), with their own latency percentiles per code. From the server's own `timings` each
stage gets p50/p99, and the gateway overhead is (answer time − actual send time) − the sum of the stages,
per request. Answer streams also record time to
first token (from the first token chunk) and tokens/s between the first and last token; their stages are
AnswerDone's retrieval_ms, time_to_first_token_ms and total_ms, and their overhead is measured against total_ms.

    python -m benchmarks.loadgen --target 127.0.0.1:50051 --rpc recommend --concurrency 8 --duration-s 10
    python -m benchmarks.loadgen --target HOST:443 --tls --rpc recommend=3,search=1 --rate 200 --json out.json
    (a gateway with tokens: RECSTACK_TOKEN=<token> in the environment, or --token)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import grpc
from google.protobuf.message import Message
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from rich.console import Console

from benchmarks.stats import AnswerTiming, ScenarioResult, result_tables, scenario_key, suite_dict
from benchmarks.workload import (
    DemoRequests,
    RequestFactory,
    RequestOptions,
    RequestStream,
    Rpc,
    SyntheticRequests,
    parse_mix,
    synthetic_ids,
)
from contract import layout
from contract.channel import TOKEN_ENV, ClientSecurity
from recstack.v1 import gateway_pb2 as pb
from recstack.v1 import gateway_pb2_grpc as pb_grpc
from server.rpc import RETRY_PUSHBACK_KEY

MAX_DURATION_S = 3600.0
MAX_WARMUP_S = 600.0
MAX_RATE = 50_000.0
MAX_CONCURRENCY = 4096
MAX_IN_FLIGHT = 10_000
MAX_DEADLINE_MS = 600_000.0
MAX_CHANNELS = 64
CONNECT_TIMEOUT_S = 10.0
LATE_SEND_MS = 5.0
OK = "OK"


class LoadConfig(BaseModel):
    """One load scenario; every limit is bounded so a typo cannot start an absurd run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str = Field(min_length=1, description="host:port of the gateway")
    mix: dict[Rpc, float] = Field(default_factory=lambda: {"recommend": 1.0}, min_length=1)
    concurrency: int | None = Field(None, ge=1, le=MAX_CONCURRENCY, description="closed loop: workers")
    rate: float | None = Field(None, gt=0, le=MAX_RATE, description="open loop: intended requests per second")
    max_in_flight: int = Field(1024, ge=1, le=MAX_IN_FLIGHT, description="open loop: cap on pending requests")
    duration_s: float = Field(10.0, gt=0, le=MAX_DURATION_S)
    warmup_s: float = Field(2.0, ge=0, le=MAX_WARMUP_S)
    deadline_ms: float = Field(1000.0, gt=0, le=MAX_DEADLINE_MS, description="per-request gRPC deadline")
    tls: bool = False
    ca_cert: Path | None = Field(None, description="PEM roots for TLS (default: the system's)")
    client_cert: Path | None = Field(None, description="mutual TLS: this client's PEM certificate chain")
    client_key: Path | None = Field(None, description="mutual TLS: the key of client_cert")
    token: str = Field("", repr=False, description=f"bearer token (default: ${TOKEN_ENV})")
    channels: int = Field(1, ge=1, le=MAX_CHANNELS, description="gRPC channels (connections), used in turn")
    seed: int = 0
    k: int = Field(10, ge=1, le=1000)
    answer_k: int = Field(0, ge=0, le=1000, description="passages per answer; 0 = the server's default")
    max_tokens: int = Field(0, ge=0, le=100_000, description="answer length; 0 = the server's default")
    upsert_batch: int = Field(10, ge=1, le=10_000)
    data_dir: Path = Field(layout.DATA, description="demo data folder (unused by a synthetic workload)")
    synthetic_items: int = Field(0, ge=0, le=100_000_000, description="> 0: synthetic workload over this many ids")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.concurrency is None) == (self.rate is None):
            raise ValueError("give exactly one of concurrency (closed loop) or rate (open loop)")
        for rpc, weight in self.mix.items():
            if not 0 < weight < float("inf"):
                raise ValueError(f"mix weight of {rpc} must be a finite number > 0, got {weight}")
        if self.ca_cert is not None and not self.tls:
            raise ValueError("ca_cert is only used with tls")
        if self.ca_cert is not None and not self.ca_cert.is_file():
            raise ValueError(f"ca_cert {self.ca_cert} is not a file")
        _ = self.security  # raises when the client certificate and key do not go together, with tls
        return self

    @property
    def security(self) -> ClientSecurity:
        """TLS and token of the client; the token falls back to $RECSTACK_TOKEN."""
        return ClientSecurity.with_env_token(self.tls, self.ca_cert, self.client_cert, self.client_key, self.token)

    @property
    def mode(self) -> str:
        return "closed" if self.concurrency is not None else "open"

    def request_factory(self) -> RequestFactory:
        options = RequestOptions(
            k=self.k, answer_k=self.answer_k, max_tokens=self.max_tokens, upsert_batch=self.upsert_batch
        )
        if self.synthetic_items:
            count = self.synthetic_items
            return SyntheticRequests(synthetic_ids("news", count), synthetic_ids("passage", count), options)
        return DemoRequests(self.data_dir, options)


@dataclass
class Reply:
    """How one call ended, as the client saw it (times are time.perf_counter() values)."""

    code: str  # "OK" or the gRPC status code name
    finished: float
    stages: Sequence[tuple[str, float]] = ()
    server_ms: float | None = None  # the server's own account of its time (sum of stages, or AnswerDone.total_ms)
    first_token: float | None = None
    last_token: float | None = None
    tokens: int = 0
    detail: str = ""  # the error message of a failed call
    pushback_s: float | None = None  # a rejection's retry pushback (grpc-retry-pushback-ms), when it gave one


class GatewayClient:
    """Stubs over `channels` connections to the target (used in turn) and one timed call per RPC kind."""

    def __init__(self, channels: Sequence[grpc.aio.Channel]) -> None:
        self._stubs = itertools.cycle([pb_grpc.GatewayStub(channel) for channel in channels])

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, config: LoadConfig) -> AsyncIterator[GatewayClient]:
        """Open the channels and wait until each is connected (ConnectionError after CONNECT_TIMEOUT_S)."""
        security = config.security
        channels = [security.aio_channel(config.target, own_connection=True) for _ in range(config.channels)]
        client = cls(channels)
        try:
            try:
                await asyncio.wait_for(
                    asyncio.gather(*(c.channel_ready() for c in channels)), timeout=CONNECT_TIMEOUT_S
                )
            except TimeoutError:
                raise ConnectionError(f"cannot connect to {config.target} within {CONNECT_TIMEOUT_S:g} s") from None
            yield client
        finally:
            await asyncio.gather(*(c.close() for c in channels))

    async def call(self, rpc: Rpc, request: Message, timeout_s: float) -> Reply:
        stub = next(self._stubs)
        try:
            if rpc == "answer":
                return await self._answer(stub, request, timeout_s)
            method = {"recommend": stub.Recommend, "search": stub.Search, "upsert": stub.UpsertItems}[rpc]
            response = await method(request, timeout=timeout_s)
            finished = time.perf_counter()
            stages = [(timing.stage, timing.ms) for timing in response.timings]
            return Reply(OK, finished, stages=stages, server_ms=sum(ms for _, ms in stages) if stages else None)
        except grpc.aio.AioRpcError as error:
            finished = time.perf_counter()
            return Reply(error.code().name, finished, detail=error.details() or "", pushback_s=retry_pushback_s(error))
        except Exception as error:  # a client-side failure still counts, visibly, by its type
            return Reply(f"CLIENT_{type(error).__name__}", time.perf_counter(), detail=str(error))

    @staticmethod
    async def _answer(stub: pb_grpc.GatewayStub, request: pb.AnswerRequest, timeout_s: float) -> Reply:
        first = last = None
        tokens = 0
        done: pb.AnswerDone | None = None
        async for chunk in stub.Answer(request, timeout=timeout_s):
            kind = chunk.WhichOneof("chunk")
            if kind == "token":
                last = time.perf_counter()
                if first is None:
                    first = last
                tokens += 1
            elif kind == "done":
                done = chunk.done
        finished = time.perf_counter()
        if done is None:
            return Reply("INCOMPLETE_STREAM", finished, detail="the stream ended without an AnswerDone chunk")
        stages = [
            ("answer.retrieval", done.retrieval_ms),
            ("answer.time_to_first_token", done.time_to_first_token_ms),
            ("answer.total", done.total_ms),
        ]
        return Reply(
            OK, finished, stages=stages, server_ms=done.total_ms, first_token=first, last_token=last, tokens=tokens
        )


def retry_pushback_s(error: grpc.aio.AioRpcError) -> float | None:
    """The server's retry pushback in seconds (gRFC A6 trailing metadata); None without one or when it says
    "do not retry" (a negative value)."""
    for key, value in error.trailing_metadata() or ():
        if key == RETRY_PUSHBACK_KEY:
            with contextlib.suppress(ValueError):
                milliseconds = int(value)
                return milliseconds / 1000.0 if milliseconds >= 0 else None
    return None


class LoadRun:
    """Drives one scenario against a connected client and records the measured requests."""

    def __init__(self, config: LoadConfig, client: GatewayClient, stream: RequestStream) -> None:
        self.config, self.client, self.stream = config, client, stream
        self.timeout_s = config.deadline_ms / 1000.0
        self.result = ScenarioResult(
            target=config.target,
            mix=dict(config.mix),
            mode=config.mode,
            concurrency=config.concurrency,
            rate=config.rate,
            duration_s=config.duration_s,
            warmup_s=config.warmup_s,
            deadline_ms=config.deadline_ms,
        )
        self.measure_from = 0.0  # perf_counter() time at which the measured window starts
        self.in_flight = 0

    async def execute(self) -> ScenarioResult:
        if self.config.concurrency is not None:
            await self._closed_loop(self.config.concurrency)
        else:
            await self._open_loop(self.config.rate)
        return self.result

    async def _closed_loop(self, concurrency: int) -> None:
        self.measure_from = time.perf_counter() + self.config.warmup_s
        end = self.measure_from + self.config.duration_s

        async def worker() -> None:
            while time.perf_counter() < end:
                rpc, request = next(self.stream)
                reply = await self._issue(rpc, request)
                if reply.pushback_s:  # a well-behaved client waits as long as the server asked before its next call
                    await asyncio.sleep(min(reply.pushback_s, max(0.0, end - time.perf_counter())))

        async with asyncio.TaskGroup() as workers:
            for _ in range(concurrency):
                workers.create_task(worker())

    async def _open_loop(self, rate: float) -> None:
        """Due times measure_from + i/rate for i in [-warm-up sends, measured sends): round(rate × seconds) each."""
        interval = 1.0 / rate
        warmup_sends, measured_sends = round(self.config.warmup_s * rate), round(self.config.duration_s * rate)
        self.measure_from = time.perf_counter() + warmup_sends * interval
        async with asyncio.TaskGroup() as requests:  # waits for every request; a bug in one stops the run
            for i in range(-warmup_sends, measured_sends):
                intended = self.measure_from + i * interval
                delay = intended - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                measured = i >= 0
                if self.in_flight >= self.config.max_in_flight:
                    if measured:
                        self.result.dropped += 1
                    continue
                rpc, request = next(self.stream)
                if measured:
                    lag_ms = (time.perf_counter() - intended) * 1000.0
                    self.result.send_lag.record(lag_ms)
                    if lag_ms > LATE_SEND_MS:
                        self.result.late += 1
                requests.create_task(self._issue(rpc, request, intended))

    async def _issue(self, rpc: Rpc, request: Message, intended: float | None = None) -> Reply:
        """Send, record and return the reply; `intended` is the open loop's due time (closed loop: the send time)."""
        sent = time.perf_counter()
        intended = sent if intended is None else intended
        self.in_flight += 1
        try:
            reply = await self.client.call(rpc, request, self.timeout_s)
        finally:
            self.in_flight -= 1
        if intended >= self.measure_from:
            self._record(rpc, intended, sent, reply)
        return reply

    def _record(self, rpc: Rpc, intended: float, sent: float, reply: Reply) -> None:
        recorders = [self.result.overall]
        if len(self.config.mix) > 1:
            recorders.append(self.result.recorder(rpc))
        latency_ms = (reply.finished - intended) * 1000.0
        if reply.code != OK:
            answered_ms = (reply.finished - sent) * 1000.0
            for recorder in recorders:
                recorder.record_error(reply.code, reply.detail, latency_ms, answered_ms)
            return
        overhead_ms = None
        if reply.server_ms is not None:
            overhead_ms = (reply.finished - sent) * 1000.0 - reply.server_ms
        answer = None
        if rpc == "answer":
            ttft_ms = None if reply.first_token is None else (reply.first_token - intended) * 1000.0
            answer = AnswerTiming(time_to_first_token_ms=ttft_ms, tokens_per_s=tokens_per_second(reply))
        for recorder in recorders:
            recorder.record_ok(latency_ms, overhead_ms, reply.stages, answer)


def tokens_per_second(reply: Reply) -> float | None:
    """Decode rate between the first and the last token chunk (None with fewer than two tokens)."""
    if reply.tokens < 2 or reply.first_token is None or reply.last_token is None:
        return None
    span = reply.last_token - reply.first_token
    return (reply.tokens - 1) / span if span > 0 else None


async def run_load(config: LoadConfig, factory: RequestFactory | None = None) -> ScenarioResult:
    """Run one scenario; `factory` overrides the workload the config describes (demo or synthetic)."""
    stream = RequestStream(factory or config.request_factory(), config.mix, config.seed)
    stream.prime()
    async with GatewayClient.connect(config) as client:
        return await LoadRun(config, client, stream).execute()


# ------------------------------------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    """Flags are the LoadConfig fields (`--duration-s` sets duration_s), plus `--rpc` and `--json`."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.loadgen",
        description="Load-test a recstack.v1.Gateway server (closed loop: --concurrency, open loop: --rate).",
    )
    fields = LoadConfig.model_fields

    def add(flag: str, **kwargs: object) -> None:
        name = flag.removeprefix("--").replace("-", "_")
        field = fields[name]
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        help_text = ", ".join(filter(None, [field.description, f"default {default}" if default is not None else None]))
        parser.add_argument(flag, dest=name, default=argparse.SUPPRESS, help=help_text or None, **kwargs)

    add("--target", required=True)
    parser.add_argument(
        "--rpc",
        dest="mix",
        type=_mix_argument,
        default=argparse.SUPPRESS,
        help="recommend|search|answer|upsert, or a weighted mix like recommend=3,search=1 (default recommend)",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--concurrency", type=int, default=argparse.SUPPRESS, help=fields["concurrency"].description)
    mode.add_argument("--rate", type=float, default=argparse.SUPPRESS, help=fields["rate"].description)
    add("--max-in-flight", type=int)
    add("--duration-s", type=float)
    add("--warmup-s", type=float)
    add("--deadline-ms", type=float)
    add("--tls", action="store_true")
    add("--ca-cert", type=Path)
    add("--client-cert", type=Path)
    add("--client-key", type=Path)
    add("--token")
    add("--channels", type=int)
    add("--seed", type=int)
    add("--k", type=int)
    add("--answer-k", type=int)
    add("--max-tokens", type=int)
    add("--upsert-batch", type=int)
    add("--data-dir", type=Path)
    add("--synthetic-items", type=int)
    parser.add_argument("--json", type=Path, help="also write the result here: {'scenarios': {key: scenario}}")
    return parser


def _mix_argument(text: str) -> dict[Rpc, float]:
    try:
        return parse_mix(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def config_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> LoadConfig:
    """A validated LoadConfig, or `parser.error` naming each offending flag."""
    values = {key: value for key, value in vars(args).items() if key != "json"}
    try:
        return LoadConfig(**values)
    except ValidationError as error:
        problems = []
        for issue in error.errors():
            flag = "--" + str(issue["loc"][0]).replace("_", "-") if issue["loc"] else "arguments"
            problems.append(f"{flag}: {issue['msg']}")
        parser.error("; ".join(problems))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = config_from_args(parser, args)
    console = Console()
    load = f"concurrency {config.concurrency}" if config.mode == "closed" else f"{config.rate:g} req/s"
    console.print(
        f"{config.mode} loop, {load}, {config.warmup_s:g} s warm-up + {config.duration_s:g} s → {config.target}",
        style="dim",
    )
    try:
        result = asyncio.run(run_load(config))
    except (ConnectionError, FileNotFoundError, ValueError) as error:
        console.print(f"[red]error:[/red] {error}")
        return 1
    for table in result_tables(result):
        console.print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(suite_dict([result]), indent=2) + "\n")
        console.print(f"wrote {args.json} ({scenario_key(result)})", style="dim")
    return 0


if __name__ == "__main__":
    sys.exit(main())
