"""Simulated readers for the feedback loop: the demo log's users, clicking by the generator's latent truth.

The demo's MIND-format set was drawn from a generative model (training/data/mind_sim.py): each user has a
topic mixture θ_u, each article a topic mixture φ_i and an appeal q_i, and a shown article is clicked with
probability sigmoid(s_ui), s_ui = affinity·cos(θ_u, φ_i) + appeal·log q_i - age·age_days + bias. The same
seed rebuilds the same log, so the readers here are the people behind the training data: they ask the
gateway for recommendations with their pre-period history and click what it shows them with the true
probabilities. A better ranking therefore earns more clicks, as it would with real readers.

`ArmTally` counts, per served model version, impressions, shown items and clicks, and gives the
click-through rate (clicks per shown item) with a 95% interval from a bootstrap over readers (clicks of
one reader are correlated, so resampling items would understate the uncertainty).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

from training.data.mind_sim import SECONDS_PER_DAY, SimulatedLog

BOOTSTRAP_RESAMPLES = 2000


@dataclass
class Readers:
    """The users of a simulated log, visiting at `now` (by default the end of the log window)."""

    log: SimulatedLog
    now: datetime
    histories: dict[str, tuple[str, ...]] = field(init=False)

    def __post_init__(self) -> None:
        self.histories = {impression.user_id: impression.history for impression in self.log.impressions}
        self._news = {news_id: index for index, news_id in enumerate(self.log.news_ids)}
        self._users = {user_id: index for index, user_id in enumerate(self.log.user_ids)}

    @classmethod
    def at_log_end(cls, log: SimulatedLog) -> Readers:
        """Visiting just after the newest impression of the log (the freshest homepage the data knows)."""
        return cls(log, max(impression.time for impression in log.impressions) + timedelta(minutes=1))

    @property
    def fresh_after(self) -> datetime:
        """Articles older than the generator's homepage age limit are not shown to anyone."""
        return self.now - timedelta(days=self.log.config.max_age_days)

    def user_ids(self) -> list[str]:
        """Readers with a history (the personal ranking is what a model version changes)."""
        return sorted(user for user, history in self.histories.items() if history)

    def click_probabilities(self, user_id: str, item_ids: list[str]) -> np.ndarray:
        """The true probability that `user_id` clicks each of `item_ids` when shown them at `now`."""
        items = np.array([self._news[item_id] for item_id in item_ids], dtype=np.int64)
        user = self.log.user_topics[self._users[user_id]]
        topics = self.log.item_topics[items]
        affinity = topics @ user / (np.linalg.norm(topics, axis=1) * np.linalg.norm(user) + 1e-12)
        ages = np.array([(self.now - self.log.published[i]).total_seconds() / SECONDS_PER_DAY for i in items])
        logits = self.log.config.click_logit(affinity, self.log.log_appeal[items], np.maximum(ages, 0.0))
        return 1.0 / (1.0 + np.exp(-logits))

    def clicks(self, user_id: str, item_ids: list[str], rng: np.random.Generator) -> list[str]:
        """The items `user_id` clicks among those shown (independent draws; often none)."""
        if not item_ids:
            return []
        drawn = rng.random(len(item_ids)) < self.click_probabilities(user_id, item_ids)
        return [item for item, clicked in zip(item_ids, drawn, strict=True) if clicked]


@dataclass
class ArmTally:
    """Shown items and clicks per reader, for each model version that served them."""

    shown: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    clicked: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    impressions: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, version: str, user_id: str, shown: int, clicks: int) -> None:
        self.impressions[version] += 1
        self.shown[version][user_id] += shown
        self.clicked[version][user_id] += clicks

    def summary(self, rng: np.random.Generator) -> dict[str, dict[str, float]]:
        """Per version: impressions, shown items, clicks, CTR and its 95% bootstrap interval over readers."""
        result = {}
        for version in sorted(self.shown):
            shown, clicks = self._arrays(version)
            low, high = bootstrap_ctr_interval(shown, clicks, rng)
            result[version] = {
                "readers": len(shown),
                "impressions": self.impressions[version],
                "shown": int(shown.sum()),
                "clicks": int(clicks.sum()),
                "ctr": self._ctr(version),
                "ctr_ci95": [low, high],
            }
        return result

    def lift(self, control: str, candidate: str, rng: np.random.Generator) -> dict[str, float | list[float]]:
        """CTR of `candidate` minus CTR of `control`, with a 95% interval (readers resampled within each arm)."""
        if control not in self.shown or candidate not in self.shown:
            return {}
        samples = [self._ctr_samples(version, rng) for version in (control, candidate)]
        observed = [self._ctr(version) for version in (control, candidate)]
        low, high = np.quantile(samples[1] - samples[0], [0.025, 0.975])
        return {"ctr_difference": observed[1] - observed[0], "ci95": [float(low), float(high)]}

    def _arrays(self, version: str) -> tuple[np.ndarray, np.ndarray]:
        users = sorted(self.shown[version])
        shown = np.array([self.shown[version][u] for u in users], dtype=np.float64)
        clicks = np.array([self.clicked[version][u] for u in users], dtype=np.float64)
        return shown, clicks

    def _ctr(self, version: str) -> float:
        shown, clicks = self._arrays(version)
        return float(clicks.sum() / max(shown.sum(), 1.0))

    def _ctr_samples(self, version: str, rng: np.random.Generator) -> np.ndarray:
        return bootstrap_ctrs(*self._arrays(version), rng)


def bootstrap_ctrs(shown: np.ndarray, clicks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Total clicks / total shown over `BOOTSTRAP_RESAMPLES` resamples of the readers (with replacement)."""
    picks = rng.integers(0, len(shown), size=(BOOTSTRAP_RESAMPLES, len(shown)))
    return clicks[picks].sum(axis=1) / np.maximum(shown[picks].sum(axis=1), 1.0)


def bootstrap_ctr_interval(shown: np.ndarray, clicks: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """95% percentile interval of total clicks / total shown, resampling readers with replacement."""
    if shown.sum() == 0:
        return 0.0, 0.0
    low, high = np.quantile(bootstrap_ctrs(shown, clicks, rng), [0.025, 0.975])
    return float(low), float(high)
