"""`gateway.workers: N` (N > 1): N gateway processes sharing one port, watched by a supervisor.

Why processes: a grpc.aio gateway runs its Python (validation, protobuf, numpy ranking) on one thread, so one
process uses about one core however many a machine has. N processes use up to N.

How:
- The supervisor (this module) serves no RPCs. It holds host:port with an SO_REUSEPORT socket that never listens:
  a port another program holds fails at once, and port 0 becomes one concrete port that every worker binds.
- Each worker is `python -m server` re-executed with the same arguments plus `--worker I --port P`: a whole gateway
  (its own Triton/Milvus/LLM channels, item cache and warm-up, admission limits, health service) binding the same
  address with `grpc.so_reuseport`. The kernel spreads new *connections* over the listening workers. A gRPC client
  keeps one HTTP/2 connection, so one client talks to one worker: spread load with many clients or several channels
  that do not share a connection (`benchmarks.loadgen --channels N`).
- Health stays per worker: a health check is answered by the worker its connection reached, about itself; a
  worker whose dependencies are down says NOT_SERVING while another may still say SERVING.
- Metrics: prometheus-client's multiprocess mode. Workers write their samples into a temporary directory the
  supervisor creates (PROMETHEUS_MULTIPROC_DIR); the supervisor serves `gateway.metrics_port` from a
  `MultiProcessCollector` over it, so counters and histograms are totals over all workers (those of exited workers
  included) and gauges are combined as each one's `multiprocess_mode` says (`server.observability`).
- Lifecycle: SIGTERM/SIGINT to the supervisor sends SIGTERM to every worker, which drains as a lone gateway does;
  the supervisor exits 0 once they have. A worker that exits on its own is logged and restarted after a backoff
  (doubling from RESTART_DELAY_S to MAX_RESTART_DELAY_S; back to the start after a worker served STABLE_S). If a
  worker exits START_ATTEMPTS times in a row before serving (bad settings, a dependency that never comes up), the
  supervisor stops the others and exits 1; the worker's error is on stderr, which workers share with it.

With `workers: 1` (the default) none of this runs: `python -m server` is the gateway itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from server.config import Settings
from server.transport import DRAIN_GRACE_S, READY_LINE, check_exposure

log = structlog.get_logger("recstack.supervisor")

START_ATTEMPTS = 3
RESTART_DELAY_S = 0.5
MAX_RESTART_DELAY_S = 30.0
STABLE_S = 60.0
STOP_MARGIN_S = 10.0  # beyond the workers' own drain (DRAIN_GRACE_S) before they are killed


class WorkerStartFailed(Exception):
    """A worker kept exiting before it served."""


def supervise(settings: Settings, argv: Sequence[str]) -> int:
    """Run `settings.gateway.worker_processes` workers until SIGTERM/SIGINT; the exit status (0, or 1 on failure).

    `argv` are this process's arguments; each worker gets them again, with its index and the resolved port.
    """
    check_exposure(settings.gateway, settings.security)  # the workers would refuse too, START_ATTEMPTS times
    gw = settings.gateway
    with reserve_port(gw.host, gw.port) as port, metrics_directory() as metrics_dir:
        if gw.metrics_port:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=str(metrics_dir))  # type: ignore[no-untyped-call]  # unannotated
            start_http_server(gw.metrics_port, addr=gw.host, registry=registry)
        supervisor = Supervisor(gw.worker_processes, [*argv, "--port", str(port)], metrics_dir)
        log.info("supervising", workers=gw.worker_processes, address=f"{gw.host}:{port}", metrics_dir=str(metrics_dir))
        code = asyncio.run(supervisor.run(f"{READY_LINE}{gw.host}:{port}"))
    return code


@contextlib.contextmanager
def reserve_port(host: str, port: int) -> Iterator[int]:
    """Bind (never listen on) host:port with SO_REUSEPORT for the block; yields the port (a free one for 0).

    Exits (SystemExit) when another program holds the port without SO_REUSEPORT (or as another user).
    """
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            held.bind((host.strip("[]"), port))
        except OSError as error:
            raise SystemExit(f"gateway cannot use {host}:{port}: {error}") from None
        yield held.getsockname()[1]


@contextlib.contextmanager
def metrics_directory() -> Iterator[Path]:
    """A fresh PROMETHEUS_MULTIPROC_DIR for the workers, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="recstack-metrics-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Supervisor:
    """Starts `count` workers (`python -m server ARGV --worker I`), restarts those that exit, stops them all."""

    def __init__(self, count: int, argv: Sequence[str], metrics_dir: Path) -> None:
        self.count = count
        self.argv = list(argv)
        self.metrics_dir = metrics_dir
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = asyncio.Event()
        self._serving: set[int] = set()  # workers that have printed their ready line at least once
        self._all_serving = asyncio.Event()

    async def run(self, ready_line: str) -> int:
        """Until SIGTERM/SIGINT (0) or a worker that cannot start (1); prints `ready_line` once all serve."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stopping.set)
        workers = [asyncio.create_task(self._keep_running(index)) for index in range(self.count)]
        announce = asyncio.create_task(self._announce(ready_line))
        stop = asyncio.create_task(self._stopping.wait())
        await asyncio.wait([stop, *workers], return_when=asyncio.FIRST_COMPLETED)
        failed = next((task for task in workers if task.done() and task.exception() is not None), None)
        self._stopping.set()
        await self._stop_workers(workers)
        announce.cancel()
        if failed is not None:
            log.error("supervisor_failed", error=str(failed.exception()))
            return 1
        log.info("stopped")
        return 0

    async def _announce(self, ready_line: str) -> None:
        await self._all_serving.wait()
        print(ready_line, flush=True)

    async def _keep_running(self, index: int) -> None:
        """Run worker `index`, restarting it when it exits, until the supervisor stops."""
        exits_before_serving, quick_exits = 0, 0
        while not self._stopping.is_set():
            started = time.monotonic()
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "server",
                *self.argv,
                "--worker",
                str(index),
                stdout=asyncio.subprocess.PIPE,
                env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir)},
            )
            self.processes[index] = process
            if self._stopping.is_set():  # stopped while it was being started: _stop_workers may have missed it
                process.send_signal(signal.SIGTERM)
            served = await self._relay_until_exit(index, process)
            code = await process.wait()
            mark_process_dead(process.pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]  # unannotated
            if self._stopping.is_set():
                return
            exits_before_serving = 0 if served else exits_before_serving + 1
            quick_exits = 0 if time.monotonic() - started >= STABLE_S else quick_exits + 1
            if exits_before_serving >= START_ATTEMPTS:
                raise WorkerStartFailed(f"worker {index} exited {START_ATTEMPTS} times before serving (last: {code})")
            delay = min(RESTART_DELAY_S * 2 ** max(quick_exits - 1, 0), MAX_RESTART_DELAY_S)
            log.error("worker_exited", worker=index, pid=process.pid, code=code, restart_in_s=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _relay_until_exit(self, index: int, process: asyncio.subprocess.Process) -> bool:
        """Copy the worker's stdout to ours until it closes, except its ready line; whether that line came."""
        assert process.stdout is not None
        served = False
        async for raw in process.stdout:
            line = raw.decode(errors="replace")
            if line.startswith(READY_LINE) and not served:
                served = True
                self._serving.add(index)
                log.info("worker_serving", worker=index, pid=process.pid)
                if len(self._serving) == self.count:
                    self._all_serving.set()
                continue
            sys.stdout.write(line)
            sys.stdout.flush()
        return served

    async def _stop_workers(self, workers: list[asyncio.Task[None]]) -> None:
        """SIGTERM every live worker, wait for them to drain, SIGKILL any still running after that."""
        for process in self.processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        _, pending = await asyncio.wait(workers, timeout=DRAIN_GRACE_S + STOP_MARGIN_S)
        for process in self.processes.values():
            if process.returncode is None:
                log.warning("worker_killed", pid=process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        if pending:
            await asyncio.wait(pending)
