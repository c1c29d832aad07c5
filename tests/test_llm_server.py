"""The local LLM server without the real model: a fake model with llama_cpp's streaming shape drives
the `ModelRunner` (one job at a time, FIFO, bounded queue, cancellation, its counters) and the HTTP
app, which both protocol clients read in-process through httpx.ASGITransport, and the official
`ollama` and `openai` clients over a real port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import llama_cpp
import numpy as np
import ollama
import openai
import pytest
import uvicorn
from llama_cpp import Llama

from devstack.llm_server.app import create_app, shipped_model_path
from devstack.llm_server.common import ModelInfo, Serving, TokenLimits
from devstack.llm_server.config import ServerConfig, parse_args
from devstack.llm_server.engine import (
    Finished,
    GenerationFailed,
    GenerationJob,
    Messages,
    ModelRunner,
    QueueFull,
    TextDelta,
    convert_weights,
)
from devstack.llm_server.metrics import REQUESTS, SAMPLED_TOKENS, counts_by_outcome
from devstack.process import free_port
from server.config import LLMSettings
from server.errors import Overloaded
from server.llm import ChatMessage, GenerationRequest, OllamaClient, OpenAIClient

pytestmark = pytest.mark.anyio
MODEL_NAME = "fake-model"
LONG_TEXT = " ".join(f"w{i}" for i in range(5000))


class FakeModel:
    """Echoes the last message (or a raw prompt) word by word (one word per token, `step_s` apart) like
    llama_cpp's `create_chat_completion(stream=True)` (`create_completion`), calls the logits processors
    as llama.cpp does, raises ValueError for a prompt containing TOO LONG, and records which jobs ran,
    with what arguments, and whether any overlapped."""

    def __init__(self, step_s: float = 0.001) -> None:
        self.step_s = step_s
        self.active = 0
        self.max_active = 0
        self.started: list[str] = []
        self.calls: list[dict[str, Any]] = []
        self.tokens = 0

    def create_chat_completion(self, *, messages: Messages, max_tokens: int, **kwargs: Any) -> Iterator:
        self.calls.append({"messages": messages, "max_tokens": max_tokens, **kwargs})
        return self._stream(messages[-1]["content"], max_tokens, kwargs["logits_processor"], chat_chunk)

    def create_completion(self, *, prompt: str, max_tokens: int, **kwargs: Any) -> Iterator:
        self.calls.append({"prompt": prompt, "max_tokens": max_tokens, **kwargs})
        return self._stream(prompt, max_tokens, kwargs["logits_processor"], completion_chunk)

    def _stream(self, prompt: str, max_tokens: int, processors: list, chunk: Any) -> Iterator[dict[str, Any]]:
        if "TOO LONG" in prompt:
            raise ValueError("Requested tokens (9999) exceed context window of 2048")
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.started.append(prompt)
        words = prompt.split()
        try:
            for i in range(max_tokens + 1):
                time.sleep(self.step_s)
                for processor in processors:
                    processor(np.zeros(len(words) + i), np.zeros(3))
                self.tokens += 1
                if i == len(words):
                    yield chunk(None, "stop")
                    return
                if i == max_tokens:
                    yield chunk(None, "length")
                    return
                yield chunk(f" {words[i]}" if i else words[i], None)
        finally:
            self.active -= 1


def chat_chunk(text: str | None, finish_reason: str | None) -> dict[str, Any]:
    return {"choices": [{"delta": {"content": text} if text else {}, "finish_reason": finish_reason}]}


def completion_chunk(text: str | None, finish_reason: str | None) -> dict[str, Any]:
    return {"choices": [{"text": text or "", "finish_reason": finish_reason}]}


def job(text: str, max_tokens: int = 10_000) -> GenerationJob:
    return GenerationJob(prompt=[{"role": "user", "content": text}], max_tokens=max_tokens, temperature=0.0, stop=[])


async def run_to_end(runner: ModelRunner, chat: GenerationJob) -> tuple[str, Finished]:
    texts: list[str] = []
    async for event in runner.generate(chat):
        if isinstance(event, TextDelta):
            texts.append(event.text)
        else:
            return "".join(texts), event
    raise AssertionError("no Finished event")


async def wait_for(condition: Any, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)


# ---------------------------------------------------------------- ModelRunner


async def test_jobs_run_one_at_a_time_in_arrival_order() -> None:
    model = FakeModel()
    runner = ModelRunner(model, max_waiting=8)
    prompts = ["alpha beta gamma", "delta epsilon", "zeta eta theta iota"]
    results = await asyncio.gather(*(run_to_end(runner, job(p)) for p in prompts))
    assert model.started == prompts
    assert model.max_active == 1
    for prompt, (text, finished) in zip(prompts, results, strict=True):
        assert text == prompt and finished.reason == "stop"
        assert finished.prompt_tokens == len(prompt.split())
    runner.close()


async def test_length_limit_and_token_counts() -> None:
    runner = ModelRunner(FakeModel(), max_waiting=0)
    text, finished = await run_to_end(runner, job(LONG_TEXT, max_tokens=7))
    assert text.split() == LONG_TEXT.split()[:7]
    assert (finished.reason, finished.completion_tokens) == ("length", 8)  # 7 words, then the stop decision
    runner.close()


async def test_queue_full_is_refused_before_waiting() -> None:
    runner = ModelRunner(FakeModel(), max_waiting=1)
    running = runner.generate(job(LONG_TEXT))
    await anext(running)
    waiting = asyncio.create_task(run_to_end(runner, job("queued job")))
    await asyncio.sleep(0.05)  # let it reach the queue
    with pytest.raises(QueueFull):
        await anext(runner.generate(job("one too many")))
    await running.aclose()
    text, _ = await waiting
    assert text == "queued job"
    runner.close()


async def test_closing_a_stream_stops_generation_and_frees_the_model() -> None:
    model = FakeModel()
    runner = ModelRunner(model, max_waiting=1)
    long_job = runner.generate(job(LONG_TEXT))
    await anext(long_job)
    await anext(long_job)
    await long_job.aclose()
    text, _ = await run_to_end(runner, job("next one"))
    assert text == "next one"
    assert model.tokens < 100  # far from the 5000 words the first job would have produced
    assert model.max_active == 1
    runner.close()


async def test_cancelled_waiter_leaves_the_queue() -> None:
    runner = ModelRunner(FakeModel(), max_waiting=1)
    running = runner.generate(job(LONG_TEXT))
    await anext(running)
    waiter = asyncio.create_task(run_to_end(runner, job("never runs")))
    await asyncio.sleep(0.05)
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter
    queued = asyncio.create_task(run_to_end(runner, job("takes the freed slot")))  # no QueueFull
    await asyncio.sleep(0.05)
    await running.aclose()
    assert (await queued)[0] == "takes the freed slot"
    runner.close()


async def test_rejected_job_is_a_bad_request_and_the_model_stays_usable() -> None:
    runner = ModelRunner(FakeModel(), max_waiting=0)
    with pytest.raises(GenerationFailed) as failed:
        await run_to_end(runner, job("TOO LONG"))
    assert failed.value.bad_request and "context window" in str(failed.value)
    assert (await run_to_end(runner, job("still works")))[0] == "still works"
    runner.close()


async def test_a_raw_prompt_is_completed_as_it_is() -> None:
    model = FakeModel()
    runner = ModelRunner(model, max_waiting=0)
    raw = GenerationJob(prompt="no chat template here", max_tokens=100, temperature=0.0, stop=["\n"], seed=7)
    text, finished = await run_to_end(runner, raw)
    assert (text, finished.reason) == ("no chat template here", "stop")
    call = model.calls[-1]
    assert (call["prompt"], call["stop"], call["seed"]) == ("no chat template here", ["\n"], 7)
    assert "messages" not in call
    runner.close()


def runner_counts(runner: ModelRunner) -> tuple[dict[str, float], dict[str, float]]:
    """The runner's requests by outcome and sampled tokens by outcome, read back from its `/metrics` text."""
    exposition = runner.metrics.exposition().decode()
    return counts_by_outcome(exposition, REQUESTS), counts_by_outcome(exposition, SAMPLED_TOKENS)


