"""The RAG prompt: passages labelled with their ids, in retrieval order, then the question."""

from __future__ import annotations

import pytest

from server.llm import ContextPassage, build_rag_messages

PASSAGES = [
    ("P12_0", "Eiffel Tower", "The Eiffel Tower was completed in 1889."),
    ("P7_1", "Mount Everest", "Mount Everest is 8,849 metres high."),
]


def test_passages_are_labelled_with_ids_in_order_before_the_question() -> None:
    system, user = build_rag_messages("  When was the Eiffel Tower completed? ", PASSAGES)
    assert (system.role, user.role) == ("system", "user")
    positions = [user.content.index(marker) for marker in ("[P12_0] Eiffel Tower", "[P7_1] Mount Everest")]
    assert positions == sorted(positions)
    assert "The Eiffel Tower was completed in 1889." in user.content
    assert user.content.endswith("Question: When was the Eiffel Tower completed?")
    assert "[P12_0]" in system.content  # the citation example uses a real id


def test_named_passages_and_plain_tuples_give_the_same_prompt() -> None:
    named = [ContextPassage(*passage) for passage in PASSAGES]
    assert build_rag_messages("q?", named) == build_rag_messages("q?", PASSAGES)


def test_long_passage_is_cut_at_a_word_boundary() -> None:
    words = " ".join(f"word{i}" for i in range(400))
    _, user = build_rag_messages("q?", [("P1_0", "Long", words)], max_passage_chars=100)
    passage_text = user.content.split("\n")[1]
    assert passage_text.endswith("...")
    kept = passage_text.removesuffix("...")
    assert len(kept) <= 100 and words.startswith(kept) and words[len(kept)] == " "


def test_no_passages_is_refused() -> None:
    with pytest.raises(ValueError, match="NO_SOURCES_ANSWER"):
        build_rag_messages("q?", [])
