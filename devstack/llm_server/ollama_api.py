"""Ollama's API over the local model: `POST /api/chat` and `POST /api/generate` (streamed NDJSON, or
one JSON object with `"stream": false`), `GET /api/tags`, `GET /api/version`. Shapes follow Ollama's
docs/api.md; errors are `{"error": "..."}`.

Both generation endpoints make one `GenerationJob` and answer the same way, differing only in the
prompt (chat messages; or `prompt`, with `system`, formatted by the chat template unless `raw`) and in
where each chunk's text goes (`message.content` or `response`). Generate's `suffix`, `images`,
`format`, `template` and `context` are not supported and are ignored.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from importlib.metadata import version
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from devstack.llm_server.common import (
    GenerationResponse,
    Message,
    Serving,
    TokenLimits,
    collect,
    model_not_found,
    start_generation,
    timestamp,
)
from devstack.llm_server.engine import Event, Finished, GenerationFailed, GenerationJob, Messages

PREFIX = "/api"
DEFAULT_TEMPERATURE = 0.8  # Ollama's default
NANOS = 1_000_000_000


class Options(BaseModel):
    num_predict: int | None = None
    temperature: float | None = Field(None, ge=0)
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None
    repeat_penalty: float | None = Field(None, gt=0)


class GenerationRequest(BaseModel):
    """What `/api/chat` and `/api/generate` share."""

    model: str
    stream: bool = True
    options: Options = Field(default_factory=Options)
    keep_alive: str | int | None = None  # accepted for compatibility: the model stays loaded

    def model_prompt(self) -> Messages | str:
        """The prompt as the model gets it."""
        raise NotImplementedError

    @staticmethod
    def content(text: str) -> dict[str, Any]:
        """Where a chunk of the answer goes in this endpoint's objects."""
        raise NotImplementedError

    def job(self, limits: TokenLimits) -> GenerationJob:
        options = self.options
        return GenerationJob(
            prompt=self.model_prompt(),
            max_tokens=limits.resolve(options.num_predict),
            temperature=DEFAULT_TEMPERATURE if options.temperature is None else options.temperature,
            stop=options.stop,
            seed=options.seed,
            **({"repeat_penalty": options.repeat_penalty} if options.repeat_penalty is not None else {}),
        )


class ChatRequest(GenerationRequest):
    messages: list[Message] = Field(min_length=1)

    def model_prompt(self) -> Messages:
        return [message.model_dump() for message in self.messages]

    @staticmethod
    def content(text: str) -> dict[str, Any]:
        return {"message": {"role": "assistant", "content": text}}


class GenerateRequest(GenerationRequest):
    prompt: str = Field(min_length=1)
    system: str | None = None
    raw: bool = False  # the prompt as it is, without the chat template (and without `system`)

    def model_prompt(self) -> Messages | str:
        if self.raw:
            return self.prompt
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, {"role": "user", "content": self.prompt}]

    @staticmethod
    def content(text: str) -> dict[str, Any]:
        return {"response": text}


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

    async def answer(body: GenerationRequest, request: Request) -> Any:
        if not model.accepts(body.model):
            raise model_not_found(body.model)
        events = await start_generation(serving.runner.generate(body.job(serving.limits)), request)
        if not body.stream:
            text, finished = await collect(events)
            return JSONResponse(_chunk(model.name, body.content(text), finished))
        return GenerationResponse(_ndjson(model.name, body.content, events), events, "application/x-ndjson")

    @api.post("/chat")
    async def chat(body: ChatRequest, request: Request) -> Any:
        return await answer(body, request)

    @api.post("/generate")
    async def generate(body: GenerateRequest, request: Request) -> Any:
        return await answer(body, request)

    return api


async def _ndjson(
    model_name: str, content: Callable[[str], dict[str, Any]], events: AsyncGenerator[Event, None]
) -> AsyncIterator[bytes]:
    try:
        async for event in events:
            if isinstance(event, Finished):
                yield _line(_chunk(model_name, content(""), event))
            else:
                yield _line(_chunk(model_name, content(event.text), None))
    except GenerationFailed as exc:
        yield _line({"error": str(exc)})


def _chunk(model_name: str, content: dict[str, Any], finished: Finished | None) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "model": model_name,
        "created_at": timestamp(),
        **content,
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
