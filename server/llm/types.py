"""What the gateway hands an LLM and what it gets back, independent of the wire protocol.

A stream is zero or more text chunks (non-empty `text`, `finish_reason` None) followed by exactly one
final chunk (empty `text`, `finish_reason` set, token counts when the server reported them).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Literal, Protocol

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One chat generation; None means the client's configured default (LLMSettings)."""

    messages: tuple[ChatMessage, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class TokenChunk:
    text: str = ""
    finish_reason: str | None = None  # "stop" or "length" (as the server says) on the final chunk only
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    @property
    def final(self) -> bool:
        return self.finish_reason is not None


class LLMClient(Protocol):
    """A streaming chat client. Errors are `server.errors` classes with dependency "llm"."""

    def stream(self, request: GenerationRequest, *, timeout_s: float) -> AsyncGenerator[TokenChunk, None]:
        """Chunks as the server produces them; `timeout_s` bounds the whole generation.

        Consume it inside `contextlib.aclosing(...)` (or let cancellation reach it): closing the
        iterator closes the HTTP response at once, so the server stops generating.
        """
        ...

    async def health(self) -> bool:
        """True when the server answers its model-list endpoint; fast, never raises."""
        ...

    async def close(self) -> None: ...
