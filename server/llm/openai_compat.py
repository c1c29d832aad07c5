"""OpenAI-compatible chat completions (vLLM, llama.cpp server, TGI): `POST /v1/chat/completions`
streamed as server-sent events, health via `GET /v1/models`.

Events are `data: {json}` lines separated by blank lines: deltas in `choices[0].delta.content`,
`finish_reason` on the last choice, then (asked for with `stream_options.include_usage`) a chunk
with `usage` and no choices, then `data: [DONE]`. `data: {"error": {...}}` means generation failed.
"""

from __future__ import annotations

from typing import Any

from server.llm.http import (
    StreamingHTTPClient,
    error_message,
    failed_mid_stream,
    malformed_stream,
    parse_json_line,
)
from server.llm.types import GenerationRequest, TokenChunk

DONE_MARKER = "[DONE]"


class OpenAIStreamDecoder:
    """Decodes SSE lines into chunks: data lines are gathered and dispatched at each blank line."""

    def __init__(self) -> None:
        self.done = False
        self._line_number = 0
        self._data: list[str] = []
        self._event_line = 0  # line number of the pending event's first data line
        self._finish_reason: str | None = None
        self._usage: dict[str, Any] = {}

    def feed(self, line: str) -> list[TokenChunk]:
        self._line_number += 1
        if line.startswith("data:"):
            self._event_line = self._event_line if self._data else self._line_number
            self._data.append(line.removeprefix("data:").removeprefix(" "))
            return []
        if line.strip() or not self._data:
            return []  # SSE comments (":..."), other fields (event:, id:, retry:), repeated blank lines
        data, self._data = "\n".join(self._data), []
        return self._event(data)

    def _event(self, data: str) -> list[TokenChunk]:
        if data.strip() == DONE_MARKER:
            return [self._final()]
        obj = parse_json_line(data, self._event_line)
        message = error_message(obj)
        if message is not None:
            raise failed_mid_stream(message)
        if isinstance(obj.get("usage"), dict):
            self._usage = obj["usage"]
        choices = obj.get("choices")
        if not isinstance(choices, list):
            raise malformed_stream(f"line {self._event_line}: no 'choices' list: {data[:80]!r}")
        if not choices:
            return []
        choice = choices[0]
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict) or not isinstance(delta.get("content"), str | None):
            raise malformed_stream(f"line {self._event_line}: no text delta in {data[:80]!r}")
        text = delta.get("content")
        self._finish_reason = choice.get("finish_reason") or self._finish_reason
        return [TokenChunk(text=text)] if text else []

    def _final(self) -> TokenChunk:
        if self._finish_reason is None:
            raise malformed_stream(f"line {self._event_line}: [DONE] before any finish_reason")
        self.done = True
        return TokenChunk(
            finish_reason=self._finish_reason,
            prompt_tokens=self._usage.get("prompt_tokens"),
            completion_tokens=self._usage.get("completion_tokens"),
        )


class OpenAIClient(StreamingHTTPClient):
    chat_path = "/v1/chat/completions"
    health_path = "/v1/models"

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.settings.model,
            "messages": self._messages(request),
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": self._max_tokens(request),
            "temperature": self._temperature(request),
        }
        if request.stop:
            body["stop"] = list(request.stop)
        return body

    def _decoder(self) -> OpenAIStreamDecoder:
        return OpenAIStreamDecoder()
