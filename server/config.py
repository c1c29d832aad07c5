"""The gateway's one configuration object: defaults < YAML file < environment variables < overrides.

Every section rejects unknown keys, so a misspelt key is an error wherever it comes from.

Environment variables use the prefix `RECSTACK_` and `__` between levels, e.g.
`RECSTACK_MILVUS__URI=http://milvus:19530` or `RECSTACK_TRITON__TIMEOUT_S=0.5`.
Production differs from the local stack only here: another URI, another file (configs/production.yaml).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

import contract
from contract import layout
from contract.schemas import CATEGORY_MAX_BYTES, ID_MAX_BYTES, MAX_RESULT_ROWS, TEXT_MAX_BYTES, TITLE_MAX_BYTES

MAX_WORKERS = 256  # a typo guard: far above any machine the gateway runs on
MAX_LISTENERS = 64  # a typo guard: a few per process are enough to keep up with new calls


class Section(BaseModel):
    """One settings section: an unknown (e.g. misspelt) key is an error instead of being silently dropped."""

    model_config = ConfigDict(extra="forbid")


class TritonSettings(Section):
    """Triton Inference Server (KServe v2 gRPC) and the encoders it serves."""

    url: str = "127.0.0.1:8001"
    timeout_s: float = Field(2.0, gt=0, description="Deadline of one inference call.")
    stall_after_s: float = Field(
        1.0,
        ge=0,
        description="User and query encoder calls fail fast (UNAVAILABLE) once such calls have waited this long "
        "with none answered, until one answers (a trial call goes through every stall_after_s); 0: never.",
    )
    ssl: bool = Field(False, description="Talk to Triton over TLS (an SSL gRPC channel).")
    ssl_root_certificates: Path | None = Field(None, description="PEM CA bundle to verify Triton (default: system's).")
    ssl_private_key: Path | None = Field(None, description="PEM client key, when Triton asks for a client certificate.")
    ssl_certificate_chain: Path | None = Field(None, description="PEM client certificate chain (with the key).")
    news_encoder: str = contract.NEWS_ENCODER
    user_encoder: str = contract.USER_ENCODER
    query_encoder: str = contract.QUERY_ENCODER
    coalesce_rows: int = Field(32, ge=1, description="Most concurrent one-row calls merged into one request.")
    coalesce_in_flight: int = Field(1, ge=1, description="Merged requests out at once per model.")
    doc_encoder: str = contract.DOC_ENCODER
    tokenizer_dir: Path = Field(
        layout.SERVING.tokenizers,
        description="Tokenizer files written by `make export` (one per encoder input, shared with training).",
    )


class MilvusSettings(Section):
    """Milvus: a file path opens Milvus Lite, http(s)://host:port a standalone server or a cluster.

    `https://` turns TLS on (pymilvus decides by the URI); authenticate with `token` ("user:password" or an API
    key) or with `user` and `password`.
    """

    uri: str = "http://127.0.0.1:19530"
    token: str = ""
    user: str = ""
    password: str = ""
    timeout_s: float = Field(2.0, gt=0, description="Deadline of one Milvus call.")
    write_timeout_s: float = Field(
        10.0, gt=0, description="Deadline of one upsert/delete call, its wait until the write is visible included."
    )
    setup_timeout_s: float = Field(
        120.0, gt=0, description="Deadline of ensure_collections (creating, indexing and loading collections)."
    )
    health_timeout_s: float = Field(0.5, gt=0, description="Deadline of one readiness probe.")
    stall_after_s: float = Field(
        1.0,
        ge=0,
        description="Request-path reads (search, get, query) fail fast (UNAVAILABLE) once such calls have waited "
        "this long with none answered, until one answers (a trial call goes through every stall_after_s); 0: never.",
    )
    news_collection: str = "news"
    passage_collection: str = "passages"
    hnsw_m: int = Field(16, ge=2, le=2048, description="HNSW graph degree (index build parameter M).")
    hnsw_ef_construction: int = Field(200, ge=1, description="HNSW efConstruction (index build).")
    search_ef: int = Field(64, ge=1, description="HNSW ef at search time; raised to the search limit when smaller.")
    search_batch: int = Field(32, ge=1, description="Most concurrent searches coalesced into one nq>1 call.")
    search_in_flight: int = Field(
        1, ge=1, description="Batched search calls out at once per collection/filter; later ones queue and batch."
    )
    write_batch_rows: int = Field(1000, gt=0, description="Rows per upsert request.")
    read_batch_ids: int = Field(
        1000, gt=0, le=MAX_RESULT_ROWS, description="Ids per get/delete request; rows per iterate page (cache warm-up)."
    )


class LLMSettings(Section):
    """The LLM behind `Answer`: Ollama's API (production default) or an OpenAI-compatible server.

    An `https://` URL turns TLS on; `api_key` is sent as `Authorization: Bearer <api_key>`.
    """

    protocol: Literal["ollama", "openai"] = "ollama"
    url: str = "http://127.0.0.1:11434"
    model: str = "smollm2-135m-instruct"
    api_key: str = ""
    connect_timeout_s: float = Field(2.0, gt=0)
    read_timeout_s: float = Field(
        30.0, gt=0, description="Longest silence between two bytes of a response (queueing included)."
    )
    timeout_s: float = Field(60.0, gt=0, description="Deadline of one whole generation, first byte to last.")
    health_timeout_s: float = Field(1.0, gt=0, description="Deadline of one health probe.")
    default_max_tokens: int = Field(256, gt=0, description="Generation length when the request gives none.")
    default_temperature: float = Field(0.2, ge=0, description="Sampling temperature when the request gives none.")
    keep_alive: str = Field("30m", description="Ollama only: how long the server keeps the model loaded.")


class AdmissionSettings(Section):
    """Adaptive concurrency limit of Recommend and Search (each its own; see `server.admission`)."""

    enabled: bool = True
    min_limit: int = Field(8, ge=1, description="The limit never falls below this many requests in flight.")
    max_limit: int = Field(256, ge=1, description="The limit never grows above this many requests in flight.")
    initial_limit: int = Field(32, ge=1, description="The limit at start, before any latency was observed.")
    target_latency_s: float = Field(
        0.1, gt=0, description="A window whose p90 latency is above this shrinks the limit, else it may grow."
    )
    backoff_ratio: float = Field(0.9, gt=0, lt=1, description="The limit is multiplied by this after a slow window.")
    window_s: float = Field(0.1, gt=0, description="Latencies are judged once per window of at least this long.")
    min_window_samples: int = Field(10, ge=1, description="A window also needs this many finished requests.")

    @model_validator(mode="after")
    def _limits_ordered(self) -> Self:
        if not self.min_limit <= self.initial_limit <= self.max_limit:
            raise ValueError(
                f"need min_limit <= initial_limit <= max_limit, got {self.min_limit}, "
                f"{self.initial_limit}, {self.max_limit}"
            )
        return self


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask (e.g. a container's cpuset), else os.cpu_count()."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class GatewaySettings(Section):
    """The gRPC server itself and its request limits."""

    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535)
    workers: int = Field(
        1,
        ge=0,
        le=MAX_WORKERS,
        description="Gateway processes sharing the port (SO_REUSEPORT, see server.workers); 0: one per CPU "
        "this process may use (a cpuset counts; a CPU quota does not: set the number then). "
        "1 runs the gateway in this process, without a supervisor.",
    )
    listeners: int = Field(
        1,
        ge=1,
        le=MAX_LISTENERS,
        description="gRPC servers in each gateway process, on the same port (SO_REUSEPORT) and event loop: "
        "grpc.aio takes new calls one at a time per server, and under load calls wait for that before any "
        "handler runs. The kernel spreads connections over them, so it helps clients with several connections.",
    )
    metrics_port: int = Field(9464, ge=0, le=65535, description="Prometheus /metrics; 0 disables it.")
    max_concurrent_rpcs: int = Field(
        256,
        gt=0,
        description="Above this many at once on one listener, RPCs get RESOURCE_EXHAUSTED (a backstop; see admission).",
    )
    max_k: int = Field(100, gt=0, description="Most results per Recommend/Search request.")
    # Characters take up to 4 bytes in UTF-8: these bounds keep every accepted text storable in Milvus.
    max_text_chars: int = Field(
        2000, gt=0, le=TITLE_MAX_BYTES // 4, description="Longest query, question, title or abstract accepted."
    )
    max_upsert_passage_chars: int = Field(
        8000, gt=0, le=TEXT_MAX_BYTES // 4, description="Longest passage text accepted by UpsertItems."
    )
    max_upsert_batch: int = Field(1000, gt=0, description="Most items (or ids) per UpsertItems/DeleteItems call.")
    max_id_bytes: int = Field(
        ID_MAX_BYTES, gt=0, le=ID_MAX_BYTES, description="Longest id (UTF-8 bytes); at most what Milvus stores."
    )
    max_category_bytes: int = Field(
        CATEGORY_MAX_BYTES,
        gt=0,
        le=CATEGORY_MAX_BYTES,
        description="Longest category or subcategory (UTF-8 bytes); at most what Milvus stores.",
    )
    max_filter_categories: int = Field(50, gt=0, description="Most categories in one request's filters.")
    max_history_items: int = Field(500, gt=0, description="Most history items in one Recommend request.")
    request_timeout_s: float = Field(
        5.0, gt=0, description="Deadline of a request whose caller set none (or a longer one)."
    )
    startup_timeout_s: float = Field(120.0, gt=0, description="How long to wait for Triton and Milvus at start.")
    health_interval_s: float = Field(1.0, gt=0, description="How often dependencies are probed for health.")
    encode_batch: int = Field(64, gt=0, description="Most texts per Triton request when ingesting.")
    admission: AdmissionSettings = AdmissionSettings()

    @property
    def worker_processes(self) -> int:
        """How many gateway processes to run: `workers`, with 0 meaning one per available CPU."""
        return self.workers or available_cpus()


class RecommendSettings(Section):
    """Recommend's pipeline knobs."""

    max_history: int = Field(50, gt=0, description="Most recent clicks fed to the user encoder (as in training).")
    item_cache_capacity: int = Field(200_000, ge=0, description="News vectors kept in gateway memory.")
    item_cache_ttl_s: float = Field(300.0, gt=0, description="Bound on staleness for writes made via other replicas.")
    cold_start_window_days: float = Field(3.0, gt=0, description="Cold start: recent = this close to the newest item.")
    cold_start_pool: int = Field(1000, gt=0, description="Cold start: recent items read, then ranked.")
    cold_start_reuse_s: float = Field(
        5.0,
        ge=0,
        description="Cold start: reuse a filter set's ranked recent items this long (0: read them per request); "
        "this gateway's own writes show at once, other replicas' within this.",
    )
    absent_id_ttl_s: float = Field(
        30.0,
        ge=0,
        description="History ids Milvus does not have are not asked for again this long (0: on every request); "
        "this gateway's own writes show at once, news added through other replicas within this.",
    )
    cache_warmup_timeout_s: float = Field(
        1800.0, gt=0, description="Deadline of the whole item cache warm-up (each page has milvus.timeout_s)."
    )
    ranking: Literal["popularity_aware", "content"] = Field(
        "popularity_aware",
        description="Order of personal recommendations: NRMS score with click-through rate and recency "
        "(contract.ranking, the better one measured) or the NRMS score alone.",
    )
    ranking_candidates: int = Field(
        100, gt=0, le=MAX_RESULT_ROWS, description="popularity_aware: top-N by content that the ranking re-orders."
    )
    ranking_weights: Path = Field(
        layout.SERVING.ranking,
        description="popularity_aware: the weights `make export` writes; when missing, the NRMS order is served.",
    )

    @property
    def serves_ranking(self) -> bool:
        """Whether personal recommendations are re-ranked: `popularity_aware`, and its weights file exists."""
        return self.ranking == "popularity_aware" and self.ranking_weights.is_file()

    def min_candidates(self) -> int:
        """What the ANN stage asks for at least, before the ids it may drop: the re-ranked pool, else 0 (just k).
        The gateway's rule, for whoever measures its calls (the benchmarks' direct calls)."""
        return self.ranking_candidates if self.serves_ranking else 0