async def test_counters_tell_what_became_of_each_request() -> None:
    runner = ModelRunner(FakeModel(), max_waiting=1)
    assert runner_counts(runner)[0] == dict.fromkeys(["finished", "cancelled", "failed", "left_queue", "refused"], 0)
    await run_to_end(runner, job("one two three"))  # 3 words and the stop decision: 4 tokens
    with pytest.raises(GenerationFailed):
        await run_to_end(runner, job("TOO LONG"))
    running = runner.generate(job(LONG_TEXT))
    for _ in range(5):
        await anext(running)
    waiter = asyncio.create_task(run_to_end(runner, job("gives up")))
    await asyncio.sleep(0.05)
    with pytest.raises(QueueFull):
        await anext(runner.generate(job("one too many")))
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter
    await running.aclose()
    await run_to_end(runner, job("after"))  # runs once the cancelled one has freed the model
    requests, tokens = runner_counts(runner)
    assert requests == {"finished": 2, "cancelled": 1, "failed": 1, "left_queue": 1, "refused": 1}
    assert tokens["finished"] == 4 + 2
    assert 5 <= tokens["cancelled"] < 100  # stopped a few tokens after the 5 read, far from 5000
    runner.close()


# ---------------------------------------------------------------- the HTTP app


@pytest.fixture
def fake_model() -> FakeModel:
    return FakeModel()


