"""The HTTP machinery both LLM protocols share: one httpx.AsyncClient, deadlines, error mapping.

A protocol client (Ollama, OpenAI-compatible) only says which path to POST, what body to send and
how to decode the response lines (a `StreamDecoder`); everything that can go wrong on the wire is
mapped to `server.errors` here, in one place:

| what happened                                         | raised                                  |
|-------------------------------------------------------|-----------------------------------------|
| connection refused, DNS failure, reset, other HTTP    | DependencyUnavailable("llm", ...)       |
| errors (5xx, 404 unknown model)                       |                                         |
| HTTP 400 (e.g. a prompt longer than the model's       | InvalidArgument("question", ...): the   |
| context)                                              | question is the only part of the prompt |
|                                                       | a request controls unbounded by settings|
| the call's deadline or the read timeout passed        | DependencyTimeout("llm", ...)           |
| HTTP 429, or 503 saying the server's queue is full    | Overloaded                              |
| a line that is not the protocol's JSON, or a stream   | DependencyUnavailable("llm",            |
| that ends without its end marker                      |   "malformed stream: ...")              |
| an error object mid-stream                            | DependencyUnavailable("llm",            |
|                                                       |   "generation failed: ...")             |

Cancelling the consuming task, or closing the iterator, closes the HTTP response at once: the
server sees the disconnect and stops generating.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any, ClassVar, Protocol

import httpx

from server.config import LLMSettings
from server.errors import DependencyTimeout, DependencyUnavailable, InvalidArgument, Overloaded
from server.llm.types import GenerationRequest, TokenChunk

LLM = "llm"
_QUEUE_FULL_HINTS = ("maximum pending requests", "queue is full", "server busy")
_ERROR_TEXT_LIMIT = 300


async def stream_lines(response: httpx.Response) -> AsyncIterator[str]:
    """The body's lines, ended by "\\n" only (a "\\r" before it dropped). Not `aiter_lines`: it splits like
    `str.splitlines`, also at U+0085, U+2028 and U+2029, which a JSON string may hold raw (Ollama leaves U+0085
    unescaped), cutting a token's line in two (found by the fuzz)."""
    pending = b""
    async for chunk in response.aiter_bytes():
        *complete, pending = (pending + chunk).split(b"\n")
        for line in complete:
            yield _text(line)
    if pending:
        yield _text(pending)


def _text(line: bytes) -> str:
    try:
        return line.removesuffix(b"\r").decode("utf-8")
    except UnicodeDecodeError as error:
        raise malformed_stream(f"a line is not UTF-8 ({error.reason}): {line[:80]!r}") from None


def malformed_stream(detail: str) -> DependencyUnavailable:
    return DependencyUnavailable(LLM, f"malformed stream: {detail}")


def failed_mid_stream(message: str) -> DependencyUnavailable:
    return DependencyUnavailable(LLM, f"generation failed: {message}")