class RagSettings(Section):
    """Answer's retrieval and grounding knobs."""

    default_k: int = Field(2, gt=0, description="Passages put in the prompt when the request gives no k.")
    max_k: int = Field(8, gt=0, description="Most passages per prompt (the local model's context is 2,048 tokens).")
    prompt_passage_chars: int = Field(400, gt=0, description="Each passage is cut to this length in the prompt.")
    max_tokens_limit: int = Field(1024, gt=0, description="Largest max_tokens an Answer request may ask for.")
    max_temperature: float = Field(2.0, ge=0, description="Largest temperature an Answer request may ask for.")
    min_score: float = Field(
        0.3, description="Below this best-passage cosine score, answer 'not in the sources' without the LLM."
    )

    @model_validator(mode="after")
    def _default_k_within_max_k(self) -> Self:
        if self.default_k > self.max_k:
            raise ValueError(f"default_k ({self.default_k}) must not exceed max_k ({self.max_k})")
        return self


class FeedbackSettings(Section):
    """Feedback events: what Recommend served is remembered in memory, LogFeedback writes it (see `server.feedback`)."""

    log_dir: Path = Field(layout.FEEDBACK, description="The feedback log: one MIND split directory per UTC day.")
    max_pending_impressions: int = Field(
        100_000,
        gt=0,
        description="Most served answers remembered for feedback (and logged ones, to answer retries); the oldest "
        "are forgotten first. Each takes about 1.1 KB of gateway memory (k=10, 50 history items; tracemalloc).",
    )
    impression_ttl_s: float = Field(3600.0, gt=0, description="How long a served answer waits for its feedback.")
    max_events: int = Field(1000, gt=0, description="Most events in one LogFeedback call.")


