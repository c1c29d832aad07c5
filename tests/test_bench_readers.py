"""Simulated readers of the feedback loop: they click with the generator's own probabilities."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest

from benchmarks.readers import ArmTally, Readers, bootstrap_ctr_interval
from training.data.mind_sim import MindSimConfig, simulate_behaviors


@pytest.fixture(scope="module")
def log():
    rng = np.random.default_rng(0)
    n_items = 120
    start = datetime(2024, 1, 1)
    published = [start + timedelta(hours=int(h)) for h in np.sort(rng.integers(0, 24 * 50, n_items))]
    topics = rng.dirichlet(np.ones(8), size=n_items)
    config = MindSimConfig(n_users=40, n_topics=8, min_candidates=3, max_candidates=8, log_days=7, history_days=14)
    return simulate_behaviors([f"N{i}" for i in range(n_items)], published, topics, config, seed=1)


def test_click_probabilities_are_the_generators(log) -> None:
    for impression in log.impressions[:20]:
        readers = Readers(log, now=impression.time)
        expected = 1 / (1 + np.exp(-log.click_logits(impression)))
        got = readers.click_probabilities(impression.user_id, list(impression.candidates))
        np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_clicks_follow_the_probabilities(log) -> None:
    readers = Readers.at_log_end(log)
    user = readers.user_ids()[0]
    items = [news_id for news_id, time in zip(log.news_ids, log.published, strict=True) if time >= readers.fresh_after]
    probabilities = readers.click_probabilities(user, items)
    rng = np.random.default_rng(0)
    counts = {item: 0 for item in items}
    for _ in range(4000):
        for item in readers.clicks(user, items, rng):
            counts[item] += 1
    observed = np.array([counts[item] for item in items]) / 4000
    np.testing.assert_allclose(observed, probabilities, atol=0.03)
    assert readers.clicks(user, [], rng) == []


def test_readers_have_histories_and_visit_after_the_log(log) -> None:
    readers = Readers.at_log_end(log)
    assert readers.user_ids() and all(readers.histories[user] for user in readers.user_ids())
    assert readers.now > max(impression.time for impression in log.impressions)
    assert readers.fresh_after == readers.now - timedelta(days=log.config.max_age_days)


def test_bootstrap_interval_covers_the_rate_and_narrows_with_readers() -> None:
    rng = np.random.default_rng(0)

    def interval(readers: int) -> tuple[float, float]:
        shown = np.full(readers, 10.0)
        clicks = rng.binomial(10, 0.2, size=readers).astype(np.float64)
        return bootstrap_ctr_interval(shown, clicks, rng)

    small, large = interval(50), interval(2000)
    assert small[0] < 0.2 < small[1] and large[0] < 0.2 < large[1]
    assert large[1] - large[0] < (small[1] - small[0]) / 3
    assert bootstrap_ctr_interval(np.zeros(3), np.zeros(3), rng) == (0.0, 0.0)


def test_tally_summarises_each_version() -> None:
    tally = ArmTally()
    tally.add("1", "u1", shown=10, clicks=2)
    tally.add("1", "u1", shown=10, clicks=0)
    tally.add("2", "u2", shown=5, clicks=5)
    summary = tally.summary(np.random.default_rng(0))
    assert summary["1"]["impressions"] == 2 and summary["1"]["shown"] == 20 and summary["1"]["clicks"] == 2
    assert summary["1"]["ctr"] == pytest.approx(0.1) and summary["1"]["readers"] == 1
    assert summary["2"]["ctr"] == 1.0 and summary["2"]["ctr_ci95"] == [1.0, 1.0]


def test_lift_is_the_ctr_difference_with_an_interval_that_covers_it() -> None:
    rng = np.random.default_rng(1)
    tally = ArmTally()
    for i in range(400):
        tally.add("1", f"a{i}", shown=10, clicks=int(rng.binomial(10, 0.10)))
        tally.add("2", f"b{i}", shown=10, clicks=int(rng.binomial(10, 0.15)))
    lift = tally.lift("1", "2", rng)
    summary = tally.summary(rng)
    assert lift["ctr_difference"] == pytest.approx(summary["2"]["ctr"] - summary["1"]["ctr"])
    low, high = lift["ci95"]
    assert low < lift["ctr_difference"] < high and low > 0 and high < 0.1
    assert tally.lift("1", "3", rng) == {}
