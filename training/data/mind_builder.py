"""Build the offline MIND-format set: real articles, simulated readers, written as MIND writes it.

Output (`out_dir`): `train/` and `dev/`, each with news.tsv, behaviors.tsv and the
news_published.tsv sidecar. Like MIND, both news.tsv files hold every article either split
references (history or candidate), and behaviors.tsv carries labeled impressions (`N12-1`).

Article -> news.tsv row: news_id `N<article_id>`; category from the URL (`news_corpus.categorize`);
subcategory = the outlet (`bbc.co.uk`; the corpus has nothing finer than the URL section); title;
abstract = the subtitle, else the first sentence of the body; url; entity columns `[]`.
Readers and clicks come from `mind_sim` (its docstring is the generative model).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.data.mind import BEHAVIORS_FILE, NEWS_FILE, write_behaviors, write_news
from training.data.mind_sanity import click_rate, generator_sanity
from training.data.mind_sim import MindSimConfig, SimulatedLog, simulate_behaviors
from training.data.news_corpus import SourceArticle, split_sentences
from training.data.topics import TopicModel, fit_topics
from training.data.types import NewsArticle

logger = logging.getLogger(__name__)


def news_id_of(article: SourceArticle) -> str:
    return f"N{article.article_id}"


def to_news_article(article: SourceArticle) -> NewsArticle:
    """The news.tsv record of a source article (mapping in the module docstring)."""
    abstract = article.subtitle or next(iter(split_sentences(article.text)), "")
    return NewsArticle(
        news_id=news_id_of(article),
        category=article.category,
        subcategory=article.outlet,
        title=article.title,
        abstract=abstract,
        url=article.url,
        published=article.published,
    )


def simulate_mind(
    articles: Sequence[SourceArticle], config: MindSimConfig, seed: int
) -> tuple[TopicModel, SimulatedLog]:
    """Topic model of the bodies, then the simulated log over these articles."""
    topics = fit_topics([article.text for article in articles], config.n_topics)
    log = simulate_behaviors(
        [news_id_of(article) for article in articles],
        [article.published for article in articles],
        topics.mixtures,
        config,
        seed,
    )
    return topics, log


def build_mind(out_dir: Path, articles: Sequence[SourceArticle], config: MindSimConfig, seed: int) -> dict[str, Any]:
    """Simulate and write `out_dir/train` and `out_dir/dev`; return counts and sanity numbers."""
    topics, log = simulate_mind(articles, config, seed)
    referenced = {
        news_id for impression in log.impressions for news_id in (*impression.history, *impression.candidates)
    }
    catalog = [to_news_article(article) for article in articles if news_id_of(article) in referenced]
    train, dev = log.train, log.dev
    history_lengths = {impression.user_id: len(impression.history) for impression in log.impressions}
    for split, impressions in (("train", train), ("dev", dev)):
        write_news(out_dir / split / NEWS_FILE, catalog)
        write_behaviors(out_dir / split / BEHAVIORS_FILE, impressions)
    stats = {
        "news": len(catalog),
        "users": len({impression.user_id for impression in log.impressions}),
        "impressions_train": len(train),
        "impressions_dev": len(dev),
        "click_rate_train": round(click_rate(train), 4),
        "click_rate_dev": round(click_rate(dev), 4),
        "candidates_per_impression": round(float(np.mean([len(i.candidates) for i in log.impressions])), 2),
        "history_length_per_user_mean": round(float(np.mean(list(history_lengths.values()))), 2),
        "users_with_empty_history": sum(length == 0 for length in history_lengths.values()),
        "log_start": log.log_start.isoformat(),
        "dev_start": log.dev_start.isoformat(),
        "generator_sanity_dev_group_auc": generator_sanity(log, seed),
    }
    logger.info("MIND-format set: %s", stats)
    return {**stats, "topics": [" ".join(words) for words in topics.top_words]}