def parse_json_line(text: str, line_number: int) -> dict[str, Any]:
    """One JSON object from a stream line, or a malformed-stream error naming the line."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise malformed_stream(f"line {line_number}: not JSON ({exc.msg}): {text[:80]!r}") from None
    if not isinstance(value, dict):
        raise malformed_stream(f"line {line_number}: expected a JSON object, got {text[:80]!r}")
    return value


def error_message(payload: Any) -> str | None:
    """The message of an error object: Ollama's {"error": "..."} or OpenAI's {"error": {"message": ...}}."""
    if not isinstance(payload, dict) or "error" not in payload:
        return None
    error = payload["error"]
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)


class StreamDecoder(Protocol):
    """Turns a response's text lines into chunks; `done` once the protocol's end marker was seen."""

    done: bool

    def feed(self, line: str) -> list[TokenChunk]: ...


class StreamingHTTPClient(abc.ABC):
    """Base of the protocol clients (an `LLMClient`): subclasses set the paths, `_body` and `_decoder`."""

    chat_path: ClassVar[str]
    health_path: ClassVar[str]

    def __init__(self, settings: LLMSettings, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
        timeout = httpx.Timeout(settings.read_timeout_s, connect=settings.connect_timeout_s)
        self._http = httpx.AsyncClient(base_url=settings.url, headers=headers, timeout=timeout, transport=transport)

    @abc.abstractmethod
    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        """The JSON body of the streaming chat request."""

    @abc.abstractmethod
    def _decoder(self) -> StreamDecoder:
        """A fresh decoder for one response."""

    def _messages(self, request: GenerationRequest) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in request.messages]

    def _max_tokens(self, request: GenerationRequest) -> int:
        return self.settings.default_max_tokens if request.max_tokens is None else request.max_tokens

    def _temperature(self, request: GenerationRequest) -> float:
        return self.settings.default_temperature if request.temperature is None else request.temperature

    async def stream(self, request: GenerationRequest, *, timeout_s: float) -> AsyncGenerator[TokenChunk, None]:
        """See `LLMClient.stream`: text chunks, then one final chunk; `timeout_s` bounds it all."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        with _mapped_errors(self.settings.url):
            response = await self._open(request, deadline)
            try:
                decoder = self._decoder()
                lines = stream_lines(response)
                while not decoder.done:
                    async with asyncio.timeout_at(deadline):
                        line = await anext(lines, None)
                    if line is None:
                        raise malformed_stream("the stream ended before its end marker")
                    for chunk in decoder.feed(line):
                        yield chunk
            finally:
                await response.aclose()

    async def _open(self, request: GenerationRequest, deadline: float) -> httpx.Response:
        """POST the request; the streaming response once its status is 200 (else closed, and raised)."""
        http_request = self._http.build_request("POST", self.chat_path, json=self._body(request))
        async with asyncio.timeout_at(deadline):
            response = await self._http.send(http_request, stream=True)
            try:
                await _raise_for_status(response)
            except BaseException:
                await response.aclose()
                raise
        return response

    async def health(self) -> bool:
        """True when the model-list endpoint answers 200 within `health_timeout_s`; never raises."""
        try:
            response = await self._http.get(self.health_path, timeout=self.settings.health_timeout_s)
        except httpx.HTTPError:
            return False
        return response.status_code == httpx.codes.OK

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> StreamingHTTPClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code == httpx.codes.OK:
        return
    body = await response.aread()
    try:
        message = error_message(json.loads(body))
    except (json.JSONDecodeError, UnicodeDecodeError):
        message = None
    message = message or body.decode(errors="replace")[:_ERROR_TEXT_LIMIT] or response.reason_phrase
    queue_full = response.status_code == httpx.codes.SERVICE_UNAVAILABLE and any(
        hint in message.lower() for hint in _QUEUE_FULL_HINTS
    )
    if response.status_code == httpx.codes.TOO_MANY_REQUESTS or queue_full:
        raise Overloaded(f"{LLM} overloaded: {message}")
    if response.status_code == httpx.codes.BAD_REQUEST:
        raise InvalidArgument("question", f"the {LLM} rejected the prompt built from it: {message}")
    raise DependencyUnavailable(LLM, f"HTTP {response.status_code}: {message}")


@contextlib.contextmanager
def _mapped_errors(url: str) -> Iterator[None]:
    """The one place where transport failures become `server.errors`."""
    try:
        yield
    except (TimeoutError, httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout) as exc:
        raise DependencyTimeout(LLM, f"no answer from {url} in time ({type(exc).__name__})") from exc
    except httpx.ConnectTimeout as exc:
        raise DependencyUnavailable(LLM, f"cannot connect to {url}: connect timed out") from exc
    except httpx.HTTPError as exc:
        raise DependencyUnavailable(LLM, f"{url}: {type(exc).__name__}: {exc}") from exc