@pytest.fixture
def serving(tmp_path: Path, fake_model: FakeModel) -> Iterator[Serving]:
    weights = tmp_path / "fake.gguf"
    weights.write_bytes(b"GGUF")
    runner = ModelRunner(fake_model, max_waiting=1)
    yield Serving(
        runner=runner,
        model=ModelInfo(name=MODEL_NAME, path=weights, family="llama", parameter_size="135M"),
        limits=TokenLimits(default=64, cap=128),
    )
    runner.close()


def asgi(serving: Serving) -> httpx.ASGITransport:
    return httpx.ASGITransport(app=create_app(serving))


def client_for(protocol: str, serving: Serving) -> OllamaClient | OpenAIClient:
    settings = LLMSettings(protocol=protocol, url="http://llm.test", model=MODEL_NAME)
    client_class = OllamaClient if protocol == "ollama" else OpenAIClient
    return client_class(settings, transport=asgi(serving))


PROTOCOLS = pytest.mark.parametrize("protocol", ["ollama", "openai"])


@PROTOCOLS
async def test_clients_read_the_app_streams(protocol: str, serving: Serving) -> None:
    request = GenerationRequest((ChatMessage("user", "the quick brown fox"),), max_tokens=3)
    async with client_for(protocol, serving) as client:
        assert await client.health()
        chunks = [chunk async for chunk in client.stream(request, timeout_s=5)]
    *texts, final = chunks
    assert "".join(chunk.text for chunk in texts) == "the quick brown"
    assert (final.finish_reason, final.prompt_tokens, final.completion_tokens) == ("length", 4, 4)


@PROTOCOLS
async def test_full_queue_answers_429_which_the_client_maps_to_overloaded(protocol: str, serving: Serving) -> None:
    running = serving.runner.generate(job(LONG_TEXT))
    await anext(running)
    waiting = asyncio.create_task(run_to_end(serving.runner, job("queued")))
    await asyncio.sleep(0.05)
    request = GenerationRequest((ChatMessage("user", "refused"),))
    async with client_for(protocol, serving) as client:
        with pytest.raises(Overloaded, match="already waiting"):
            async for _ in client.stream(request, timeout_s=5):
                pass
    await running.aclose()
    await waiting


CHAT = {"messages": [{"role": "user", "content": "one two three"}]}


@pytest.mark.parametrize(
    ("path", "fields", "text_of"),
    [
        ("/api/chat", {**CHAT, "stream": False}, lambda body: body["message"]["content"]),
        ("/api/generate", {"prompt": "one two three", "stream": False}, lambda body: body["response"]),
        ("/v1/chat/completions", CHAT, lambda body: body["choices"][0]["message"]["content"]),
    ],
)
async def test_unstreamed_answers_hold_the_whole_text(serving: Serving, path: str, fields: dict, text_of: Any) -> None:
    body = {"model": MODEL_NAME, **fields}
    async with httpx.AsyncClient(transport=asgi(serving), base_url="http://llm.test") as http:
        response = await http.post(path, json=body)
    assert response.status_code == 200
    assert text_of(response.json()) == "one two three"


