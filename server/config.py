"""The gateway's one configuration object: defaults < YAML file < environment variables.

Environment variables use the prefix `RECSTACK_` and `__` between levels, e.g.
`RECSTACK_MILVUS__URI=http://milvus:19530` or `RECSTACK_TRITON__TIMEOUT_S=0.5`.
Production differs from the local stack only here: another URI, another file (configs/production.yaml).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ARTIFACTS = Path("artifacts")


class TritonSettings(BaseModel):
    """Triton Inference Server (KServe v2 gRPC) and the encoders it serves."""

    url: str = "127.0.0.1:8001"
    timeout_s: float = Field(2.0, gt=0, description="Deadline of one inference call.")
    news_encoder: str = "nrms_news_encoder"
    user_encoder: str = "nrms_user_encoder"
    query_encoder: str = "query_encoder"
    doc_encoder: str = "doc_encoder"
    tokenizer_dir: Path = Field(
        ARTIFACTS / "serving" / "tokenizers",
        description="Tokenizer files written by `make export` (one per encoder input, shared with training).",
    )


class MilvusSettings(BaseModel):
    """Milvus: a file path opens Milvus Lite, http(s)://host:port a standalone server or a cluster."""

    uri: str = "http://127.0.0.1:19530"
    token: str = ""
    timeout_s: float = Field(2.0, gt=0, description="Deadline of one Milvus call.")
    news_collection: str = "news"
    passage_collection: str = "passages"


class LLMSettings(BaseModel):
    """The LLM behind `Answer`: Ollama's API (production default) or an OpenAI-compatible server."""

    protocol: Literal["ollama", "openai"] = "ollama"
    url: str = "http://127.0.0.1:11434"
    model: str = "smollm2-135m-instruct"
    api_key: str = ""
    connect_timeout_s: float = Field(2.0, gt=0)


class GatewaySettings(BaseModel):
    """The gRPC server itself and its request limits."""

    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535)
    metrics_port: int = Field(9464, ge=0, le=65535, description="Prometheus /metrics; 0 disables it.")
    max_concurrent_rpcs: int = Field(256, gt=0, description="Above this, RPCs get RESOURCE_EXHAUSTED.")
    max_k: int = Field(100, gt=0)
    max_text_chars: int = Field(2000, gt=0)


class Settings(BaseSettings):
    """Everything the gateway needs, flowing down to each component."""

    model_config = SettingsConfigDict(env_prefix="RECSTACK_", env_nested_delimiter="__", extra="forbid")

    triton: TritonSettings = TritonSettings()
    milvus: MilvusSettings = MilvusSettings()
    llm: LLMSettings = LLMSettings()
    gateway: GatewaySettings = GatewaySettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file's values (passed as init kwargs by `load_settings`).
        return env_settings, init_settings


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Settings from an optional YAML file, then the environment; keyword overrides win over both."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        data = loaded
    settings = Settings(**data)
    return settings.model_copy(update=overrides) if overrides else settings
