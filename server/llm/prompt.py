"""The RAG prompt: retrieved passages, labelled with their ids, then the question.

Kept short on purpose: the local model (SmolLM2-135M) follows a brief instruction and answers
single-passage questions; every prompt token also costs time to first token. Deciding that no
passage is relevant (score threshold) is the gateway's job; it then answers `NO_SOURCES_ANSWER`
instead of calling the LLM.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from server.llm.types import ChatMessage

SYSTEM_PROMPT = (
    "Answer the question using only the passages below. Reply in one or two sentences and cite "
    "the id of each passage you used in square brackets, like {example}."
)
NO_SOURCES_ANSWER = "The sources do not contain an answer to this question."
DEFAULT_MAX_PASSAGE_CHARS = 400  # ~90 tokens: 3 passages keep the prompt near 300 tokens


class ContextPassage(NamedTuple):
    id: str
    title: str
    text: str


def build_rag_messages(
    question: str,
    passages: Sequence[tuple[str, str, str]],
    *,
    max_passage_chars: int = DEFAULT_MAX_PASSAGE_CHARS,
) -> tuple[ChatMessage, ...]:
    """System instruction + one user message holding the passages (best first) and the question.

    Each passage is `(id, title, text)`; its text is cut to `max_passage_chars` at a word boundary.
    """
    if not passages:
        raise ValueError("build_rag_messages needs at least one passage (use NO_SOURCES_ANSWER otherwise)")
    context = [ContextPassage(*passage) for passage in passages]
    blocks = [_passage_block(p, max_passage_chars) for p in context]
    user = "\n\n".join([*blocks, f"Question: {question.strip()}"])
    system = SYSTEM_PROMPT.format(example=f"[{context[0].id}]")
    return (ChatMessage("system", system), ChatMessage("user", user))


def _passage_block(passage: ContextPassage, max_chars: int) -> str:
    heading = f"[{passage.id}] {passage.title.strip()}".rstrip()
    return f"{heading}\n{_shorten(passage.text.strip(), max_chars)}"


def _shorten(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars].rsplit(" ", 1)[0]
    return f"{cut}..."
