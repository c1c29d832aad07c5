"""Run one local dependency (tritonserver, Milvus, the LLM server, the gateway) as a child process.

Every local part of the stack is started the same way: in its own process group (so helper
processes such as Triton's python-backend stubs die with it), with its output in a log file,
ready only when a probe says so, and stopped with a signal that lets it clean up, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


class StartupError(RuntimeError):
    """A managed process exited or did not become ready in time; the message ends with its log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a text file ('' when it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists (and is not a zombie we can reap)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def child_pids(parent: int, proc: Path = Path("/proc")) -> set[int]:
    """Children of `parent`, whichever of its threads forked them (empty once it is gone)."""
    pids: set[int] = set()
    for children in (proc / str(parent) / "task").glob("*/children"):
        with contextlib.suppress(OSError):
            pids.update(int(pid) for pid in children.read_text().split())
    return pids


def stop_group(pid: int, stop_signal: int = signal.SIGTERM, grace_s: float = 15.0) -> None:
    """Signal the process group led by `pid`, wait up to `grace_s`, then SIGKILL what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, stop_signal)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _group_alive(pid):
        _reap(pid)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    _reap(pid)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


@dataclass
class ManagedProcess:
    """A child process with a readiness probe, a log file and a clean stop.

    `ready` is polled until it returns True; the process exiting first, or `startup_timeout_s`
    passing, raises StartupError with the tail of the log.
    """

    name: str
    argv: Sequence[str]
    log_path: Path
    ready: Callable[[], bool]
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    startup_timeout_s: float = 60.0
    stop_signal: int = signal.SIGTERM
    stop_grace_s: float = 15.0
    process: subprocess.Popen | None = field(default=None, init=False)

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                list(self.argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(self.env) if self.env is not None else None,
                cwd=self.cwd,
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            code = self.process.poll()
            if code is not None:
                raise StartupError(f"{self.name} exited with code {code} during startup:\n{tail(self.log_path)}")
            if self._probe():
                return
            if time.monotonic() > deadline:
                raise StartupError(
                    f"{self.name} not ready after {self.startup_timeout_s:.0f}s "
                    f"(log {self.log_path}):\n{tail(self.log_path)}"
                )
            time.sleep(0.1)

    def _probe(self) -> bool:
        try:
            return bool(self.ready())
        except Exception:
            return False

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was never started"
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Stop the whole process group; safe to call twice."""
        if self.process is None:
            return
        stop_group(self.process.pid, self.stop_signal, self.stop_grace_s)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=1)

    def __enter__(self) -> ManagedProcess:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
