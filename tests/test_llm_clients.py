"""Both LLM protocol clients against streams recorded from the real local server (tests/data/llm),
hand-broken variants of them, HTTP errors and transport failures, served through httpx.MockTransport.

The expected text and counts come from the same requests asked without streaming (expected.json),
not from the stream parsers under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from devstack.process import free_port
from server.config import LLMSettings
from server.errors import DependencyTimeout, DependencyUnavailable, InvalidArgument, Overloaded
from server.llm import (
    ChatMessage,
    GenerationRequest,
    OllamaClient,
    OpenAIClient,
    TokenChunk,
    make_llm_client,
)

pytestmark = pytest.mark.anyio
DATA = Path(__file__).parent / "data" / "llm"
EXPECTED = json.loads((DATA / "expected.json").read_text())
SUFFIX = {"ollama": "ndjson", "openai": "sse"}
MEDIA_TYPE = {"ollama": "application/x-ndjson", "openai": "text/event-stream"}
REQUEST = GenerationRequest((ChatMessage("user", "When was the Eiffel Tower completed?"),))
Handler = Callable[[httpx.Request], httpx.Response]


def settings(protocol: str, url: str = "http://llm.test", **overrides: object) -> LLMSettings:
    return LLMSettings(protocol=protocol, url=url, model="smollm2-135m-instruct", **overrides)


def client_for(protocol: str, handler: Handler, **overrides: object) -> OllamaClient | OpenAIClient:
    client_class = OllamaClient if protocol == "ollama" else OpenAIClient
    return client_class(settings(protocol, **overrides), transport=httpx.MockTransport(handler))


def recorded(protocol: str, case: str) -> bytes:
    return (DATA / f"{protocol}_{case}.{SUFFIX[protocol]}").read_bytes()


def replying(protocol: str, body: bytes, status: int = 200) -> Handler:
    return lambda request: httpx.Response(status, content=body, headers={"content-type": MEDIA_TYPE[protocol]})


async def collect(client: OllamaClient | OpenAIClient, request: GenerationRequest = REQUEST) -> list[TokenChunk]:
    async with contextlib.aclosing(client.stream(request, timeout_s=5)) as chunks:
        return [chunk async for chunk in chunks]


async def collect_until_error(client: OllamaClient | OpenAIClient) -> tuple[list[TokenChunk], Exception]:
    seen: list[TokenChunk] = []
    with pytest.raises(Exception) as raised:
        async with contextlib.aclosing(client.stream(REQUEST, timeout_s=5)) as chunks:
            async for chunk in chunks:
                seen.append(chunk)
    return seen, raised.value


PROTOCOLS = pytest.mark.parametrize("protocol", ["ollama", "openai"])


# ---------------------------------------------------------------- recorded streams


@PROTOCOLS
@pytest.mark.parametrize("case", ["stop", "length"])
async def test_recorded_stream_gives_the_full_text_then_one_final_chunk(protocol: str, case: str) -> None:
    expected = EXPECTED[f"{protocol}_{case}"]
    async with client_for(protocol, replying(protocol, recorded(protocol, case))) as client:
        chunks = await collect(client)
    *texts, final = chunks
    assert len(texts) > 1 and all(chunk.text and not chunk.final for chunk in texts)
    assert "".join(chunk.text for chunk in texts) == expected["text"]
    assert final.final and final.text == ""
    assert final.finish_reason == expected["finish_reason"]
    assert (final.prompt_tokens, final.completion_tokens) == (expected["prompt_tokens"], expected["completion_tokens"])


async def test_sse_comments_and_other_fields_are_ignored() -> None:
    body = recorded("openai", "length").replace(b"\n\ndata:", b"\n\n: keep-alive\nevent: message\ndata:")
    async with client_for("openai", replying("openai", body)) as client:
        chunks = await collect(client)
    assert "".join(chunk.text for chunk in chunks) == EXPECTED["openai_length"]["text"]


@PROTOCOLS
async def test_line_separators_inside_a_token_stay_in_the_token(protocol: str) -> None:
    """JSON strings may hold U+0085, U+2028 and U+2029 raw (Ollama's Go encoder leaves U+0085 so, the dev
    server all three); only "\\n" ends a stream line. Found by the fuzz: a reader that split lines like
    `str.splitlines` cut such a token's line in two, "malformed stream"."""
    odd = "x\u0085y\u2028z\u2029"
    lines = recorded(protocol, "stop").decode().split("\n")
    first = next(i for i, line in enumerate(lines) if '"content"' in line)
    prefix, _, payload = lines[first].partition("{")
    chunk = json.loads("{" + payload)
    message = chunk["message"] if protocol == "ollama" else chunk["choices"][0]["delta"]
    message["content"] = odd + message["content"]
    lines[first] = prefix + json.dumps(chunk, ensure_ascii=False)
    body = "\n".join(lines).encode()
    async with client_for(protocol, replying(protocol, body)) as client:
        chunks = await collect(client)
    assert "".join(chunk.text for chunk in chunks) == odd + EXPECTED[f"{protocol}_stop"]["text"]


