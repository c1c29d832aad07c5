"""Ollama's API over the local model: `POST /api/chat` (streamed NDJSON or one JSON object),
`GET /api/tags`, `GET /api/version`. Shapes follow Ollama's docs/api.md; errors are `{"error": "..."}`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from importlib.metadata import version
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from devstack.llm_server.common import (
    GenerationResponse,
    Message,
    Serving,
    collect,
    model_not_found,
    start_generation,
    timestamp,
)
from devstack.llm_server.engine import ChatJob, Event, Finished, GenerationFailed

PREFIX = "/api"
DEFAULT_TEMPERATURE = 0.8  # Ollama's default
NANOS = 1_000_000_000


class Options(BaseModel):
    num_predict: int | None = None
    temperature: float | None = Field(None, ge=0)
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None
    repeat_penalty: float | None = Field(None, gt=0)


class ChatRequest(BaseModel):
    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = True
    options: Options = Field(default_factory=Options)
    keep_alive: str | int | None = None  # accepted for compatibility: the model stays loaded


def error_body(message: str, kind: str) -> dict[str, Any]:
    return {"error": message}


def router(serving: Serving) -> APIRouter:
    api = APIRouter(prefix=PREFIX)
    model = serving.model

    @api.get("/version")
    async def get_version() -> dict[str, str]:
        return {"version": version("recstack")}

    @api.get("/tags")
    async def tags() -> dict[str, Any]:
        details = {"format": "gguf", "family": model.family, "parameter_size": model.parameter_size}
        entry = {
            "name": f"{model.name}:latest",
            "model": f"{model.name}:latest",
            "modified_at": model.modified_at,
            "size": model.path.stat().st_size,
            "details": details,
        }
        return {"models": [entry]}

    @api.post("/chat")
    async def chat(body: ChatRequest, request: Request) -> Any:
        if not model.accepts(body.model):
            raise model_not_found(body.model)
        options = body.options
        job = ChatJob(
            messages=[m.model_dump() for m in body.messages],
            max_tokens=serving.limits.resolve(options.num_predict),
            temperature=DEFAULT_TEMPERATURE if options.temperature is None else options.temperature,
            stop=options.stop,
            seed=options.seed,
            **({"repeat_penalty": options.repeat_penalty} if options.repeat_penalty is not None else {}),
        )
        events = await start_generation(serving.runner.generate(job), request)
        if not body.stream:
            text, finished = await collect(events)
            return JSONResponse(_chunk(model.name, text, finished))
        return GenerationResponse(_ndjson(model.name, events), events, "application/x-ndjson")

    return api


async def _ndjson(model_name: str, events: AsyncGenerator[Event, None]) -> AsyncIterator[bytes]:
    try:
        async for event in events:
            if isinstance(event, Finished):
                yield _line(_chunk(model_name, "", event))
            else:
                yield _line(_chunk(model_name, event.text, None))
    except GenerationFailed as exc:
        yield _line({"error": str(exc)})


def _chunk(model_name: str, text: str, finished: Finished | None) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "model": model_name,
        "created_at": timestamp(),
        "message": {"role": "assistant", "content": text},
        "done": finished is not None,
    }
    if finished is not None:
        chunk |= {
            "done_reason": finished.reason,
            "total_duration": round((finished.prompt_eval_s + finished.eval_s) * NANOS),
            "load_duration": 0,
            "prompt_eval_count": finished.prompt_tokens,
            "prompt_eval_duration": round(finished.prompt_eval_s * NANOS),
            "eval_count": finished.completion_tokens,
            "eval_duration": round(finished.eval_s * NANOS),
        }
    return chunk


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"
