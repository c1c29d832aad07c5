"""`gateway.workers: 2` on the real stack: two processes serve one port, metrics add up over them, a killed worker
is replaced, SIGTERM drains them all; and a worker that cannot start ends the supervisor with status 1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from waiting import wait_until

from contract.channel import OWN_CONNECTION_OPTION
from devstack.local import gateway_serving
from devstack.process import free_port, stop_group
from recstack.v1 import gateway_pb2 as pb
from recstack.v1 import gateway_pb2_grpc

START_TIMEOUT_S = 240.0  # two workers import the gateway side by side on a busy 2-core machine
RECOMMENDS_OK = ("recstack_rpc_seconds_count", {"method": "Recommend", "code": "OK"})


@dataclass
class Supervised:
    """A `python -m server` supervisor of two workers, its logs (stderr, JSON lines) and addresses."""

    process: subprocess.Popen[bytes]
    log_path: Path
    address: str
    metrics_url: str

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = self.log_path.read_text(errors="replace").splitlines()
        records = [json.loads(line) for line in lines if line.startswith("{")]
        return [record for record in records if record.get("event") == name]

    def serving_pids(self) -> list[int]:
        """The pids of workers that reported serving, in order (a restarted worker adds one)."""
        return [record["pid"] for record in self.events("worker_serving")]

    @property
    def metrics_dir(self) -> Path:
        return Path(self.events("supervising")[0]["metrics_dir"])


@pytest.fixture(scope="module")
def supervised(stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervised]:
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        **stack.gateway_environment(port),
        "RECSTACK_GATEWAY__METRICS_PORT": str(metrics_port),
        "RECSTACK_GATEWAY__WORKERS": "2",
    }
    log_path = tmp_path_factory.mktemp("workers") / "supervisor.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "server"], stdout=subprocess.DEVNULL, stderr=log, env=env, start_new_session=True
        )
    running = Supervised(process, log_path, f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics")
    try:
        wait_until(lambda: len(running.serving_pids()) == 2, START_TIMEOUT_S, "two workers serving")
        wait_until(lambda: gateway_serving(running.address), 30, "health SERVING")
        yield running
    finally:
        stop_group(process.pid)


def own_connection(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=[(OWN_CONNECTION_OPTION, 1)])


def recommend_over_connections(address: str, connections: int, per_connection: int) -> None:
    """Cold-start Recommends, `per_connection` over each of `connections` separate connections."""
    for _ in range(connections):
        with own_connection(address) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            for _ in range(per_connection):
                stub.Recommend(pb.RecommendRequest(user_id="new-user", k=5), timeout=30)


def scraped(url: str, name: str, labels: dict[str, str]) -> float:
    text = httpx.get(url, timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def per_worker(metrics_dir: Path, name: str, labels: dict[str, str], scratch: Path) -> dict[int, float]:
    """The sample of each worker alone, read from its own histogram file (histogram_<pid>.db)."""
    values = {}
    for path in metrics_dir.glob("histogram_*.db"):
        pid = int(path.stem.split("_")[1])
        alone = scratch / str(pid)
        alone.mkdir()
        shutil.copy(path, alone / path.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        values[pid] = registry.get_sample_value(name, labels) or 0.0
    return values


@pytest.mark.stack
@pytest.mark.slow
def test_two_workers_serve_the_port_and_the_scraped_counter_is_their_sum(supervised: Supervised, tmp_path) -> None:
    before = scraped(supervised.metrics_url, *RECOMMENDS_OK)
    recommend_over_connections(supervised.address, connections=16, per_connection=3)
    total = scraped(supervised.metrics_url, *RECOMMENDS_OK)
    assert total - before == 16 * 3
    by_worker = per_worker(supervised.metrics_dir, *RECOMMENDS_OK, tmp_path)
    assert set(by_worker) == set(supervised.serving_pids())  # both served (16 connections, spread by the kernel)
    assert all(count > 0 for count in by_worker.values())
    assert sum(by_worker.values()) == total


@pytest.mark.stack
@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_its_counts_are_kept(supervised: Supervised) -> None:
    victim = supervised.serving_pids()[0]
    before = scraped(supervised.metrics_url, *RECOMMENDS_OK)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(supervised.serving_pids()) == 3, START_TIMEOUT_S, "a replacement worker serving")
    [exited] = supervised.events("worker_exited")
    assert exited["pid"] == victim and exited["code"] == -signal.SIGKILL
    assert supervised.serving_pids()[2] not in supervised.serving_pids()[:2]
    assert scraped(supervised.metrics_url, *RECOMMENDS_OK) == before  # the dead worker's requests still count
    recommend_over_connections(supervised.address, connections=8, per_connection=1)
    assert scraped(supervised.metrics_url, *RECOMMENDS_OK) == before + 8


@pytest.mark.stack
@pytest.mark.slow
def test_sigterm_drains_every_worker_and_exits_0(supervised: Supervised, gateway) -> None:
    """Runs last in this module: it stops the supervised gateway."""
    question = pb.AnswerRequest(question="What happened?", max_tokens=2)
    assert list(gateway.Answer(question, timeout=120))  # the LLM has its model loaded: the drained one is quick
    with own_connection(supervised.address) as channel:
        answer = gateway_pb2_grpc.GatewayStub(channel).Answer(question, timeout=60)
        first = next(answer)  # the sources: the Answer is in flight now
        supervised.process.send_signal(signal.SIGTERM)
        rest = list(answer)  # drained: the stream ends normally instead of being cut
    assert first.WhichOneof("chunk") == "sources" and rest and answer.code() == grpc.StatusCode.OK
    assert supervised.process.wait(timeout=60) == 0
    for pid in supervised.serving_pids():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not supervised.metrics_dir.exists()


@pytest.mark.slow
def test_workers_that_cannot_start_end_the_supervisor_with_status_1_and_their_error(tmp_path) -> None:
    env = {
        **os.environ,
        "RECSTACK_GATEWAY__WORKERS": "2",
        "RECSTACK_GATEWAY__METRICS_PORT": "0",
        "RECSTACK_TRITON__TOKENIZER_DIR": str(tmp_path / "missing-tokenizers"),  # read by workers, at start
    }
    done = subprocess.run(
        [sys.executable, "-m", "server", "--port", "0"], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 1
    assert "missing-tokenizers" in done.stderr
    assert done.stderr.count('"event": "worker_exited"') >= 2  # retried before giving up
    assert '"event": "supervisor_failed"' in done.stderr


def test_a_supervisor_refuses_an_exposed_address_itself_before_starting_workers() -> None:
    env = {**os.environ, "RECSTACK_GATEWAY__WORKERS": "2", "RECSTACK_GATEWAY__HOST": "0.0.0.0"}
    done = subprocess.run([sys.executable, "-m", "server"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0 and "gateway refused to start" in done.stderr
    assert "security.allow_insecure" in done.stderr and "worker" not in done.stderr
