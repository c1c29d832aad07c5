"""One llama.cpp model generating for one request at a time, in arrival order, on a worker thread.

The llama runtime is not thread-safe per model, so `ModelRunner` admits at most one running job
plus `max_waiting` queued ones (FIFO); one more raises `QueueFull`. The job runs on a single worker
thread that hands each token to the caller's event loop. Closing (or cancelling) the caller's
iterator stops generation at the next token, and the model passes to the next job as soon as the
worker is done with it, never before.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import llama_cpp
import numpy as np
from llama_cpp import Llama, LogitsProcessorList

from devstack.llm_server.metrics import RunnerMetrics

log = logging.getLogger(__name__)
WEIGHT_TYPES = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0}  # what `convert_weights` can produce


Messages = list[dict[str, str]]


@dataclass(frozen=True, slots=True)
class GenerationJob:
    """One request for the model. `prompt`: chat messages, which the model's own chat template
    formats, or a text the model continues as it is (Ollama's `raw` generate)."""

    prompt: Messages | str
    max_tokens: int
    temperature: float
    stop: list[str]
    seed: int | None = None
    # Ollama's and llama.cpp's usual default; llama-cpp-python's own is 1.0, with which the 135M model
    # loops on a phrase until max_tokens (seen on the demo's questions).
    repeat_penalty: float = 1.1


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class Finished:
    reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int  # tokens sampled, the end-of-generation token included (llama.cpp's n_decoded)
    prompt_eval_s: float  # job start to first token
    eval_s: float  # first token to the end


@dataclass(frozen=True, slots=True)
class Cancelled:
    sampled_tokens: int  # before the cancellation was seen


class QueueFull(Exception):
    """Every queue slot is taken; the caller should answer 429 and the client retry later."""


class GenerationFailed(Exception):
    """The runtime rejected or failed the job; `bad_request` when the job itself was at fault."""

    def __init__(self, message: str, *, bad_request: bool) -> None:
        super().__init__(message)
        self.bad_request = bad_request


Event = TextDelta | Finished
Outcome = Finished | GenerationFailed | Cancelled
Finish = Callable[[Outcome], None]


class LanguageModel(Protocol):
    """The part of `llama_cpp.Llama` the runner uses."""

    def create_chat_completion(self, **kwargs: Any) -> Generator[dict[str, Any], None, None]: ...

    def create_completion(self, **kwargs: Any) -> Generator[dict[str, Any], None, None]: ...


def convert_weights(source: Path, weights_type: str, target: Path) -> Path:
    """`source` with its weights converted by llama.cpp's quantizer to `weights_type`, written to `target`.

    Why: llama.cpp's batched CPU matmul has no fast path for the shipped Q4_1 weights; as Q8_0 the
    same model evaluates prompts about twice as fast and gives the same greedy answers (measured).
    """
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = WEIGHT_TYPES[weights_type]
    params.allow_requantize = True
    with _llama_cpp_log_level(logging.CRITICAL + 1):  # the quantizer logs every tensor, at level "none"
        failed = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if failed:
        raise RuntimeError(f"llama.cpp could not convert {source} to {weights_type}")
    return target


@contextlib.contextmanager
def _llama_cpp_log_level(level: int) -> Iterator[None]:
    """llama-cpp-python prints llama.cpp's log lines at or above its logger's level."""
    logger = logging.getLogger("llama-cpp-python")
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


def load_model(model_path: Path, *, n_ctx: int, n_threads: int, n_threads_batch: int, n_batch: int) -> Llama:
    """The GGUF model, ready to generate; its own chat template formats the messages."""
    return Llama(
        model_path=str(model_path),
        n_ctx=n_ctx,
        n_threads=n_threads,
        n_threads_batch=n_threads_batch,
        n_batch=n_batch,
        verbose=False,
    )


class _TokenCounter:
    """A pass-through logits processor: its first call sees the prompt, each call is one sampled token."""

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.sampled_tokens = 0

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if not self.sampled_tokens:
            self.prompt_tokens = len(input_ids)
        self.sampled_tokens += 1
        return scores


class ModelRunner:
    """Runs `GenerationJob`s on the model one at a time, FIFO, with a bounded queue (see the module docstring);
    counts what became of each request in `metrics`."""

    def __init__(self, model: LanguageModel, *, max_waiting: int) -> None:
        self._model = model
        self.metrics = RunnerMetrics()
        self._max_waiting = max_waiting
        self._admitted = 0  # the running job plus the waiting ones
        self._turn = asyncio.Lock()  # FIFO: waiters are woken in arrival order
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-generate")

    async def generate(self, job: GenerationJob) -> AsyncGenerator[Event, None]:
        """Text deltas, then one `Finished` once the model is free for the next job.

        Raises QueueFull before waiting, GenerationFailed when the runtime rejects or fails the job.
        """
        await self._wait_turn()
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event | GenerationFailed] = asyncio.Queue()
        cancelled = threading.Event()

        def emit(text: str) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed while a cancelled job wound down
                loop.call_soon_threadsafe(events.put_nowait, TextDelta(text))

        def finish(outcome: Outcome) -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._end_turn, events, outcome)

        self._worker.submit(self._run, job, cancelled, emit, finish)
        try:
            while True:
                event = await events.get()
                if isinstance(event, GenerationFailed):
                    raise event
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            cancelled.set()

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)

    async def _wait_turn(self) -> None:
        if self._admitted > self._max_waiting:
            self.metrics.count("refused")
            raise QueueFull(f"server busy: {self._admitted - 1} requests already waiting for the model")
        self._admitted += 1
        try:
            await self._turn.acquire()
        except BaseException:
            self._admitted -= 1
            self.metrics.count("left_queue")
            raise

    def _end_turn(self, events: asyncio.Queue[Event | GenerationFailed], outcome: Outcome) -> None:
        """On the loop, once the worker is done with the model: free the turn, count, deliver the outcome."""
        self._admitted -= 1
        self._turn.release()
        if isinstance(outcome, Cancelled):
            self.metrics.count("cancelled", outcome.sampled_tokens)
            return  # nobody is reading
        if isinstance(outcome, Finished):
            self.metrics.count("finished", outcome.completion_tokens)
        else:
            self.metrics.count("failed")
        events.put_nowait(outcome)

    def _run(self, job: GenerationJob, cancelled: threading.Event, emit: Callable[[str], None], finish: Finish) -> None:
        """Worker thread: generate until done or `cancelled`; the outcome goes to `finish`, whatever happens.

        The single worker thread is what keeps the model to one job at a time: the next job's `_run`
        cannot start before this one has returned.
        """
        outcome: Outcome = GenerationFailed("the generation was interrupted", bad_request=False)
        try:
            outcome = self._generate(job, cancelled, emit)
        except ValueError as exc:  # llama_cpp's verdict on the job, e.g. a prompt longer than the context
            outcome = GenerationFailed(str(exc), bad_request=True)
        except Exception as exc:
            log.exception("generation failed")
            outcome = GenerationFailed(f"{type(exc).__name__}: {exc}", bad_request=False)
        finally:
            finish(outcome)

    def _generate(
        self, job: GenerationJob, cancelled: threading.Event, on_text: Callable[[str], None]
    ) -> Finished | Cancelled:
        counter = _TokenCounter()
        started = time.perf_counter()
        first_token_at: float | None = None
        reason = "length"
        chunks = self._stream(job, counter)
        try:
            for chunk in chunks:
                if cancelled.is_set():
                    log.info("cancelled after %d tokens", counter.sampled_tokens)
                    return Cancelled(counter.sampled_tokens)
                choice = chunk["choices"][0]
                text = _chunk_text(choice)
                if text:
                    first_token_at = first_token_at or time.perf_counter()
                    on_text(text)
                reason = choice["finish_reason"] or reason
        finally:
            chunks.close()
        ended = time.perf_counter()
        first_token_at = first_token_at or ended
        finished = Finished(
            reason=reason,
            prompt_tokens=counter.prompt_tokens,
            completion_tokens=counter.sampled_tokens,
            prompt_eval_s=first_token_at - started,
            eval_s=ended - first_token_at,
        )
        log.info(
            "finished (%s): %d prompt tokens, %d sampled, first token after %.0f ms",
            reason,
            finished.prompt_tokens,
            finished.completion_tokens,
            finished.prompt_eval_s * 1000,
        )
        return finished

    def _stream(self, job: GenerationJob, counter: _TokenCounter) -> Generator[dict[str, Any], None, None]:
        """llama_cpp's chunk stream for the job: a chat completion, or a plain one for a raw prompt."""
        sampling: dict[str, Any] = {
            "max_tokens": job.max_tokens,
            "temperature": job.temperature,
            "stop": job.stop,
            "seed": job.seed,
            "repeat_penalty": job.repeat_penalty,
            "stream": True,
            "logits_processor": LogitsProcessorList([counter]),
        }
        if isinstance(job.prompt, str):
            return self._model.create_completion(prompt=job.prompt, **sampling)
        return self._model.create_chat_completion(messages=job.prompt, **sampling)


def _chunk_text(choice: dict[str, Any]) -> str | None:
    """The text of a streamed choice: chat chunks carry it in `delta.content`, plain completions in `text`."""
    if "text" in choice:
        text: str | None = choice["text"]
        return text
    content: str | None = choice["delta"].get("content")
    return content
