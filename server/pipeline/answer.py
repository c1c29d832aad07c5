"""Answer (RAG): retrieve passages with the Search pipeline, then stream the LLM's answer over them.

Events, in this order: one `Sources`, zero or more `Token`s, one `Done`.

Grounding: when the best passage scores below `min_score` (cosine similarity of the two-tower
vectors), the answer is the fixed "not in the sources" text and the LLM is not called: a small model
asked without relevant context would invent one. Cancellation (the client went away or its deadline
passed) propagates into the LLM stream, which closes its HTTP response, so the LLM server stops
generating at the next token and takes the next request.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from server.config import RagSettings
from server.domain import AnswerQuery, SearchQuery
from server.llm import LLMClient
from server.llm.prompt import NO_SOURCES_ANSWER, ContextPassage, build_rag_messages
from server.llm.types import GenerationRequest
from server.pipeline.common import Item, RequestContext
from server.pipeline.search import PassageSearch


@dataclass(frozen=True)
class Sources:
    passages: list[Item]
    grounded: bool


@dataclass(frozen=True)
class Token:
    text: str


@dataclass(frozen=True)
class Done:
    text: str
    finish_reason: str  # "stop", "length", "no_sources", or another reason the LLM reported
    prompt_tokens: int
    completion_tokens: int
    retrieval_ms: float
    time_to_first_token_ms: float
    tokens_per_second: float
    total_ms: float


AnswerEvent = Sources | Token | Done


class Answerer:
    def __init__(self, search: PassageSearch, llm: LLMClient, settings: RagSettings) -> None:
        self.search, self.llm, self.settings = search, llm, settings

    async def __call__(self, query: AnswerQuery, ctx: RequestContext) -> AsyncIterator[AnswerEvent]:
        started = time.perf_counter()
        passages = await self.search(SearchQuery(query.question, query.k, query.filters), ctx)
        retrieval_ms = (time.perf_counter() - started) * 1000
        grounded = bool(passages) and passages[0].score >= self.settings.min_score
        yield Sources(passages, grounded)
        if not grounded:
            yield Token(NO_SOURCES_ANSWER)
            total_ms = (time.perf_counter() - started) * 1000
            yield Done(NO_SOURCES_ANSWER, "no_sources", 0, 0, retrieval_ms, total_ms, 0.0, total_ms)
            return
        request = GenerationRequest(
            messages=build_rag_messages(
                query.question,
                [ContextPassage(p.item_id, p.title, p.text) for p in passages],
                max_passage_chars=self.settings.prompt_passage_chars,
            ),
            max_tokens=query.max_tokens,
            temperature=query.temperature,
        )
        parts: list[str] = []
        first_token_at = 0.0
        final = None
        with ctx.timer.stage("llm.generate"):
            stream = self.llm.stream(request, timeout_s=ctx.remaining("llm"))
            async with contextlib.aclosing(stream) as chunks:
                async for chunk in chunks:
                    if chunk.final:
                        final = chunk
                    elif chunk.text:
                        first_token_at = first_token_at or time.perf_counter()
                        parts.append(chunk.text)
                        yield Token(chunk.text)
        ended = time.perf_counter()
        generating_s = ended - first_token_at if first_token_at else 0.0
        completion_tokens = (final.completion_tokens if final else None) or len(parts)
        yield Done(
            text="".join(parts),
            finish_reason=(final.finish_reason if final else None) or "stop",
            prompt_tokens=(final.prompt_tokens if final else None) or 0,
            completion_tokens=completion_tokens,
            retrieval_ms=retrieval_ms,
            time_to_first_token_ms=((first_token_at or ended) - started) * 1000,
            tokens_per_second=completion_tokens / generating_s if generating_s > 0 else 0.0,
            total_ms=(ended - started) * 1000,
        )
