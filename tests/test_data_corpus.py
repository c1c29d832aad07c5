"""The source corpus reader: cleaning, URL categories, sentence splitting and passage chunking."""

from __future__ import annotations

import pytest

from training.data.msmarco_builder import chunk_sentences
from training.data.news_corpus import (
    CATEGORY_SECTIONS,
    MIN_BODY_WORDS,
    categorize,
    load_source_articles,
    split_sentences,
)


@pytest.mark.parametrize(
    ("url", "category"),
    [
        ("http://abcnews.go.com/Politics/wireStory/trump-fears-fraud-45328264", "politics"),
        ("http://www.cnn.com/2017/02/07/politics/betsy-devos-senate-vote/index.html", "politics"),
        ("http://www.bbc.co.uk/news/uk-england-beds-bucks-herts-38893753", "uk"),  # id dropped, prefix
        ("http://www.bbc.co.uk/news/world-us-canada-38897507", "us"),
        ("http://www.bbc.co.uk/sport/football/38897347", "sports"),
        ("http://tass.com/economy/929603", "business"),
        ("http://www.aljazeera.com/indepth/opinion/2017/02/some-slug-170207.html", "opinion"),
        ("http://www.rte.ie/news/ireland/2017/0207/850712-waiting-lists/", "ireland"),
        # no section in the URL: the outlet's home region
        ("http://www.rte.ie/news/2017/0207/850712-waiting-lists-reaction/", "ireland"),
        ("http://www.huffingtonpost.com/2017/02/07/donald-trump-vaccines_n_14636042.html", "us"),
        ("http://www.dw.com/en/world-in-progress-multiclick/a-37449914", "world"),  # slug, not a section
        ("http://europe.chinadaily.com.cn/epaper/2017-01/27/content_28064830.htm", "world"),
    ],
)
def test_categorize_reads_the_url_section_or_falls_back_to_the_outlet(url: str, category: str) -> None:
    assert categorize(url) == category


def test_sentences_do_not_split_after_abbreviations() -> None:
    text = 'Mr. Trump met U.S. officials. "It went well." Then he left! Did he? yes.'
    assert split_sentences(text) == [
        "Mr. Trump met U.S. officials.",
        '"It went well."',
        "Then he left!",
        "Did he? yes.",
    ]


def test_chunks_keep_every_word_in_order_within_bounds() -> None:
    sentences = [" ".join(f"w{index}_{word}" for word in range(length)) + "." for index, length in
                 enumerate([30, 25, 40, 70, 10, 300, 15])]  # fmt: skip
    text = " ".join(sentences)
    chunks = chunk_sentences(text, min_words=60, max_words=120)
    assert " ".join(chunks).split() == text.split()
    lengths = [len(chunk.split()) for chunk in chunks]
    assert all(length >= 60 for length in lengths)
    assert all(length <= 120 + 60 for length in lengths)  # a short tail may join the last chunk


def test_short_text_is_one_chunk() -> None:
    assert chunk_sentences("One sentence. Another one.") == ["One sentence. Another one."]


def test_source_articles_are_clean_and_a_subset_spans_the_calendar() -> None:
    everything = load_source_articles()
    subset = load_source_articles(max_articles=100)
    assert len(subset) == 100
    assert subset[0].published == everything[0].published
    assert subset[-1].published == everything[-1].published
    assert len({article.published.date() for article in subset}) > 20
    for article in everything:
        assert len(article.text.split()) >= MIN_BODY_WORDS
        assert article.title
        assert not any(char in field for field in (article.title, article.subtitle, article.text) for char in "\t\n\r")
        assert "Permalink http" not in article.text  # DW share widget removed
        assert article.category in CATEGORY_SECTIONS
    assert len({article.category for article in everything}) >= 10
