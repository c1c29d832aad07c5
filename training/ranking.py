"""Fit the popularity-aware ranking (`contract.ranking`) on top of a trained NRMS and score dev with it.

The weights are fitted on the latest `ranker_holdout` fraction of the train impressions, which NRMS
never trained on, with click statistics counted on the earlier train impressions (as dev is ranked
with statistics counted on all of train): never on dev. The fit is listwise, MIND's own objective:
the softmax over an impression's candidates of their final scores, maximised on the clicked ones
(a conditional logit; L-BFGS over three weights, seconds).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from scipy.optimize import minimize

from contract.ranking import PRIOR_SHOWS, RankingWeights, age_hours, features, ranking_scores, smoothed_ctr
from training.checkpoint import Checkpoint
from training.config import NRMSRunConfig
from training.data.mind import infer_published
from training.data.types import Impression, MindSplit, NewsArticle
from training.text import TokenTable, text_tokenizer
from training.train_nrms import evaluable, score_impressions, split_for_ranker


def unix_seconds(time: datetime | None) -> float:
    """MIND's naive times read as UTC, as export.catalog stores them; 0 for unknown."""
    return 0.0 if time is None else time.replace(tzinfo=time.tzinfo or UTC).timestamp()


@dataclass(frozen=True)
class ClickStats:
    """Clicks and shows per item in labelled impressions, and the overall click rate."""

    clicks: Counter[str]
    shows: Counter[str]

    @classmethod
    def from_impressions(cls, impressions: Iterable[Impression]) -> ClickStats:
        clicks: Counter[str] = Counter()
        shows: Counter[str] = Counter()
        for impression in impressions:
            shows.update(impression.candidates)
            clicks.update(c for c, y in zip(impression.candidates, impression.labels or (), strict=True) if y == 1)
        return cls(clicks, shows)

    @property
    def prior_ctr(self) -> float:
        total = sum(self.shows.values())
        return sum(self.clicks.values()) / total if total else 0.0

    def popularity(self, news_ids: Sequence[str], prior_shows: float = PRIOR_SHOWS) -> np.ndarray:
        """The smoothed CTR of each item, what the catalog stores as `popularity`."""
        prior = self.prior_ctr
        return np.array([smoothed_ctr(self.clicks[n], self.shows[n], prior, prior_shows) for n in news_ids])


@dataclass(frozen=True)
class RankingInputs:
    """What the formula reads for every candidate of `impressions`: content score, popularity, age."""

    impressions: Sequence[Impression]
    content: Sequence[np.ndarray]
    popularity: Sequence[np.ndarray]
    hours: Sequence[np.ndarray]

    @classmethod
    def build(
        cls,
        impressions: Sequence[Impression],
        content: Sequence[np.ndarray],
        stats: ClickStats,
        news: Mapping[str, NewsArticle],
    ) -> RankingInputs:
        hours = [
            age_hours(unix_seconds(imp.time), [unix_seconds(news[c].published) for c in imp.candidates])
            for imp in impressions
        ]
        return cls(impressions, content, [stats.popularity(imp.candidates) for imp in impressions], hours)

    def scores(self, weights: RankingWeights) -> list[np.ndarray]:
        return [ranking_scores(weights, *row) for row in zip(self.content, self.popularity, self.hours, strict=True)]

    def feature_rows(self) -> list[np.ndarray]:
        return [features(*row) for row in zip(self.content, self.popularity, self.hours, strict=True)]


def fit_weights(inputs: RankingInputs) -> RankingWeights:
    """Listwise fit: maximise the softmax probability of each click among its impression's candidates."""
    rows = inputs.feature_rows()
    x = np.concatenate(rows)
    y = np.concatenate([np.asarray(imp.labels, dtype=np.float64) for imp in inputs.impressions])
    sizes = np.array([len(r) for r in rows])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    clicks = np.repeat(np.add.reduceat(y, starts), sizes)

    def loss_and_gradient(w: np.ndarray) -> tuple[float, np.ndarray]:
        s = x @ w
        peak = np.repeat(np.maximum.reduceat(s, starts), sizes)
        shifted = np.exp(s - peak)
        totals = np.repeat(np.add.reduceat(shifted, starts), sizes)
        loss = float(y @ (np.log(totals) + peak - s))  # -log softmax of every click
        gradient = (clicks * shifted / totals - y) @ x
        return loss / len(sizes), gradient / len(sizes)

    result = minimize(loss_and_gradient, np.zeros(x.shape[1]), jac=True, method="L-BFGS-B")
    content, popularity, age = (float(v) for v in result.x)
    return RankingWeights(content, popularity, age)


def fit_popularity_aware(
    run: NRMSRunConfig, checkpoint: Checkpoint, train: MindSplit, dev: MindSplit, dev_impressions: Sequence[Impression]
) -> tuple[RankingWeights, list[np.ndarray]]:
    """Weights fitted on the train holdout, and the final scores of `dev_impressions` with them."""
    # Real MIND has no publication time: an item's first appearance in the log stands in (the demo has one).
    news = infer_published({**train.news, **dev.news}, [*train.impressions, *dev.impressions])
    table = TokenTable.build({n: a.title for n, a in news.items()}, text_tokenizer(checkpoint.tokenizers["title"]))
    model = checkpoint.build_model()

    def content(impressions: Sequence[Impression]) -> list[np.ndarray]:
        return score_impressions(model, table, impressions, run.model.max_history)

    earlier, holdout = split_for_ranker(train.impressions, run.ranker_holdout)
    fit_on = evaluable(holdout)
    if not fit_on:
        raise ValueError(f"{run.name}: ranker_holdout={run.ranker_holdout} leaves no impression to fit the ranker")
    earlier_stats, all_stats = ClickStats.from_impressions(earlier), ClickStats.from_impressions([*earlier, *holdout])
    weights = fit_weights(RankingInputs.build(fit_on, content(fit_on), earlier_stats, news))
    dev_inputs = RankingInputs.build(dev_impressions, content(dev_impressions), all_stats, news)
    return weights, dev_inputs.scores(weights)