# ---------------------------------------------------------------- what the clients send


async def test_ollama_request_body_and_settings_defaults() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return replying("ollama", recorded("ollama", "length"))(request)

    async with client_for("ollama", handler, default_max_tokens=77, default_temperature=0.3, keep_alive="5m") as client:
        await collect(client)
        await collect(client, GenerationRequest(REQUEST.messages, max_tokens=9, temperature=0.0, stop=("\n",)))
    defaults, explicit = (json.loads(request.content) for request in sent)
    assert sent[0].url.path == "/api/chat"
    assert defaults["stream"] is True and defaults["model"] == "smollm2-135m-instruct"
    assert defaults["messages"] == [{"role": "user", "content": "When was the Eiffel Tower completed?"}]
    assert defaults["options"] == {"num_predict": 77, "temperature": 0.3}
    assert defaults["keep_alive"] == "5m"
    assert explicit["options"] == {"num_predict": 9, "temperature": 0.0, "stop": ["\n"]}


async def test_openai_request_body_and_bearer_key() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return replying("openai", recorded("openai", "length"))(request)

    async with client_for("openai", handler, api_key="sk-test", default_max_tokens=33) as client:
        await collect(client, GenerationRequest(REQUEST.messages, stop=("END",)))
    body = json.loads(sent[0].content)
    assert sent[0].url.path == "/v1/chat/completions"
    assert sent[0].headers["authorization"] == "Bearer sk-test"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert (body["max_tokens"], body["stop"], body["model"]) == (33, ["END"], "smollm2-135m-instruct")


def test_make_llm_client_picks_the_protocol() -> None:
    assert isinstance(make_llm_client(settings("ollama")), OllamaClient)
    assert isinstance(make_llm_client(settings("openai")), OpenAIClient)


# ---------------------------------------------------------------- broken streams


@PROTOCOLS
async def test_bad_json_line_is_a_malformed_stream_naming_the_line(protocol: str) -> None:
    async with client_for(protocol, replying(protocol, recorded(protocol, "bad_json"))) as client:
        _, error = await collect_until_error(client)
    assert isinstance(error, DependencyUnavailable) and error.dependency == "llm"
    assert "malformed stream" in str(error) and "line" in str(error)


@PROTOCOLS
async def test_stream_without_end_marker_is_malformed(protocol: str) -> None:
    async with client_for(protocol, replying(protocol, recorded(protocol, "truncated"))) as client:
        seen, error = await collect_until_error(client)
    assert isinstance(error, DependencyUnavailable) and "ended before its end marker" in str(error)
    assert seen and not any(chunk.final for chunk in seen)


@PROTOCOLS
async def test_error_object_mid_stream_fails_after_the_text_so_far(protocol: str) -> None:
    async with client_for(protocol, replying(protocol, recorded(protocol, "error"))) as client:
        seen, error = await collect_until_error(client)
    assert isinstance(error, DependencyUnavailable) and "generation failed" in str(error)
    assert any(message in str(error) for message in ("signal: killed", "llama_decode returned -3"))
    assert EXPECTED[f"{protocol}_stop"]["text"].startswith("".join(chunk.text for chunk in seen))
    assert seen


# ---------------------------------------------------------------- HTTP errors


