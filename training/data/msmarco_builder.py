"""Build the offline MS MARCO-format set from real article bodies and titles.

Output (`out_dir`): collection.tsv, queries.train.tsv, queries.dev.tsv, qrels.train.tsv,
qrels.dev.tsv (TREC) and the passage_meta.tsv sidecar.

Passages  Every usable article's body, cut at sentence boundaries into chunks of roughly
          `MIN_WORDS`..`MAX_WORDS` words (`chunk_sentences`), pid `P<article_id>_<k>`, k from 0.
          All chunks of all articles are in the collection (dev queries' passages included).
Queries   The article title, qid `Q<article_id>`. Relevant (grade 1): the article's lead passage
          `P<article_id>_0` — the title is written to announce it. Other passages of the same
          article are unjudged, as in MS MARCO (sparse judgements). Titles identical after
          case-folding keep the first article (by publication time, then id); the rest are dropped
          with a logged count.
Split     A seeded random `DEV_FRACTION` of the queries (at least `MIN_DEV_QUERIES`, at most half)
          is dev and never appears in the train files.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.data.msmarco import write_collection, write_passage_meta, write_qrels, write_queries
from training.data.news_corpus import SourceArticle, split_sentences
from training.data.types import PassageMeta

logger = logging.getLogger(__name__)

MIN_WORDS = 60
MAX_WORDS = 120
DEV_FRACTION = 0.1
MIN_DEV_QUERIES = 300

COLLECTION_FILE = "collection.tsv"
QUERIES_TRAIN_FILE = "queries.train.tsv"
QUERIES_DEV_FILE = "queries.dev.tsv"
QRELS_TRAIN_FILE = "qrels.train.tsv"
QRELS_DEV_FILE = "qrels.dev.tsv"
PASSAGE_META_FILE = "passage_meta.tsv"


def passage_id(article: SourceArticle, number: int) -> str:
    return f"P{article.article_id}_{number}"


def chunk_sentences(text: str, min_words: int = MIN_WORDS, max_words: int = MAX_WORDS) -> list[str]:
    """Greedy sentence packing: a chunk closes once it has `min_words` and the next sentence would
    pass `max_words`; sentences longer than `max_words` are cut into `max_words` pieces first; a
    last chunk under `min_words` joins the one before it."""
    chunks: list[list[str]] = [[]]
    length = 0
    for sentence in _bounded_sentences(text, max_words):
        sentence_length = len(sentence.split())
        if length >= min_words and length + sentence_length > max_words:
            chunks.append([])
            length = 0
        chunks[-1].append(sentence)
        length += sentence_length
    if len(chunks) > 1 and length < min_words:
        chunks[-2].extend(chunks.pop())
    return [" ".join(chunk) for chunk in chunks if chunk]


def _bounded_sentences(text: str, max_words: int) -> list[str]:
    pieces = []
    for sentence in split_sentences(text):
        words = sentence.split()
        pieces.extend(" ".join(words[start : start + max_words]) for start in range(0, len(words), max_words))
    return pieces


def build_msmarco(out_dir: Path, articles: Sequence[SourceArticle], seed: int) -> dict[str, Any]:
    """Write the six files into `out_dir`; return counts."""
    passages: dict[str, str] = {}
    meta: dict[str, PassageMeta] = {}
    for article in articles:
        for number, passage in enumerate(chunk_sentences(article.text)):
            passages[passage_id(article, number)] = passage
            meta[passage_id(article, number)] = PassageMeta(
                doc_id=f"D{article.article_id}",
                title=article.title,
                category=article.category,
                published=article.published,
            )
    write_collection(out_dir / COLLECTION_FILE, passages)
    write_passage_meta(out_dir / PASSAGE_META_FILE, meta)
    query_articles = _distinct_title_articles(articles)
    dev_qids = _dev_split(sorted(query_articles), seed)
    counts = {}
    for split, queries_file, qrels_file in (
        ("train", QUERIES_TRAIN_FILE, QRELS_TRAIN_FILE),
        ("dev", QUERIES_DEV_FILE, QRELS_DEV_FILE),
    ):
        chosen = {qid: article for qid, article in query_articles.items() if (qid in dev_qids) == (split == "dev")}
        write_queries(out_dir / queries_file, {qid: article.title for qid, article in chosen.items()})
        write_qrels(out_dir / qrels_file, {qid: {passage_id(article, 0): 1} for qid, article in chosen.items()})
        counts[f"queries_{split}"] = len(chosen)
    lengths = np.array([len(passage.split()) for passage in passages.values()])
    stats = {
        "documents": len(articles),
        "passages": len(passages),
        "passage_words_p10_p50_p90": [int(value) for value in np.percentile(lengths, [10, 50, 90])],
        **counts,
        "duplicate_titles_dropped": len(articles) - len(query_articles),
    }
    logger.info("MS MARCO-format set: %s", stats)
    return stats


def _distinct_title_articles(articles: Sequence[SourceArticle]) -> dict[str, SourceArticle]:
    """{qid: article} keeping the first article of each case-folded title."""
    chosen: dict[str, SourceArticle] = {}
    seen_titles: set[str] = set()
    for article in sorted(articles, key=lambda article: (article.published, article.article_id)):
        title = article.title.casefold()
        if title not in seen_titles:
            seen_titles.add(title)
            chosen[f"Q{article.article_id}"] = article
    if len(chosen) < len(articles):
        logger.info("dropped %d queries whose title repeats an earlier article's", len(articles) - len(chosen))
    return chosen


def _dev_split(qids: Sequence[str], seed: int) -> set[str]:
    size = min(max(round(DEV_FRACTION * len(qids)), MIN_DEV_QUERIES), len(qids) // 2)
    chosen = np.random.default_rng(seed).choice(len(qids), size=size, replace=False)
    return {qids[index] for index in chosen}