class RolloutSettings(Section):
    """Model versions (see `server.versions`): which version a user is served, and how the gateway follows
    the rollout command's Milvus aliases."""

    candidate: int | None = Field(
        None, ge=1, description="Triton version of the NRMS encoders under A/B test (news vectors in news_v<V>)."
    )
    fraction: float = Field(0.0, ge=0, le=1, description="Share of users (by a stable hash of user_id) served it.")
    base_version: int = Field(
        1, ge=1, description="Triton version whose news encoder wrote the unversioned news collection's vectors."
    )
    refresh_s: float = Field(1.0, gt=0, description="How often the gateway re-reads the serving aliases.")


# read: Recommend/Search/Answer; write: UpsertItems/DeleteItems; feedback: LogFeedback (its own scope: what it
# writes becomes training data, so a token that may only read answers must not be able to write it).
Scope = Literal["read", "write", "feedback"]
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


class TokenSpec(Section):
    """One bearer token, stored as its SHA-256 (the token itself is never in the settings)."""

    name: str = Field(min_length=1, description="Who holds it; logged instead of the token.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Lower-case hex SHA-256 of the token.")
    scopes: frozenset[Scope] = Field(
        min_length=1, description="read: Recommend/Search/Answer; write: Upsert/Delete; feedback: LogFeedback."
    )


