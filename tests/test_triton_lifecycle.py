"""Starting and stopping the REAL bundled tritonserver: no leftovers, clear startup errors, the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from triton_fixtures import SPECS, export_tiny_model

from contract import QUERY_ENCODER
from devstack.process import StartupError, free_port, pid_alive
from devstack.triton import TritonServer
from export.triton_repo import write_model

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("repo")
    spec = SPECS[QUERY_ENCODER]
    write_model(base / "repo", spec, export_tiny_model(spec, base / "model.onnx"), "cpu")
    return base / "repo"


def wait_until(condition, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_stop_leaves_no_stub_process_and_no_shared_memory(repo: Path, tmp_path: Path) -> None:
    server = TritonServer(repo, [QUERY_ENCODER], tmp_path / "triton.log").start()
    try:
        stubs, regions = server.stub_pids(), server.shm_regions()
        assert stubs and regions
    finally:
        server.stop()
    assert not server.running()
    assert not [pid for pid in stubs if pid_alive(pid)]
    assert not [region for region in regions if region.exists()]


def test_stop_cleans_up_after_a_server_that_was_killed(repo: Path, tmp_path: Path) -> None:
    server = TritonServer(repo, [QUERY_ENCODER], tmp_path / "triton.log").start()
    try:
        stubs, regions = server.stub_pids(), server.shm_regions()
        os.kill(server.pid, signal.SIGKILL)  # no chance to clean up: its shared memory stays behind
        assert wait_until(lambda: not server.running())
        assert all(region.exists() for region in regions)
    finally:
        server.stop()
    assert not [pid for pid in stubs if pid_alive(pid)]
    assert not [region for region in regions if region.exists()]


def test_a_model_that_fails_to_load_stops_startup_with_the_log_tail(repo: Path, tmp_path: Path) -> None:
    broken = tmp_path / "repo"
    spec = SPECS[QUERY_ENCODER]
    version_dir = write_model(broken, spec, repo / QUERY_ENCODER / "1" / "model.onnx", "cpu")
    (version_dir / "model.onnx").write_bytes(b"not an onnx graph")
    server = TritonServer(broken, [QUERY_ENCODER], tmp_path / "triton.log", startup_timeout_s=30)
    with pytest.raises(StartupError, match=r"(?s)tritonserver exited.*query_encoder.*UNAVAILABLE"):
        server.start()
    assert not server.running()


def test_cli_serves_the_repository_until_interrupted(repo: Path, tmp_path: Path) -> None:
    port = free_port()
    log, output = tmp_path / "triton.log", tmp_path / "cli.txt"
    command = [sys.executable, "-m", "devstack.triton", "--repo", str(repo), "--grpc-port", str(port)]
    with open(output, "w") as sink:
        cli = subprocess.Popen([*command, "--log", str(log)], stdout=sink, stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: "ready" in output.read_text(), timeout_s=60), output.read_text()
        with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
            assert client.is_model_ready(QUERY_ENCODER, client_timeout=5.0)
        cli.send_signal(signal.SIGINT)
        cli.wait(timeout=30)
    finally:
        if cli.poll() is None:
            cli.terminate()  # the CLI stops its server on SIGTERM too
            cli.wait(timeout=30)
    assert cli.returncode == 0, output.read_text()
    assert f"grpc 127.0.0.1:{port}" in output.read_text()
    assert "successfully loaded 'query_encoder'" in log.read_text()
