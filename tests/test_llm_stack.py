"""Both LLM clients, and the official `ollama` and `openai` clients, against the real local server and
model (SmolLM2-135M via llama-cpp-python): streaming, cancellation freeing the model, queueing, a full
queue, and the server going away."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ollama
import openai
import pytest

from devstack.llm import LocalLLMServer
from devstack.llm_server.config import ServerConfig
from devstack.llm_server.metrics import SAMPLED_TOKENS
from devstack.process import free_port
from server.errors import DependencyUnavailable, Overloaded
from server.llm import ChatMessage, GenerationRequest, LLMClient, TokenChunk, make_llm_client

pytestmark = [pytest.mark.stack, pytest.mark.anyio]
PROTOCOLS = pytest.mark.parametrize("protocol", ["ollama", "openai"])
LONG_ANSWER = "Write a long story about a dragon."  # greedy SmolLM2 runs it past 1000 tokens


@pytest.fixture(scope="module")
def llm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLLMServer]:
    log_path = tmp_path_factory.mktemp("llm") / "llm.log"
    with LocalLLMServer(log_path=log_path, config=ServerConfig(port=free_port(), max_waiting=1)) as server:
        yield server


def ask(question: str, max_tokens: int) -> GenerationRequest:
    return GenerationRequest((ChatMessage("user", question),), max_tokens=max_tokens, temperature=0.0)


async def generate(client: LLMClient, request: GenerationRequest, timeout_s: float = 60) -> list[TokenChunk]:
    async with contextlib.aclosing(client.stream(request, timeout_s=timeout_s)) as chunks:
        return [chunk async for chunk in chunks]


def text_of(chunks: list[TokenChunk]) -> str:
    return "".join(chunk.text for chunk in chunks)


def cancellations(server: LocalLLMServer) -> tuple[float, float]:
    """Generations the server has cancelled so far, and the tokens they had sampled by then."""
    return server.counts()["cancelled"], server.counts(SAMPLED_TOKENS)["cancelled"]


@PROTOCOLS
async def test_tokens_stream_from_the_real_model(llm_server: LocalLLMServer, protocol: str) -> None:
    client = make_llm_client(llm_server.settings(protocol))
    assert await client.health()
    *texts, final = await generate(client, ask(LONG_ANSWER, max_tokens=8))
    await client.close()
    assert len(texts) >= 2 and all(chunk.text for chunk in texts)
    assert (final.finish_reason, final.completion_tokens) == ("length", 8)
    assert final.prompt_tokens > len(LONG_ANSWER.split())  # the question plus the chat template


def test_official_ollama_client(llm_server: LocalLLMServer) -> None:
    client = ollama.Client(host=llm_server.url)
    name = llm_server.config.model_name
    assert [entry.model for entry in client.list().models] == [f"{name}:latest"]
    greedy = {"temperature": 0, "num_predict": 8}

    answer = client.generate(model=name, prompt=LONG_ANSWER, options=greedy)
    assert answer.done and answer.done_reason == "length" and answer.eval_count == 8 and answer.response.strip()
    assert answer.prompt_eval_count is not None and answer.prompt_eval_count > len(LONG_ANSWER.split())
    streamed = list(client.generate(model=name, prompt=LONG_ANSWER, options=greedy, stream=True))
    assert len(streamed) > 2 and streamed[-1].done and not any(chunk.done for chunk in streamed[:-1])
    assert "".join(chunk.response for chunk in streamed) == answer.response  # greedy: the same text
    raw = client.generate(model=name, prompt="The capital of France is", raw=True, options=greedy)
    assert raw.prompt_eval_count is not None and raw.prompt_eval_count < answer.prompt_eval_count  # no template

    messages = [{"role": "user", "content": LONG_ANSWER}]
    reply = client.chat(model=name, messages=messages, options=greedy)
    assert reply.message.role == "assistant" and reply.message.content == answer.response  # the same template
    chunks = list(client.chat(model=name, messages=messages, options=greedy, stream=True))
    assert "".join(chunk.message.content or "" for chunk in chunks) == reply.message.content and chunks[-1].done


def test_official_openai_client(llm_server: LocalLLMServer) -> None:
    client = openai.OpenAI(base_url=f"{llm_server.url}/v1", api_key="unused", max_retries=0)
    name = llm_server.config.model_name
    messages: Any = [{"role": "user", "content": LONG_ANSWER}]
    completion = client.chat.completions.create(model=name, messages=messages, max_tokens=8, temperature=0)
    choice = completion.choices[0]
    assert choice.finish_reason == "length" and choice.message.content and choice.message.content.strip()
    assert completion.usage is not None and completion.usage.completion_tokens == 8
    stream = client.chat.completions.create(model=name, messages=messages, max_tokens=8, temperature=0, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == choice.message.content


@PROTOCOLS
async def test_cancelling_mid_stream_frees_the_model(llm_server: LocalLLMServer, protocol: str) -> None:
    client = make_llm_client(llm_server.settings(protocol))
    seen = 0

    async def read_forever() -> None:
        nonlocal seen
        async for _ in client.stream(ask(LONG_ANSWER, max_tokens=1000), timeout_s=120):
            seen += 1

    reader = asyncio.create_task(read_forever())
    async with asyncio.timeout(60):
        while seen < 3:
            await asyncio.sleep(0.01)
    cancelled_before = cancellations(llm_server)
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader
    started = time.perf_counter()
    *_, final = await generate(client, ask("Name a colour.", max_tokens=8))
    elapsed = time.perf_counter() - started
    await client.close()
    assert final.final
    # The first request would have run ~1000 tokens (~20 s here); it stopped after a few.
    cancelled, tokens = cancellations(llm_server)
    assert cancelled == cancelled_before[0] + 1 and tokens - cancelled_before[1] < 100
    assert elapsed < 10


async def test_concurrent_requests_queue_instead_of_interleaving(llm_server: LocalLLMServer) -> None:
    client = make_llm_client(llm_server.settings("ollama"))
    requests = [ask("What is the capital of Italy?", 16), ask("Name three fruits.", 16)]
    alone = [text_of(await generate(client, request)) for request in requests]
    together = await asyncio.gather(*(generate(client, request) for request in requests))
    await client.close()
    assert [text_of(chunks) for chunks in together] == alone  # greedy decoding: same text as when alone
    assert all(chunks[-1].final for chunks in together)


async def test_full_queue_is_overloaded(llm_server: LocalLLMServer) -> None:
    client = make_llm_client(llm_server.settings("openai"))
    async with contextlib.aclosing(client.stream(ask(LONG_ANSWER, 1000), timeout_s=120)) as running:
        await anext(running)  # the model is busy; one request may wait (max_waiting=1)
        contenders = [asyncio.create_task(generate(client, ask("Say hi.", 4))) for _ in range(2)]
        await asyncio.wait(contenders, return_when=asyncio.FIRST_COMPLETED)  # the refused one
    outcomes = await asyncio.gather(*contenders, return_exceptions=True)  # the waiting one runs now
    await client.close()
    assert sum(isinstance(outcome, Overloaded) for outcome in outcomes) == 1
    assert sum(isinstance(outcome, list) and outcome[-1].final for outcome in outcomes) == 1


async def test_request_abandoned_while_queued_never_takes_the_model(llm_server: LocalLLMServer) -> None:
    client = make_llm_client(llm_server.settings("ollama"))
    before = llm_server.counts()

    def new(outcome: str) -> float:
        return llm_server.counts()[outcome] - before[outcome]

    async with contextlib.aclosing(client.stream(ask(LONG_ANSWER, 1000), timeout_s=120)) as running:
        await anext(running)
        queued = asyncio.create_task(generate(client, ask("Say hi.", 4)))
        await asyncio.sleep(0.5)  # let it reach the server's queue
        queued.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await queued
        async with asyncio.timeout(10):
            while not new("left_queue"):
                await asyncio.sleep(0.05)
    assert (await generate(client, ask("Name a colour.", 8)))[-1].final
    await client.close()
    assert new("left_queue") == 1
    assert new("cancelled") == 1  # the long answer; the abandoned request never ran
    assert new("finished") == 1  # the last request


@PROTOCOLS
async def test_stopped_server_is_unavailable_until_restarted(tmp_path: Path, protocol: str) -> None:
    server = LocalLLMServer(log_path=tmp_path / "llm.log").start()
    client = make_llm_client(server.settings(protocol))
    try:
        server.stop()
        started = time.perf_counter()
        with pytest.raises(DependencyUnavailable):
            await generate(client, ask("Say hi.", 4))
        assert await client.health() is False
        assert time.perf_counter() - started < 5
        server.start()
        assert await client.health() is True
        assert (await generate(client, ask("Say hi.", 4)))[-1].final
    finally:
        await client.close()
        server.stop()
