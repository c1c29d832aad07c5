"""Start the local LLM server (`devstack.llm_server`) as a managed child process.

    with LocalLLMServer(log_path=layout.LOGS / "llm.log") as llm:
        client = make_llm_client(llm.settings("ollama"))   # or "openai": the same server speaks both

Ready once `GET /api/version` answers, which the server only does after the model is loaded. `counts`
reads what the server did with the requests so far (its `/metrics`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx

from devstack.llm_server.config import ServerConfig
from devstack.llm_server.metrics import REQUESTS, counts_by_outcome
from devstack.process import ManagedProcess, free_port
from server.config import LLMSettings

READY_PATH = "/api/version"
METRICS_PATH = "/metrics"


@dataclass
class LocalLLMServer:
    log_path: Path
    config: ServerConfig = field(default_factory=lambda: ServerConfig(port=free_port()))
    startup_timeout_s: float = 60.0
    _process: ManagedProcess | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    def settings(self, protocol: Literal["ollama", "openai"] = "ollama") -> LLMSettings:
        """Client settings pointing at this server."""
        return LLMSettings(protocol=protocol, url=self.url, model=self.config.model_name)

    def start(self) -> LocalLLMServer:
        """Start (or restart, on the same port) and wait until ready; StartupError with the log tail if not."""
        self._process = ManagedProcess(
            name="llm-server",
            argv=[sys.executable, "-m", "devstack.llm_server", *self.config.to_argv()],
            log_path=self.log_path,
            ready=self._ready,
            startup_timeout_s=self.startup_timeout_s,
            stop_grace_s=10.0,
        )
        self._process.start()
        return self

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the LLM server was never started")
        return self._process.pid

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()

    def counts(self, counter: str = REQUESTS) -> dict[str, float]:
        """One of the server's `/metrics` counters by outcome, e.g. `counts()["cancelled"]`."""
        return counts_by_outcome(httpx.get(self.url + METRICS_PATH, timeout=5).text, counter)

    def running(self) -> bool:
        return self._process is not None and self._process.running()

    def _ready(self) -> bool:
        return httpx.get(self.url + READY_PATH, timeout=0.5).status_code == httpx.codes.OK

    def __enter__(self) -> LocalLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