class SecuritySettings(Section):
    """Gateway TLS (optionally mutual) and bearer-token authentication; both off by default (loopback only)."""

    tls_cert_file: Path | None = Field(None, description="PEM server certificate chain; with tls_key_file, TLS.")
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA bundle: clients must present a certificate it signed (mutual TLS)."
    )
    tokens: list[TokenSpec] = Field(default_factory=list, description="Accepted tokens; any turns authentication on.")
    tokens_file: Path | None = Field(None, description="YAML list of more tokens in the same form as `tokens`.")
    open_services: frozenset[str] = Field(
        frozenset({"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}),
        description="gRPC services callable without a token.",
    )
    loopback_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Also listen on 127.0.0.1:<port> without TLS (tokens still apply), e.g. for a container's "
        "health probe; 0: no.",
    )
    allow_insecure: bool = Field(
        False, description="Allow a non-loopback gateway.host without TLS and tokens (e.g. behind a trusted proxy)."
    )

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def authentication(self) -> bool:
        return bool(self.tokens) or self.tokens_file is not None

    @model_validator(mode="after")
    def _tls_files_go_together(self) -> Self:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        if self.tls_client_ca_file is not None and not self.tls:
            raise ValueError("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        return self


class Settings(BaseSettings):
    """Everything the gateway needs, flowing down to each component."""

    model_config = SettingsConfigDict(env_prefix="RECSTACK_", env_nested_delimiter="__", extra="forbid")

    triton: TritonSettings = TritonSettings()
    milvus: MilvusSettings = MilvusSettings()
    llm: LLMSettings = LLMSettings()
    gateway: GatewaySettings = GatewaySettings()
    recommend: RecommendSettings = RecommendSettings()
    rag: RagSettings = RagSettings()
    feedback: FeedbackSettings = FeedbackSettings()
    security: SecuritySettings = SecuritySettings()
    rollout: RolloutSettings = RolloutSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Keyword arguments win over the environment; `load_settings` merges the file beneath both itself.
        return init_settings, env_settings


def load_settings(path: Path | None = None, **overrides: Mapping[str, Any]) -> Settings:
    """Settings from an optional YAML file, then the environment; keyword overrides win over both.

    An override is one section's keys, e.g. `load_settings(gateway={"port": 0})`, merged into that section.
    Every source is validated: an unknown key or a bad value raises `pydantic.ValidationError` naming it
    (e.g. `milvus.urii`).
    """
    from_file = read_yaml(path) if path is not None else {}
    from_environment = EnvSettingsSource(Settings)()
    return Settings(**deep_merge(deep_merge(from_file, from_environment), overrides))


def read_yaml(path: Path) -> dict[str, Any]:
    """The file's top-level mapping (an empty file is an empty mapping)."""
    loaded = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return loaded


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `update`'s values, merging nested mappings key by key instead of replacing them."""
    merged = dict(base)
    for key, value in update.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = value
    return merged