@pytest.mark.parametrize(
    ("path", "body", "status", "expected"),
    [
        ("/api/chat", {"model": "other", "messages": [{"role": "user", "content": "x"}]}, 404, '"other" not found'),
        ("/api/chat", {"model": MODEL_NAME, "messages": []}, 400, "messages: List should have at least 1 item"),
        ("/api/chat", {"model": MODEL_NAME, "messages": [{"role": "user", "content": "TOO LONG"}]}, 400, "context"),
        ("/api/generate", {"model": "other", "prompt": "x"}, 404, '"other" not found'),
        ("/api/generate", {"model": MODEL_NAME}, 400, "prompt: Field required"),
        ("/api/generate", {"model": MODEL_NAME, "prompt": ""}, 400, "prompt: String should have at least 1 character"),
        ("/api/generate", {"model": MODEL_NAME, "prompt": "TOO LONG", "raw": True}, 400, "context"),
        ("/v1/chat/completions", {"model": "other", "messages": [{"role": "user", "content": "x"}]}, 404, "other"),
        ("/v1/chat/completions", {"model": MODEL_NAME, "messages": [{"role": "bot", "content": "x"}]}, 400, "role"),
    ],
)
async def test_bad_requests_get_the_apis_error_shape(
    serving: Serving, path: str, body: dict, status: int, expected: str
) -> None:
    async with httpx.AsyncClient(transport=asgi(serving), base_url="http://llm.test") as http:
        response = await http.post(path, json=body)
    assert response.status_code == status
    error = response.json()["error"]
    if path.startswith("/api"):  # Ollama: {"error": "..."}
        assert isinstance(error, str) and expected in error
    else:  # OpenAI: {"error": {"message": "...", "type": "..."}}
        assert expected in error["message"] and error["type"]


async def test_generate_streams_ndjson_and_hands_system_and_options_to_the_model(
    serving: Serving, fake_model: FakeModel
) -> None:
    options = {"num_predict": 3, "temperature": 0.2, "seed": 11, "stop": ["fox"], "repeat_penalty": 1.3}
    body = {"model": MODEL_NAME, "prompt": "the quick brown fox", "system": "Be brief.", "options": options}
    async with httpx.AsyncClient(transport=asgi(serving), base_url="http://llm.test") as http:
        response = await http.post("/api/generate", json=body)
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-ndjson"
    *chunks, final = [json.loads(line) for line in response.text.splitlines()]
    assert "".join(chunk["response"] for chunk in chunks) == "the quick brown"
    assert all(chunk["model"] == MODEL_NAME and not chunk["done"] for chunk in chunks)
    assert (final["done"], final["response"], final["done_reason"]) == (True, "", "length")
    assert (final["prompt_eval_count"], final["eval_count"]) == (4, 4)
    assert final["total_duration"] >= final["eval_duration"] > 0
    call = fake_model.calls[-1]
    assert call["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "the quick brown fox"},
    ]
    assert (call["max_tokens"], call["temperature"], call["seed"], call["stop"], call["repeat_penalty"]) == (
        3,
        0.2,
        11,
        ["fox"],
        1.3,
    )


async def test_raw_generate_skips_the_chat_template(serving: Serving, fake_model: FakeModel) -> None:
    body = {"model": MODEL_NAME, "prompt": "Once upon a time", "system": "ignored", "raw": True, "stream": False}
    async with httpx.AsyncClient(transport=asgi(serving), base_url="http://llm.test") as http:
        answer = (await http.post("/api/generate", json=body)).json()
    assert (answer["response"], answer["done"], answer["done_reason"]) == ("Once upon a time", True, "stop")
    assert fake_model.calls[-1]["prompt"] == "Once upon a time" and "messages" not in fake_model.calls[-1]


async def test_metrics_count_the_requests(serving: Serving) -> None:
    body = {"model": MODEL_NAME, "prompt": "one two", "stream": False}
    async with httpx.AsyncClient(transport=asgi(serving), base_url="http://llm.test") as http:
        await http.post("/api/generate", json=body)
        metrics = await http.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert counts_by_outcome(metrics.text, REQUESTS)["finished"] == 1
    assert counts_by_outcome(metrics.text, SAMPLED_TOKENS)["finished"] == 3  # 2 words and the stop decision


