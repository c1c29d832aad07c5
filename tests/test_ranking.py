"""The popularity-aware ranking: its formula, its fit, its Recommend stage, and serving/training parity."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pydantic
import pytest
from conftest import tiny_nrms_run, tiny_two_tower_run
from test_pipeline import FakeEncoders, FakeStore, ctx, news_row, state

from contract.ranking import RankingWeights, age_hours, features, ranking_scores, smoothed_ctr
from export.models import ranking_weights
from server.config import load_settings
from server.domain import Filters, HistoryEntry, RecommendQuery
from server.item_cache import ItemCache, NewsBatch
from server.pipeline.common import CatalogClock
from server.pipeline.recommend import (
    AnnCandidates,
    Candidates,
    CatalogView,
    ColdStart,
    HistoryVectors,
    PopularityAwareOrder,
    Recommender,
    UserVector,
    personal_stages,
)
from training.checkpoint import RANKING_KEY, Checkpoint
from training.data.build import DatasetPaths
from training.data.types import Impression, NewsArticle
from training.pipeline import run_training
from training.ranking import ClickStats, RankingInputs, fit_weights, unix_seconds

pytestmark = pytest.mark.anyio
HOUR = 3600
WEIGHTS = RankingWeights(content=2.0, popularity=1.0, age=-0.5)


def test_the_score_is_the_weighted_sum_of_content_logit_ctr_and_log_age() -> None:
    score = ranking_scores(WEIGHTS, [0.3], [0.2], [5.0])
    assert score[0] == pytest.approx(2.0 * 0.3 + 1.0 * np.log(0.2 / 0.8) - 0.5 * np.log(6.0))
    assert np.isfinite(features([0.0, 0.0], [0.0, 3.0], [0.0, 0.0])).all()  # a stored 0 or count stays finite


def test_age_is_hours_since_publication_and_zero_when_unknown_or_future() -> None:
    np.testing.assert_allclose(age_hours(10 * HOUR, [4 * HOUR, 0, 12 * HOUR]), [6.0, 0.0, 0.0])


def test_smoothed_ctr_pulls_rare_items_towards_the_prior() -> None:
    assert smoothed_ctr(0, 0, 0.1) == pytest.approx(0.1)
    assert smoothed_ctr(5, 10, 0.1, prior_shows=10) == pytest.approx(0.3)


def test_weights_round_trip_as_json_and_reject_unknown_keys(tmp_path: Path) -> None:
    path = WEIGHTS.to_json(tmp_path / "ranking.json")
    assert RankingWeights.from_json(path) == WEIGHTS
    path.write_text(json.dumps({"content": 1.0, "popular": 1.0, "age": 0.0}))
    with pytest.raises(ValueError, match="expected the keys"):
        RankingWeights.from_json(path)


def synthetic_inputs(weights: RankingWeights, impressions: int, seed: int = 0) -> RankingInputs:
    """Impressions whose single click is drawn from the softmax of `weights`' scores (the fitted model)."""
    rng = np.random.default_rng(seed)
    rows, content, popularity, hours = [], [], [], []
    for i in range(impressions):
        c, p, h = rng.normal(size=10), rng.uniform(0.01, 0.5, 10), rng.exponential(24.0, 10)
        probability = np.exp(ranking_scores(weights, c, p, h))
        clicked = rng.choice(10, p=probability / probability.sum())
        labels = tuple(int(j == clicked) for j in range(10))
        candidates = tuple(f"N{i}x{j}" for j in range(10))
        rows.append(Impression(f"I{i}", "U", datetime(2020, 1, 1), (), candidates, labels))
        content.append(c), popularity.append(p), hours.append(h)
    return RankingInputs(rows, content, popularity, hours)


def test_the_listwise_fit_recovers_the_weights_that_generated_the_clicks() -> None:
    fitted = fit_weights(synthetic_inputs(WEIGHTS, 3000))
    np.testing.assert_allclose(fitted.vector(), WEIGHTS.vector(), atol=0.15)


def test_training_inputs_count_ctr_on_the_given_stats_and_age_at_the_impression_time() -> None:
    shown = datetime(2020, 1, 2, 12)
    news = {
        "A": NewsArticle("A", "c", "s", "a", published=shown - timedelta(hours=6)),
        "B": NewsArticle("B", "c", "s", "b"),
    }
    log = [Impression("1", "U", shown, (), ("A", "B"), (1, 0)), Impression("2", "U", shown, (), ("A", "B"), (1, 0))]
    inputs = RankingInputs.build(log[:1], [np.array([0.5, 0.1])], ClickStats.from_impressions(log), news)
    np.testing.assert_allclose(inputs.hours[0], [6.0, 0.0])  # B: no publication time -> counted as new
    np.testing.assert_allclose(inputs.popularity[0], [smoothed_ctr(2, 2, 0.5), smoothed_ctr(0, 2, 0.5)])


def news_candidates(ids: Sequence[str], content: Sequence[float], published: Sequence[int], ctr: Sequence[float]):
    rows = [{"id": i, "published": p, "popularity": c} for i, p, c in zip(ids, published, ctr, strict=True)]
    return Candidates(NewsBatch.from_rows(rows), np.array(content, np.float64))


def candidates() -> Candidates:
    ids = ("stale-hit", "fresh-popular", "fresh-unpopular")
    return news_candidates(ids, (0.9, 0.5, 0.6), (1 * HOUR, 99 * HOUR, 98 * HOUR), (0.05, 0.4, 0.01))