@PROTOCOLS
@pytest.mark.parametrize(
    ("status", "body", "error_class", "detail"),
    [
        (429, {"error": "server busy: 8 requests already waiting"}, Overloaded, "8 requests already waiting"),
        (503, {"error": "server busy, please try again.  maximum pending requests exceeded"}, Overloaded, "busy"),
        (503, {"error": "model is loading"}, DependencyUnavailable, "HTTP 503: model is loading"),
        (500, {"error": {"message": "out of memory", "type": "server_error"}}, DependencyUnavailable, "out of memory"),
        (404, {"error": 'model "smollm2" not found'}, DependencyUnavailable, "HTTP 404"),
        (400, {"error": "Requested tokens (2600) exceed context window of 2048"}, InvalidArgument, "context window"),
    ],
)
async def test_http_errors_map_to_gateway_errors(
    protocol: str, status: int, body: dict, error_class: type[Exception], detail: str
) -> None:
    async with client_for(protocol, replying(protocol, json.dumps(body).encode(), status)) as client:
        _, error = await collect_until_error(client)
    assert type(error) is error_class
    assert detail in str(error)


async def test_non_json_error_body_is_quoted() -> None:
    async with client_for("ollama", replying("ollama", b"<html>Bad Gateway</html>", 502)) as client:
        _, error = await collect_until_error(client)
    assert isinstance(error, DependencyUnavailable) and "HTTP 502: <html>Bad Gateway</html>" in str(error)


# ---------------------------------------------------------------- transport failures and deadlines


@PROTOCOLS
async def test_connection_refused_is_unavailable_and_unhealthy(protocol: str) -> None:
    client = make_llm_client(settings(protocol, url=f"http://127.0.0.1:{free_port()}"))
    _, error = await collect_until_error(client)
    assert isinstance(error, DependencyUnavailable) and "ConnectError" in str(error)
    assert await client.health() is False
    await client.close()


@pytest.mark.parametrize(
    ("transport_error", "error_class"),
    [
        (httpx.ConnectTimeout("connect timed out"), DependencyUnavailable),
        (httpx.ReadTimeout("read timed out"), DependencyTimeout),
        (httpx.RemoteProtocolError("peer closed connection"), DependencyUnavailable),
    ],
)
async def test_transport_errors_are_mapped(transport_error: Exception, error_class: type[Exception]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise transport_error

    async with client_for("ollama", handler) as client:
        _, error = await collect_until_error(client)
    assert type(error) is error_class


class StallingStream(httpx.AsyncByteStream):
    """Sends `head`, then nothing until closed; records whether the client closed it."""

    def __init__(self, head: bytes) -> None:
        self.head = head
        self.closed = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.head
        await self.closed.wait()

    async def aclose(self) -> None:
        self.closed.set()


def head(protocol: str, events: int) -> bytes:
    """The first `events` events (lines or SSE events) of the recorded stop stream."""
    separator = b"\n\n" if protocol == "openai" else b"\n"
    return separator.join(recorded(protocol, "stop").split(separator)[:events]) + separator


def stalling(protocol: str, stream: StallingStream) -> Handler:
    return lambda request: httpx.Response(200, stream=stream, headers={"content-type": MEDIA_TYPE[protocol]})


@PROTOCOLS
async def test_deadline_bounds_the_whole_generation(protocol: str) -> None:
    stream = StallingStream(head(protocol, 2))
    async with client_for(protocol, stalling(protocol, stream)) as client:
        with pytest.raises(DependencyTimeout):
            async for _ in client.stream(REQUEST, timeout_s=0.2):
                pass
    assert stream.closed.is_set()


@PROTOCOLS
async def test_cancelling_the_consumer_closes_the_response(protocol: str) -> None:
    stream = StallingStream(head(protocol, 2))
    got_text = asyncio.Event()

    async def consume(client: OllamaClient | OpenAIClient) -> None:
        async for chunk in client.stream(REQUEST, timeout_s=30):
            if chunk.text:
                got_text.set()

    async with client_for(protocol, stalling(protocol, stream)) as client:
        task = asyncio.create_task(consume(client))
        async with asyncio.timeout(5):
            await got_text.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert stream.closed.is_set()


async def test_closing_the_iterator_early_closes_the_response() -> None:
    stream = StallingStream(head("ollama", 2))
    async with client_for("ollama", stalling("ollama", stream)) as client:
        async with contextlib.aclosing(client.stream(REQUEST, timeout_s=30)) as chunks:
            first = await anext(chunks)
        assert first.text
        assert stream.closed.is_set()


# ---------------------------------------------------------------- health


@PROTOCOLS
async def test_health_probes_the_model_list(protocol: str) -> None:
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return httpx.Response(200 if len(paths) == 1 else 500, json={})

    async with client_for(protocol, handler) as client:
        assert await client.health() is True
        assert await client.health() is False
    assert paths[0] == ("/api/tags" if protocol == "ollama" else "/v1/models")
