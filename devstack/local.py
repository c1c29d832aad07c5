"""The whole local stack on loopback: Triton, Milvus, the LLM server and the gateway, as real processes.

Used by `make up` / `make down` (through `python -m devstack`), by the end-to-end tests and by
the benchmarks. Start order is dependency order; stop is the reverse. The gateway runs as its own
process (`python -m server`) configured only through `RECSTACK_*` environment variables, exactly as
it would be in a container.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import contract
from contract import layout
from devstack.llm import LocalLLMServer
from devstack.milvus import MilvusServer
from devstack.process import ManagedProcess, free_port
from devstack.triton import TritonServer
from server.health import SERVICE

HOST = "127.0.0.1"
MODELS = contract.MODEL_NAMES
LOCAL_REPOSITORY = layout.SERVING.repository("cpu")  # python backend: the only one the local tritonserver has


@dataclass
class StackConfig:
    """Where the local stack reads its models from and keeps its state."""

    triton_repo: Path = LOCAL_REPOSITORY
    tokenizer_dir: Path = layout.SERVING.tokenizers
    ranking_weights: Path = layout.SERVING.ranking
    state_dir: Path = layout.STACK
    gateway_port: int = 50051  # 0: any free port
    metrics_port: int = 9464  # 0: any free port
    llm: bool = True
    milvus_auto_compaction: bool = True  # benchmarks turn it off (MilvusServer.auto_compaction)
    gateway_env: dict[str, str] = field(default_factory=dict)  # extra RECSTACK_* settings

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"


def gateway_serving(address: str, service: str = SERVICE, timeout_s: float = 1.0) -> bool:
    """True when the gateway's health service reports `service` SERVING."""
    try:
        with grpc.insecure_channel(address) as channel:
            request = health_pb2.HealthCheckRequest(service=service)
            response = health_pb2_grpc.HealthStub(channel).Check(request, timeout=timeout_s)
    except grpc.RpcError:
        return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


@dataclass
class LocalStack:
    config: StackConfig = field(default_factory=StackConfig)
    triton: TritonServer | None = field(default=None, init=False)
    milvus: MilvusServer | None = field(default=None, init=False)
    llm: LocalLLMServer | None = field(default=None, init=False)
    gateway: ManagedProcess | None = field(default=None, init=False)
    gateway_address: str = field(default="", init=False)

    def start(self) -> LocalStack:
        """Start every part and wait until the gateway reports SERVING; on failure stop what started."""
        cfg = self.config
        try:
            self.milvus = MilvusServer(cfg.state_dir / "milvus", auto_compaction=cfg.milvus_auto_compaction).start()
            self.triton = TritonServer(cfg.triton_repo, MODELS, cfg.logs / "triton.log").start()
            if cfg.llm:
                self.llm = LocalLLMServer(cfg.logs / "llm.log").start()
            self.start_gateway()
        except BaseException:
            self.stop()
            raise
        return self

    def start_gateway(self) -> None:
        cfg = self.config
        port = cfg.gateway_port or free_port(HOST)
        self.gateway_address = f"{HOST}:{port}"
        self.gateway = self.gateway_process("gateway", port, cfg.logs / "gateway.log")
        self.gateway.start()

    def gateway_process(
        self, name: str, port: int, log_path: Path, settings: Mapping[str, str] | None = None
    ) -> ManagedProcess:
        """A gateway (not started) on `port` over this stack's Triton, Milvus and LLM; `settings` are extra
        RECSTACK_* variables, e.g. for a second gateway with other limits or collections beside the main one."""
        address = f"{HOST}:{port}"
        return ManagedProcess(
            name=name,
            argv=[sys.executable, "-m", "server", "--log-format", "json"],
            log_path=log_path,
            ready=lambda: gateway_serving(address),
            env={**os.environ, **self.gateway_environment(port), **(settings or {})},
            startup_timeout_s=120.0,
        )

    def gateway_environment(self, port: int) -> dict[str, str]:
        cfg = self.config
        env = {
            "RECSTACK_GATEWAY__HOST": HOST,
            "RECSTACK_GATEWAY__PORT": str(port),
            "RECSTACK_GATEWAY__METRICS_PORT": str(cfg.metrics_port or free_port(HOST)),
            "RECSTACK_TRITON__URL": self.triton.grpc_url,
            "RECSTACK_TRITON__TOKENIZER_DIR": str(cfg.tokenizer_dir),
            "RECSTACK_RECOMMEND__RANKING_WEIGHTS": str(cfg.ranking_weights),
            "RECSTACK_MILVUS__URI": self.milvus.uri,
        }
        if self.llm is not None:
            env["RECSTACK_LLM__URL"] = self.llm.url
            env["RECSTACK_LLM__MODEL"] = self.llm.config.model_name
        return {**env, **cfg.gateway_env}

    @property
    def metrics_url(self) -> str:
        return f"http://{HOST}:{self.gateway.env['RECSTACK_GATEWAY__METRICS_PORT']}/metrics"

    def stop(self) -> None:
        """Stop in reverse order; safe on a partly started stack and when called twice."""
        for part in (self.gateway, self.llm, self.triton, self.milvus):
            if part is not None:
                part.stop()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