async def test_the_stage_orders_by_the_formula_and_scores_with_it() -> None:
    clock = CatalogClock()
    clock.observe(100 * HOUR)
    ranked = await PopularityAwareOrder(WEIGHTS, clock)(candidates(), state(3), ctx())
    expected = ranking_scores(WEIGHTS, [0.9, 0.5, 0.6], [0.05, 0.4, 0.01], [99.0, 1.0, 2.0])
    assert ranked.ids == [candidates().ids[j] for j in np.argsort(-expected)]
    assert ranked.scores.tolist() == pytest.approx(sorted(expected, reverse=True))
    assert ranked.ids[0] == "fresh-popular"  # first by content was "stale-hit"
    published = dict(zip(candidates().ids, candidates().news.published.tolist(), strict=True))
    assert ranked.news.published.tolist() == [published[i] for i in ranked.ids]  # each row moved with its id


async def test_served_order_equals_the_offline_order_for_the_same_inputs() -> None:
    """Parity: training's inputs (CTR from click stats, age at the impression's time) and the gateway's stage
    (the stored CTR as `popularity`, age at the catalog clock) give the same scores and order."""
    now = datetime(2017, 3, 20, 9)
    ids, content, age = ("N0", "N1", "N2", "N3"), np.array([0.1, 0.4, 0.2, 0.35]), (2, 40, 5, 30)
    news = {n: NewsArticle(n, "c", "s", "t", published=now - timedelta(hours=h)) for n, h in zip(ids, age, strict=True)}
    past = [Impression(str(i), "U", now, (), ids, labels) for i, labels in enumerate([(1, 0, 0, 1), (1, 0, 1, 0)])]
    stats = ClickStats.from_impressions(past)
    impression = Impression("now", "U", now, (), ids, (1, 0, 0, 0))
    offline_scores = RankingInputs.build([impression], [content], stats, news).scores(WEIGHTS)[0]
    clock = CatalogClock()
    clock.observe(int(unix_seconds(now)))
    published = [int(unix_seconds(news[n].published)) for n in ids]
    items = news_candidates(ids, content, published, stats.popularity(ids))
    served = await PopularityAwareOrder(WEIGHTS, clock)(items, state(4), ctx())
    assert served.ids == [ids[j] for j in np.argsort(-offline_scores, kind="stable")]
    # the gateway holds CTRs as float32 (its catalog columns), training as float64
    assert served.scores.tolist() == pytest.approx(sorted(offline_scores, reverse=True), rel=1e-5)


def ranking_recommender(store: FakeStore, clock: CatalogClock) -> Recommender:
    catalog = CatalogView(ItemCache(10, 60), store, "news")
    encoders = FakeEncoders()
    return Recommender(
        HistoryVectors(catalog, encoders, max_history=3),
        UserVector(encoders),
        personal_stages(AnnCandidates(store, catalog, min_pool=3), PopularityAwareOrder(WEIGHTS, clock)),
        [ColdStart(store, "news", clock, window_days=1, pool=100)],
    )


@pytest.fixture
def catalog_store() -> FakeStore:
    rows = {
        "seen": news_row("seen", [1, 0, 0, 0], category="x", popularity=0.9, published=100 * HOUR),
        "close-stale": news_row("close-stale", [0.95, 0.05, 0, 0], category="x", popularity=0.01, published=HOUR),
        "near-fresh": news_row("near-fresh", [0.7, 0.3, 0, 0], category="x", popularity=0.3, published=99 * HOUR),
        "far-fresh": news_row("far-fresh", [0, 1, 0, 0], category="y", popularity=0.5, published=100 * HOUR),
    }
    return FakeStore(rows={"news": rows})


async def test_recommend_reranks_the_content_top_n_and_keeps_k_filters_and_exclude_seen(
    catalog_store: FakeStore,
) -> None:
    clock = CatalogClock()
    clock.observe(100 * HOUR)
    rec = ranking_recommender(catalog_store, clock)
    history = (HistoryEntry("seen", ""),)
    top = await rec(RecommendQuery("u", history, 1, Filters(), exclude_seen=True, diversity=0), ctx())
    assert [i.item_id for i in top.items] == ["near-fresh"]  # beat "close-stale", the content-only first
    assert ("search", 4) in catalog_store.calls  # min_pool 3 + the one excluded id, although k = 1
    only_x = await rec(
        RecommendQuery("u", history, 3, Filters(categories=("x",)), exclude_seen=False, diversity=0), ctx()
    )
    assert [i.item_id for i in only_x.items] == ["seen", "near-fresh", "close-stale"]  # "far-fresh" is category y


def test_ranking_settings_are_validated() -> None:
    assert load_settings().recommend.ranking == "popularity_aware"
    assert load_settings(recommend={"ranking": "content"}).recommend.ranking == "content"
    with pytest.raises(pydantic.ValidationError, match=r"recommend\.ranking"):
        load_settings(recommend={"ranking": "popularity"})
    with pytest.raises(pydantic.ValidationError, match="ranking_candidates"):
        load_settings(recommend={"ranking_candidates": 0})


def test_make_train_reports_the_served_ranking_and_stores_its_weights_for_export(
    tiny_data: DatasetPaths, tmp_path: Path
) -> None:
    nrms = tiny_nrms_run(tiny_data, "train.epochs=1", "ranker_holdout=0.25")
    two_tower = tiny_two_tower_run(tiny_data, "train.epochs=1")
    report = run_training(nrms, two_tower, checkpoints=tmp_path / "ckpt", reports=tmp_path / "reports")
    assert set(report["nrms"]["ranked"]["dev"]) == set(report["nrms"]["dev"]) == {"auc", "mrr", "ndcg@5", "ndcg@10"}
    checkpoint = Checkpoint.load(tmp_path / "ckpt" / "tiny_nrms.pt")
    assert ranking_weights(checkpoint) == RankingWeights(**report["nrms"][RANKING_KEY])
    assert ranking_weights(checkpoint) != RankingWeights()  # fitted, not the content-only default
