"""Statistical sanity of the simulated readers: each click signal is really in the log.

For every signal (topic affinity, item appeal, freshness), clicked candidates must score higher
than the unclicked candidates of the same impression; with that signal's weight set to zero the
gap must (nearly) vanish, so these tests fail if the generator stops using the signal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from training.data.mind_sanity import generator_sanity, impression_auc
from training.data.mind_sim import SECONDS_PER_DAY, MindSimConfig, SimulatedLog, simulate_behaviors
from training.data.news_corpus import load_source_articles
from training.data.topics import fit_topics
from training.data.types import Impression

CONFIG = MindSimConfig(n_users=300, min_candidates=5, max_candidates=15)


@pytest.fixture(scope="module")
def simulate() -> Callable[[MindSimConfig], SimulatedLog]:
    """Simulate over 500 real articles, fitting their topics once."""
    articles = load_source_articles(max_articles=500)
    topics = fit_topics([article.text for article in articles], CONFIG.n_topics)
    ids = [f"N{article.article_id}" for article in articles]
    published = [article.published for article in articles]
    return lambda config: simulate_behaviors(ids, published, topics.mixtures, config, seed=0)


@pytest.fixture(scope="module")
def log(simulate: Callable[[MindSimConfig], SimulatedLog]) -> SimulatedLog:
    return simulate(CONFIG)


def _signal(log: SimulatedLog, name: str, impression: Impression) -> np.ndarray:
    if name == "affinity":
        return log.affinity(impression)
    index = [log.news_ids.index(news_id) for news_id in impression.candidates]
    if name == "appeal":
        return log.log_appeal[index]
    ages = [(impression.time - log.published[item]).total_seconds() / SECONDS_PER_DAY for item in index]
    return -np.array(ages)  # freshness


def clicked_minus_unclicked(log: SimulatedLog, name: str) -> float:
    """Mean over impressions of mean(signal | clicked) - mean(signal | not clicked)."""
    gaps = []
    for impression in log.impressions:
        labels = np.array(impression.labels)
        if 0 < labels.sum() < len(labels):
            signal = _signal(log, name, impression)
            gaps.append(signal[labels == 1].mean() - signal[labels == 0].mean())
    return float(np.mean(gaps))


@pytest.mark.parametrize(
    ("signal", "weight"), [("affinity", "affinity_weight"), ("appeal", "appeal_weight"), ("freshness", "age_weight")]
)
def test_clicks_follow_each_signal_and_only_because_of_its_weight(
    simulate: Callable[[MindSimConfig], SimulatedLog], log: SimulatedLog, signal: str, weight: str
) -> None:
    gap = clicked_minus_unclicked(log, signal)
    without = simulate(replace(CONFIG, **{weight: 0.0}))
    gap_without = clicked_minus_unclicked(without, signal)
    assert gap > 0
    assert abs(gap_without) < gap / 2


def test_oracle_beats_popularity_beats_random_on_dev(log: SimulatedLog) -> None:
    auc = generator_sanity(log)
    assert abs(auc["random"] - 0.5) < 0.05
    assert auc["oracle_affinity"] > auc["popularity_train_ctr"] + 0.05
    assert auc["oracle_click_logit"] > auc["oracle_affinity"]


def test_impressions_are_sized_and_clicked_like_mind(log: SimulatedLog) -> None:
    sizes = [len(impression.candidates) for impression in log.impressions]
    assert min(sizes) >= 1 and max(sizes) <= CONFIG.max_candidates
    assert all(1 in impression.labels for impression in log.impressions)
    assert all(len(set(impression.candidates)) == len(impression.candidates) for impression in log.impressions)
    clicks = np.concatenate([impression.labels for impression in log.impressions])
    assert 0.03 < clicks.mean() < 0.3


def test_impression_auc_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        labels = rng.integers(0, 2, size=12)
        labels[:2] = [0, 1]
        scores = rng.integers(0, 4, size=12).astype(float)  # many ties
        assert impression_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))


@pytest.mark.parametrize(
    ("override", "field_name"),
    [({"n_users": 0}, "n_users"), ({"dev_fraction": 1.0}, "dev_fraction"), ({"max_candidates": 3}, "max_candidates")],
)
def test_config_rejects_impossible_values_naming_the_field(override: dict, field_name: str) -> None:
    with pytest.raises(ValueError, match=field_name):
        MindSimConfig(**override)