async def test_model_lists_name_the_served_model(serving: Serving) -> None:
    async with httpx.AsyncClient(transport=asgi(serving), base_url="http://llm.test") as http:
        tags = (await http.get("/api/tags")).json()
        models = (await http.get("/v1/models")).json()
        version = (await http.get("/api/version")).json()
    assert tags["models"][0]["name"] == f"{MODEL_NAME}:latest" and tags["models"][0]["size"] == 4
    assert models["data"][0]["id"] == MODEL_NAME
    assert version["version"]


# ---------------------------------------------------------------- limits and configuration


def test_token_limits() -> None:
    limits = TokenLimits(default=64, cap=128)
    assert [limits.resolve(n) for n in (None, 10, 500, -1, 0)] == [64, 10, 128, 128, 128]


def test_config_round_trips_through_the_command_line() -> None:
    config = ServerConfig(port=1234, n_threads=3, max_waiting=0, model_path="/m.gguf", weights_type="")
    assert parse_args(config.to_argv()) == config
    with pytest.raises(ValueError, match="default_max_tokens"):
        ServerConfig(default_max_tokens=2048, max_tokens_cap=1024)
    with pytest.raises(ValueError, match="weights_type"):
        ServerConfig(weights_type="q2_k")


def test_shipped_weights_convert_to_q8_0(tmp_path: Path) -> None:
    converted = convert_weights(shipped_model_path(), "q8_0", tmp_path / "model.q8_0.gguf")
    model = Llama(model_path=str(converted), vocab_only=True, verbose=False)
    assert model.metadata["general.file_type"] == str(llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0)
    not_a_model = tmp_path / "broken.gguf"
    not_a_model.write_bytes(b"not a gguf file")
    with pytest.raises(RuntimeError, match=r"broken\.gguf"):
        convert_weights(not_a_model, "q8_0", tmp_path / "out.gguf")


# ---------------------------------------------------------------- the official clients, over a real port


@pytest.fixture
def app_url(serving: Serving) -> Iterator[str]:
    """The app served by uvicorn on a thread, for the official clients' blocking calls."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(serving), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="llm-app", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_official_ollama_client(app_url: str) -> None:
    client = ollama.Client(host=app_url)
    assert [entry.model for entry in client.list().models] == [f"{MODEL_NAME}:latest"]

    answer = client.generate(model=MODEL_NAME, prompt="one two three", options={"temperature": 0})
    assert (answer.response, answer.done, answer.done_reason) == ("one two three", True, "stop")
    assert (answer.prompt_eval_count, answer.eval_count) == (3, 4)

    streamed = list(client.generate(model=MODEL_NAME, prompt="a b c d e", options={"num_predict": 3}, stream=True))
    assert [chunk.response for chunk in streamed] == ["a", " b", " c", ""]
    assert [chunk.done for chunk in streamed] == [False, False, False, True]
    assert (streamed[-1].done_reason, streamed[-1].eval_count) == ("length", 4)

    messages = [{"role": "user", "content": "hello there"}]
    reply = client.chat(model=MODEL_NAME, messages=messages)
    assert (reply.message.role, reply.message.content, reply.done_reason) == ("assistant", "hello there", "stop")
    chunks = list(client.chat(model=MODEL_NAME, messages=messages, stream=True))
    assert "".join(chunk.message.content for chunk in chunks) == "hello there" and chunks[-1].done

    with pytest.raises(ollama.ResponseError) as missing:
        client.generate(model="other", prompt="x")
    assert missing.value.status_code == 404 and '"other" not found' in missing.value.error


def test_official_openai_client(app_url: str) -> None:
    client = openai.OpenAI(base_url=f"{app_url}/v1", api_key="unused", max_retries=0)
    assert [model.id for model in client.models.list()] == [MODEL_NAME]
    messages: Any = [{"role": "user", "content": "one two three four"}]

    completion = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=2)
    choice = completion.choices[0]
    assert (choice.message.content, choice.finish_reason) == ("one two", "length")
    assert completion.usage is not None and (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        4,
        3,
    )

    stream = client.chat.completions.create(
        model=MODEL_NAME, messages=messages, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == "one two three four"
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5

    with pytest.raises(openai.NotFoundError, match="other"):
        client.chat.completions.create(model="other", messages=messages)
