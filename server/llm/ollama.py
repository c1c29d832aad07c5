"""Ollama's HTTP API: `POST /api/chat` streamed as newline-delimited JSON, health via `GET /api/tags`.

Each line is `{"message": {"role": "assistant", "content": "..."}, "done": false, ...}`; the last one
has `"done": true`, `done_reason` ("stop" or "length"), `prompt_eval_count` and `eval_count`.
An `{"error": "..."}` line means generation failed on the server.
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


class OllamaStreamDecoder:
    """Decodes `/api/chat` NDJSON lines into chunks."""

    def __init__(self) -> None:
        self.done = False
        self._line_number = 0

    def feed(self, line: str) -> list[TokenChunk]:
        self._line_number += 1
        if not line.strip():
            return []
        obj = parse_json_line(line, self._line_number)
        message = error_message(obj)
        if message is not None:
            raise failed_mid_stream(message)
        done = obj.get("done")
        reply = obj.get("message")
        text = reply.get("content") if isinstance(reply, dict) else None
        if not isinstance(done, bool) or not isinstance(text, str):
            raise malformed_stream(f"line {self._line_number}: no 'done' or 'message.content': {line[:80]!r}")
        chunks = [TokenChunk(text=text)] if text else []
        if done:
            self.done = True
            chunks.append(
                TokenChunk(
                    finish_reason=obj.get("done_reason") or "stop",
                    prompt_tokens=obj.get("prompt_eval_count"),
                    completion_tokens=obj.get("eval_count"),
                )
            )
        return chunks


class OllamaClient(StreamingHTTPClient):
    chat_path = "/api/chat"
    health_path = "/api/tags"

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        options: dict[str, Any] = {
            "num_predict": self._max_tokens(request),
            "temperature": self._temperature(request),
        }
        if request.stop:
            options["stop"] = list(request.stop)
        return {
            "model": self.settings.model,
            "messages": self._messages(request),
            "stream": True,
            "options": options,
            "keep_alive": self.settings.keep_alive,
        }

    def _decoder(self) -> OllamaStreamDecoder:
        return OllamaStreamDecoder()
