"""What Ollama's and OpenAI's chat APIs share in the local LLM server.

The served model's description, the max_tokens bounds, waiting for the first event before
answering (so a full queue is an HTTP 429 and a rejected prompt an HTTP 400, not a broken 200
stream), and a streamed response that stops the model however it ends (finished, client gone,
server stopping).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from devstack.llm_server.engine import Event, Finished, GenerationFailed, ModelRunner, QueueFull, TextDelta

log = logging.getLogger(__name__)


class Message(BaseModel):
    """A chat message as both APIs send it (text content only)."""

    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    path: Path
    family: str
    parameter_size: str

    @property
    def modified_at(self) -> str:
        return timestamp(datetime.fromtimestamp(self.path.stat().st_mtime, UTC))

    def accepts(self, requested: str) -> bool:
        """Ollama names default to the `latest` tag: "m" and "m:latest" are the same model."""
        return requested in (self.name, f"{self.name}:latest")


@dataclass(frozen=True, slots=True)
class TokenLimits:
    default: int
    cap: int

    def resolve(self, requested: int | None) -> int:
        """None means the default; zero or less means as many as allowed (Ollama's -1); never above the cap."""
        if requested is None:
            return self.default
        return self.cap if requested <= 0 else min(requested, self.cap)


@dataclass(frozen=True, slots=True)
class Serving:
    """What every route needs."""

    runner: ModelRunner
    model: ModelInfo
    limits: TokenLimits


def timestamp(moment: datetime | None = None) -> str:
    """RFC 3339 in UTC with a Z, as Ollama writes `created_at`."""
    return (moment or datetime.now(UTC)).isoformat().replace("+00:00", "Z")


class GenerationError(Exception):
    """A request that cannot start: answered with `status` and the API's error body."""

    def __init__(self, status: int, message: str, kind: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


def model_not_found(requested: str) -> GenerationError:
    return GenerationError(404, f'model "{requested}" not found', "model_not_found")


async def start_generation(events: AsyncGenerator[Event, None], request: Request) -> AsyncGenerator[Event, None]:
    """`events` again, once its first event has arrived.

    Raises GenerationError for a full queue (429), a job the runtime refused (400/500), or a client
    that disconnected while the request waited for the model (499): it leaves the queue without
    ever taking the model.
    """
    first = asyncio.ensure_future(anext(events))
    client_left = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({first, client_left}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        client_left.cancel()
        if not first.done():
            first.cancel()
    try:
        event = await first
    except asyncio.CancelledError:
        log.info("client disconnected while waiting for the model")
        raise GenerationError(499, "client disconnected while waiting", "client_closed_request") from None
    except QueueFull as exc:
        raise GenerationError(429, str(exc), "server_busy") from exc
    except GenerationFailed as exc:
        raise GenerationError(400 if exc.bad_request else 500, str(exc), "generation_failed") from exc
    return _replay(event, events)


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone (the body was already read, so only a disconnect can come)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _replay(first: Event, events: AsyncGenerator[Event, None]) -> AsyncGenerator[Event, None]:
    try:
        yield first
        async for event in events:
            yield event
    finally:
        await events.aclose()


class GenerationResponse(StreamingResponse):
    """A streamed generation whose model work is stopped whatever way the response ends."""

    def __init__(self, content: AsyncIterator[bytes], events: AsyncGenerator[Event, None], media_type: str) -> None:
        super().__init__(content, media_type=media_type, headers={"Cache-Control": "no-cache"})
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._events.aclose()


async def collect(events: AsyncGenerator[Event, None]) -> tuple[str, Finished]:
    """The whole text and the `Finished` event of a non-streamed generation."""
    parts: list[str] = []
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, TextDelta):
                parts.append(event.text)
            else:
                return "".join(parts), event
    raise GenerationFailed("the generation ended without finishing", bad_request=False)
