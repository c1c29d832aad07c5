"""OpenAI's chat completions API over the local model: `POST /v1/chat/completions` (server-sent
events ending in `data: [DONE]`, or one JSON object) and `GET /v1/models`, in OpenAI's shapes;
errors are `{"error": {"message": ..., "type": ...}}`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
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
)
from devstack.llm_server.engine import Event, Finished, GenerationFailed, GenerationJob

PREFIX = "/v1"
DEFAULT_TEMPERATURE = 1.0  # OpenAI's default
DONE_EVENT = b"data: [DONE]\n\n"


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions = Field(default_factory=StreamOptions)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    stop: str | list[str] = Field(default_factory=list)
    seed: int | None = None


def error_body(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind}}


def router(serving: Serving) -> APIRouter:
    api = APIRouter(prefix=PREFIX)
    model = serving.model

    @api.get("/models")
    async def models() -> dict[str, Any]:
        entry = {"id": model.name, "object": "model", "created": int(model.path.stat().st_mtime)}
        return {"object": "list", "data": [entry | {"owned_by": "recstack"}]}

    @api.post("/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request) -> Any:
        if not model.accepts(body.model):
            raise model_not_found(body.model)
        job = GenerationJob(
            prompt=[m.model_dump() for m in body.messages],
            max_tokens=serving.limits.resolve(body.max_completion_tokens or body.max_tokens),
            temperature=DEFAULT_TEMPERATURE if body.temperature is None else body.temperature,
            stop=[body.stop] if isinstance(body.stop, str) else body.stop,
            seed=body.seed,
        )
        events = await start_generation(serving.runner.generate(job), request)
        header = _Header(model.name)
        if not body.stream:
            text, finished = await collect(events)
            return JSONResponse(header.completion(text, finished))
        sse = _sse(header, events, include_usage=body.stream_options.include_usage)
        return GenerationResponse(sse, events, "text/event-stream")

    return api


class _Header:
    """The fields every object of one completion shares."""

    def __init__(self, model_name: str) -> None:
        self.fields = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_name}

    def chunk(self, delta: dict[str, str], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**self.fields, "object": "chat.completion.chunk", "choices": [choice]}

    def usage_chunk(self, finished: Finished) -> dict[str, Any]:
        return {**self.fields, "object": "chat.completion.chunk", "choices": [], "usage": _usage(finished)}

    def completion(self, text: str, finished: Finished) -> dict[str, Any]:
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finished.reason}
        return {**self.fields, "object": "chat.completion", "choices": [choice], "usage": _usage(finished)}


async def _sse(header: _Header, events: AsyncGenerator[Event, None], *, include_usage: bool) -> AsyncIterator[bytes]:
    yield _event(header.chunk({"role": "assistant", "content": ""}))
    try:
        async for event in events:
            if isinstance(event, Finished):
                yield _event(header.chunk({}, event.reason))
                if include_usage:
                    yield _event(header.usage_chunk(event))
            else:
                yield _event(header.chunk({"content": event.text}))
    except GenerationFailed as exc:
        yield _event(error_body(str(exc), "server_error"))
        return
    yield DONE_EVENT


def _usage(finished: Finished) -> dict[str, int]:
    prompt, completion = finished.prompt_tokens, finished.completion_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _event(obj: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()
