"""The LLM behind the `Answer` RPC: a streaming chat client for Ollama's API or an OpenAI-compatible
server, and the RAG prompt.

    client = make_llm_client(settings.llm)
    messages = build_rag_messages(question, [(p.id, p.title, p.text) for p in passages])
    async with contextlib.aclosing(client.stream(GenerationRequest(messages), timeout_s=t)) as chunks:
        async for chunk in chunks:
            ...  # chunk.text while generating; chunk.final -> finish_reason and token counts
"""

from __future__ import annotations

from server.config import LLMSettings
from server.llm.ollama import OllamaClient
from server.llm.openai_compat import OpenAIClient
from server.llm.prompt import NO_SOURCES_ANSWER, ContextPassage, build_rag_messages
from server.llm.types import ChatMessage, GenerationRequest, LLMClient, TokenChunk

__all__ = [
    "NO_SOURCES_ANSWER",
    "ChatMessage",
    "ContextPassage",
    "GenerationRequest",
    "LLMClient",
    "OllamaClient",
    "OpenAIClient",
    "TokenChunk",
    "build_rag_messages",
    "make_llm_client",
]


def make_llm_client(settings: LLMSettings) -> LLMClient:
    """The client for `settings.protocol`, talking to `settings.url`."""
    clients = {"ollama": OllamaClient, "openai": OpenAIClient}
    return clients[settings.protocol](settings)
