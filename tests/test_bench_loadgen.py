"""The load generator against fake in-process servers: accounting, warm-up, open-loop latency, CLI, TLS."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from pydantic import ValidationError

from benchmarks import loadgen
from benchmarks.loadgen import LoadConfig, run_load
from benchmarks.stats import ScenarioResult
from benchmarks.workload import SyntheticRequests, synthetic_ids
from devstack.process import free_port
from recstack.v1 import gateway_pb2 as pb
from recstack.v1 import gateway_pb2_grpc as pb_grpc
from server.rpc import RETRY_PUSHBACK_KEY

WORKLOAD = SyntheticRequests(synthetic_ids("news", 100), synthetic_ids("passage", 100))
SERVICE_S = 0.02  # the slow fake's service time: 50 requests/s when it serves one at a time

Failure = Callable[[int], grpc.StatusCode | None]


class FakeGateway(pb_grpc.GatewayServicer):
    """Recommend after `service_s` (one at a time when `serial`), failing call n with `fail(n)`; a scripted
    Answer stream. Counts what it answered, by status code name."""

    def __init__(
        self,
        service_s: float = 0.0,
        serial: bool = False,
        fail: Failure = lambda n: None,
        timings: tuple[tuple[str, float], ...] = (),
        answer_done: bool = True,
    ) -> None:
        self.service_s, self.serial, self.fail, self.timings = service_s, serial, fail, timings
        self.answer_done = answer_done
        self.lock = asyncio.Lock()
        self.calls = 0
        self.answered: Counter[str] = Counter()

    async def Recommend(self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext) -> pb.RecommendResponse:
        self.calls += 1
        code = self.fail(self.calls)
        if self.serial:
            async with self.lock:
                await asyncio.sleep(self.service_s)
        elif self.service_s:
            await asyncio.sleep(self.service_s)
        self.answered[code.name if code else "OK"] += 1
        if code:
            await context.abort(code, "the fake was told to fail")
        return pb.RecommendResponse(timings=[pb.StageTiming(stage=s, ms=ms) for s, ms in self.timings])

    async def Answer(
        self, request: pb.AnswerRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.AnswerChunk]:
        yield pb.AnswerChunk(sources=pb.AnswerSources(grounded=True))
        for word in ("an", "answer", "of", "five", "tokens"):
            await asyncio.sleep(0.002)
            yield pb.AnswerChunk(token=word)
        if self.answer_done:
            done = pb.AnswerDone(
                finish_reason=pb.FINISH_REASON_STOP, retrieval_ms=1.5, time_to_first_token_ms=3.0, total_ms=12.0
            )
            yield pb.AnswerChunk(done=done)


async def serve_and_load(servicer: pb_grpc.GatewayServicer, **config: object) -> ScenarioResult:
    server = grpc.aio.server()
    pb_grpc.add_GatewayServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        settings = {"warmup_s": 0.0, "duration_s": 0.4, **config}
        return await run_load(LoadConfig(target=f"127.0.0.1:{port}", **settings), WORKLOAD)
    finally:
        await server.stop(0)


def run(servicer: pb_grpc.GatewayServicer, **config: object) -> dict:
    return asyncio.run(serve_and_load(servicer, **config)).to_dict()


class PeerRecorder(FakeGateway):
    """Records the client address (ip:port, one per connection) of every Recommend."""

    def __init__(self) -> None:
        super().__init__()
        self.peers: set[str] = set()

    async def Recommend(self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext) -> pb.RecommendResponse:
        self.peers.add(context.peer())
        return await super().Recommend(request, context)


def test_each_channel_is_its_own_connection():
    # gRPC would let equal channels share one connection; gateway workers on one port are reached per connection.
    recorder = PeerRecorder()
    run(recorder, concurrency=4, channels=4)
    assert len(recorder.peers) == 4


# ------------------------------------------------------------------------------ accounting


def test_every_outcome_is_counted_by_status_code():
    def fail(n: int) -> grpc.StatusCode | None:
        if n % 3 == 0:
            return grpc.StatusCode.INVALID_ARGUMENT
        return grpc.StatusCode.RESOURCE_EXHAUSTED if n % 5 == 0 else None

    fake = FakeGateway(fail=fail)
    result = run(fake, concurrency=4)
    ok = fake.answered.pop("OK")
    assert result["ok"] == ok > 0
    assert result["errors"] == dict(fake.answered)
    assert result["error_examples"]["INVALID_ARGUMENT"] == "the fake was told to fail"
    assert result["requests"] == fake.calls


class PushbackGateway(pb_grpc.GatewayServicer):
    """Rejects every Recommend at once with RESOURCE_EXHAUSTED and a retry pushback of `pushback_ms`."""

    def __init__(self, pushback_ms: str) -> None:
        self.pushback_ms, self.calls = pushback_ms, 0

    async def Recommend(self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext) -> pb.RecommendResponse:
        self.calls += 1
        context.set_trailing_metadata(((RETRY_PUSHBACK_KEY, self.pushback_ms),))
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "over the limit")


@pytest.mark.parametrize(("pushback_ms", "max_calls"), [("100", 2 * 5), ("-1", None), ("soon", None)])
def test_a_closed_loop_worker_waits_out_the_servers_retry_pushback(pushback_ms: str, max_calls: int | None):
    fake = PushbackGateway(pushback_ms)
    result = run(fake, concurrency=2, duration_s=0.4)
    assert result["errors"] == {"RESOURCE_EXHAUSTED": fake.calls}
    assert result["error_latency_ms"]["RESOURCE_EXHAUSTED"]["p99_ms"] < 100  # rejections are timed too
    assert result["error_answer_ms"]["RESOURCE_EXHAUSTED"]["p99_ms"] < 100  # also from the actual send
    if max_calls is not None:  # 2 workers, one call per 100 ms each over 0.4 s
        assert fake.calls <= max_calls
    else:  # "do not retry" or an unreadable hint: no wait, the workers keep calling
        assert fake.calls > 2 * 5 + 2


def test_deadline_exceeded_is_an_error_not_a_latency():
    result = run(FakeGateway(service_s=0.2), concurrency=2, deadline_ms=20)
    assert result["ok"] == 0
    assert set(result["errors"]) == {"DEADLINE_EXCEEDED"}
    assert result["requests"] > 0


def test_warm_up_requests_are_not_recorded():
    def failing_first_five(n: int) -> grpc.StatusCode | None:
        return grpc.StatusCode.UNAVAILABLE if n <= 5 else None

    assert run(FakeGateway(fail=failing_first_five), concurrency=1)["errors"] == {"UNAVAILABLE": 5}
    fake = FakeGateway(fail=failing_first_five)
    result = run(fake, concurrency=1, warmup_s=0.5)
    assert result["errors"] == {}
    assert 0 < result["ok"] < fake.calls


def test_mix_reports_each_rpc_separately():
    # FakeGateway leaves Search to the generated base class, which answers UNIMPLEMENTED.
    result = run(FakeGateway(), concurrency=2, mix={"recommend": 1.0, "search": 1.0})
    assert result["rpc"] == "mix"
    assert result["by_rpc"]["recommend"]["errors"] == {}
    assert result["by_rpc"]["search"]["ok"] == 0
    assert result["by_rpc"]["search"]["errors"] == {"UNIMPLEMENTED": result["by_rpc"]["search"]["requests"]}
    assert result["errors"] == result["by_rpc"]["search"]["errors"]


# ------------------------------------------------------------------------------ stages and answers


def test_stage_times_and_overhead_come_from_the_server_timings():
    fake = FakeGateway(service_s=0.005, timings=(("triton.user_encoder", 1.0), ("milvus.search", 2.0)))
    result = run(fake, concurrency=2)
    assert result["stages"]["triton.user_encoder"]["p50_ms"] == pytest.approx(1.0, rel=1e-3)
    assert result["stages"]["milvus.search"]["p99_ms"] == pytest.approx(2.0, rel=1e-3)
    # closed loop: latency and overhead are measured from the same send, so they differ by the stage sum
    assert result["overhead_p50_ms"] == pytest.approx(result["p50_ms"] - 3.0, abs=0.05)


def test_answer_streams_record_first_token_and_token_rate():
    result = run(FakeGateway(), concurrency=2, mix={"answer": 1.0})
    assert result["ok"] > 0 and result["errors"] == {}
    assert 0 < result["ttft_p50_ms"] <= result["p50_ms"]
    assert 0 < result["tokens_per_s_p50"] <= 4 / 0.008  # 4 gaps of at least 2 ms between 5 tokens
    assert result["stages"]["answer.retrieval"]["p50_ms"] == pytest.approx(1.5, rel=1e-3)
    assert result["stages"]["answer.total"]["p50_ms"] == pytest.approx(12.0, rel=1e-3)


def test_an_answer_stream_without_done_is_an_error():
    result = run(FakeGateway(answer_done=False), concurrency=1, mix={"answer": 1.0})
    assert result["ok"] == 0
    assert set(result["errors"]) == {"INCOMPLETE_STREAM"}


# ------------------------------------------------------------------------------ open loop


def test_open_loop_measures_from_the_intended_send_time():
    # Offered 100 req/s to a server that completes 50/s: the queue grows through the run and every
    # request's latency includes its wait, which a closed loop (waiting for each answer) never sees.
    opened = run(FakeGateway(service_s=SERVICE_S, serial=True), rate=100.0, duration_s=1.0, deadline_ms=10_000)
    closed = run(FakeGateway(service_s=SERVICE_S, serial=True), concurrency=1, duration_s=0.5)
    assert opened["requests"] == 100 and opened["dropped"] == 0 and opened["errors"] == {}
    assert opened["p99_ms"] > 10 * closed["p99_ms"]
    assert opened["p50_ms"] > closed["max_ms"]


def test_open_loop_counts_sends_skipped_at_the_in_flight_cap():
    result = run(FakeGateway(service_s=SERVICE_S, serial=True), rate=100.0, duration_s=0.5, max_in_flight=3)
    assert result["dropped"] > 0
    assert result["requests"] + result["dropped"] == 50  # every intended send is accounted for


# ------------------------------------------------------------------------------ config and CLI


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"concurrency": 8, "rate": 10.0}, "exactly one"),
        ({"concurrency": 1_000_000}, "concurrency"),
        ({"rate": 1e9}, "rate"),
        ({"concurrency": 1, "duration_s": 1e6}, "duration_s"),
        ({"concurrency": 1, "deadline_ms": 0}, "deadline_ms"),
        ({"concurrency": 1, "ca_cert": Path("ca.pem")}, "only used with tls"),
    ],
)
def test_absurd_configs_are_refused_naming_the_field(overrides: dict, field: str):
    with pytest.raises(ValidationError, match=field):
        LoadConfig(target="127.0.0.1:1", **overrides)


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--concurrency", "0"], "--concurrency"),
        (["--rate", "1e9"], "--rate"),
        (["--concurrency", "1", "--duration-s", "99999"], "--duration-s"),
        (["--concurrency", "1", "--rpc", "recomend"], "recomend"),
        (["--concurrency", "1", "--rate", "5"], "not allowed with"),
    ],
)
def test_cli_rejects_bad_flags_by_name(argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exited:
        loadgen.main(["--target", "127.0.0.1:1", *argv])
    assert exited.value.code == 2
    assert flag in capsys.readouterr().err


def test_cli_reports_an_unreachable_target(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    monkeypatch.setattr(loadgen, "CONNECT_TIMEOUT_S", 0.3)
    target = f"127.0.0.1:{free_port()}"
    assert loadgen.main(["--target", target, "--concurrency", "1", "--synthetic-items", "10"]) == 1
    assert f"cannot connect to {target}" in capsys.readouterr().out


class SyncGateway(pb_grpc.GatewayServicer):
    def Recommend(self, request: pb.RecommendRequest, context: grpc.ServicerContext) -> pb.RecommendResponse:
        return pb.RecommendResponse(items=[pb.NewsResult(id=request.history[0].id)] if request.history else [])


@pytest.fixture
def sync_server(request: pytest.FixtureRequest) -> Iterator[tuple[grpc.Server, int]]:
    """A threaded (non-asyncio) server, so the CLI can run its own event loop in the test's thread."""
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_GatewayServicer_to_server(SyncGateway(), server)
    yield server
    server.stop(0)


def test_cli_runs_and_writes_the_suite_json(sync_server: grpc.Server, tmp_path: Path):
    port = sync_server.add_insecure_port("127.0.0.1:0")
    sync_server.start()
    out = tmp_path / "result.json"
    argv = ["--target", f"127.0.0.1:{port}", "--concurrency", "2", "--duration-s", "0.5", "--warmup-s", "0.1"]
    assert loadgen.main([*argv, "--synthetic-items", "50", "--json", str(out)]) == 0
    scenario = json.loads(out.read_text())["scenarios"]["recommend@c2"]
    assert scenario["ok"] > 0 and scenario["errors"] == {}
    assert scenario["concurrency"] == 2 and scenario["mode"] == "closed"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls_with_a_private_ca(sync_server: grpc.Server, tmp_path: Path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    port = sync_server.add_secure_port("127.0.0.1:0", credentials)
    sync_server.start()
    config = LoadConfig(target=f"127.0.0.1:{port}", tls=True, ca_cert=cert, concurrency=1, duration_s=0.3, warmup_s=0.0)
    result = asyncio.run(run_load(config, WORKLOAD)).to_dict()
    assert result["ok"] > 0 and result["errors"] == {}
