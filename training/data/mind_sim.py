"""Simulated news readers: who is shown which fresh articles, and what they click.

The generative model (also in training/data/README.md); every number is a `MindSimConfig` field:

Articles  φ_i: topic mixture of the BODY text (`topics.fit_topics`; titles never enter the
          generator). Appeal q_i = exp(appeal_sigma · z_i), z_i ~ N(0, 1). Published p_i from the corpus.
Calendar  Log window: the last `log_days` days, ending at midnight after the newest article; the
          pre-period: the `history_days` before it. Visits happen within hours; at hour h the
          homepage holds the articles with 0 <= h - p_i <= max_age_days ("fresh"), and only hours with
          at least `min_candidates` fresh articles get visits.
Users     θ_u ~ Dirichlet(topic_concentration · π), π the corpus-average topic mixture (a few
          interests each); activity λ_u ~ LogNormal(-activity_sigma²/2, activity_sigma) (mean 1).
Visit     At time t in hour h: k ~ Uniform{min_candidates..max_candidates} (at most the number
          fresh) candidates drawn without replacement from the fresh articles with weight
          (1 - m)·q_i/Σq + m/|fresh|, m = homepage_uniform_mix, shown in random order. Click logit
              s_ui = affinity_weight·cos(θ_u, φ_i) + appeal_weight·log q_i - age_weight·age_days + click_bias;
          labels are independent Bernoulli(sigmoid(s_ui)) conditioned on at least one click (sampled
          exactly: position of the first click, then the rest independently) — MIND only logs
          impressions with a click.
History   With probability empty_history_fraction none; otherwise a target length
          h_u = 1 + Poisson(λ_u·(history_per_user - 1)): h_u visits at uniform pre-period times, their
          clicks in time order without repeats, the most recent h_u kept (oldest first). As in MIND,
          every impression of a user carries this same pre-period history.
Log       n_u = 1 + Poisson(λ_u·(impressions_per_user - 1)) visits at uniform log-window times.
Split     Impressions in the last `dev_fraction` of the log window are dev, the rest train.

Random streams are spawned from one seed (appeal, users, visits), so the same seed gives the
same log. Times are whole seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from rich.progress import track
from scipy.special import expit

from training.data.types import Impression

logger = logging.getLogger(__name__)

SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class MindSimConfig:
    """Every knob of the simulated reader population (defaults: the shipped data set)."""

    n_users: int = 4_000
    impressions_per_user: float = 5.0
    history_per_user: float = 15.0
    empty_history_fraction: float = 0.05
    activity_sigma: float = 0.8
    n_topics: int = 20
    topic_concentration: float = 2.0
    appeal_sigma: float = 1.0
    min_candidates: int = 10
    max_candidates: int = 30
    homepage_uniform_mix: float = 0.5
    max_age_days: float = 4.0
    log_days: int = 14
    history_days: int = 28
    dev_fraction: float = 0.2
    affinity_weight: float = 5.0
    appeal_weight: float = 0.8
    age_weight: float = 0.4
    click_bias: float = -3.7

    def __post_init__(self) -> None:
        for name in ("n_users", "n_topics", "min_candidates", "log_days", "history_days"):
            if getattr(self, name) < 1:
                raise ValueError(f"MindSimConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_candidates < self.min_candidates:
            raise ValueError("MindSimConfig.max_candidates must be >= min_candidates")
        if self.impressions_per_user < 1 or self.history_per_user < 1:
            raise ValueError("MindSimConfig.impressions_per_user and history_per_user must be >= 1")
        for name in ("empty_history_fraction", "homepage_uniform_mix", "dev_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"MindSimConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.max_age_days <= 0:
            raise ValueError("MindSimConfig.max_age_days must be > 0")

    def click_logit(self, affinity: np.ndarray, log_appeal: np.ndarray, age_days: np.ndarray) -> np.ndarray:
        """s_ui = affinity_weight·cos(θ_u, φ_i) + appeal_weight·log q_i - age_weight·age_days + click_bias."""
        return (
            self.affinity_weight * affinity
            + self.appeal_weight * log_appeal
            - self.age_weight * age_days
            + self.click_bias
        )


@dataclass
class SimulatedLog:
    """The simulated impressions plus the latent truth behind them (for sanity checks only)."""

    config: MindSimConfig
    log_start: datetime
    dev_start: datetime
    news_ids: list[str]
    published: list[datetime]
    item_topics: np.ndarray
    log_appeal: np.ndarray
    user_ids: list[str]
    user_topics: np.ndarray
    impressions: list[Impression]
    _news_index: dict[str, int] = field(init=False, repr=False)
    _user_index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._news_index = {news_id: index for index, news_id in enumerate(self.news_ids)}
        self._user_index = {user_id: index for index, user_id in enumerate(self.user_ids)}

    @property
    def train(self) -> list[Impression]:
        return [impression for impression in self.impressions if impression.time < self.dev_start]

    @property
    def dev(self) -> list[Impression]:
        return [impression for impression in self.impressions if impression.time >= self.dev_start]

    def affinity(self, impression: Impression) -> np.ndarray:
        """cos(θ_u, φ_i) of the impression's user with each candidate."""
        items = [self._news_index[news_id] for news_id in impression.candidates]
        return _cosine(self.item_topics[items], self.user_topics[self._user_index[impression.user_id]])

    def click_logits(self, impression: Impression) -> np.ndarray:
        """The true click logit s_ui of each candidate at the impression's time."""
        items = [self._news_index[news_id] for news_id in impression.candidates]
        ages = np.array([(impression.time - self.published[item]).total_seconds() for item in items])
        return self.config.click_logit(self.affinity(impression), self.log_appeal[items], ages / SECONDS_PER_DAY)


def _cosine(vectors: np.ndarray, vector: np.ndarray) -> np.ndarray:
    return vectors @ vector / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(vector) + 1e-12)


def simulate_behaviors(
    news_ids: Sequence[str],
    published: Sequence[datetime],
    item_topics: np.ndarray,
    config: MindSimConfig,
    seed: int,
) -> SimulatedLog:
    """Run the generative model over the given articles (see module docstring)."""
    appeal_rng, user_rng, visit_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    log_appeal = config.appeal_sigma * appeal_rng.standard_normal(len(news_ids))
    end = max(published).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    log_start = end - timedelta(days=config.log_days)
    origin = log_start - timedelta(days=config.history_days)
    published_days = np.array([(time - origin).total_seconds() / SECONDS_PER_DAY for time in published])
    homepage = _Homepage(published_days, item_topics, log_appeal, config)
    users = _draw_users(item_topics, config, user_rng)
    pre_hours = homepage.open_hours(0, config.history_days)
    log_hours = homepage.open_hours(config.history_days, config.history_days + config.log_days)
    if len(log_hours) == 0:
        raise ValueError(
            f"no hour of the log window has {config.min_candidates} fresh articles: "
            "use more articles, a lower min_candidates or a higher max_age_days"
        )
    if len(pre_hours) == 0:
        logger.warning("no pre-period hour has %d fresh articles: every history is empty", config.min_candidates)
    visits: list[tuple[int, int, tuple[int, ...], np.ndarray, np.ndarray]] = []
    for user in track(range(config.n_users), description="simulating readers", transient=True):
        history = _history(homepage, users, user, pre_hours, visit_rng)
        for second in _visit_seconds(log_hours, users.impressions[user], visit_rng):
            candidates, labels = homepage.visit(users.topics[user], second, visit_rng)
            visits.append((second, user, history, candidates, labels))
    visits.sort(key=lambda visit: (visit[0], visit[1]))
    impressions = [
        Impression(
            impression_id=str(number),
            user_id=f"U{user + 1}",
            time=origin + timedelta(seconds=int(second)),
            history=tuple(news_ids[item] for item in history),
            candidates=tuple(news_ids[item] for item in candidates),
            labels=tuple(int(label) for label in labels),
        )
        for number, (second, user, history, candidates, labels) in enumerate(visits, start=1)
    ]
    return SimulatedLog(
        config=config,
        log_start=log_start,
        dev_start=log_start + timedelta(days=config.log_days * (1 - config.dev_fraction)),
        news_ids=list(news_ids),
        published=list(published),
        item_topics=item_topics,
        log_appeal=log_appeal,
        user_ids=[f"U{user + 1}" for user in range(config.n_users)],
        user_topics=users.topics,
        impressions=impressions,
    )


@dataclass(frozen=True)
class _Users:
    topics: np.ndarray
    impressions: np.ndarray
    history_lengths: np.ndarray


def _draw_users(item_topics: np.ndarray, config: MindSimConfig, rng: np.random.Generator) -> _Users:
    prevalence = item_topics.mean(axis=0)
    topics = rng.dirichlet(config.topic_concentration * prevalence / prevalence.sum(), size=config.n_users)
    sigma = config.activity_sigma
    activity = rng.lognormal(-(sigma**2) / 2, sigma, size=config.n_users)
    impressions = 1 + rng.poisson(activity * (config.impressions_per_user - 1))
    history_lengths = 1 + rng.poisson(activity * (config.history_per_user - 1))
    history_lengths[rng.random(config.n_users) < config.empty_history_fraction] = 0
    return _Users(topics=topics, impressions=impressions, history_lengths=history_lengths)


def _history(
    homepage: _Homepage, users: _Users, user: int, hours: np.ndarray, rng: np.random.Generator
) -> tuple[int, ...]:
    length = int(users.history_lengths[user])
    if length == 0 or len(hours) == 0:
        return ()
    clicked: dict[int, None] = {}
    for second in _visit_seconds(hours, length, rng):
        candidates, labels = homepage.visit(users.topics[user], second, rng)
        for item in candidates[labels == 1]:
            clicked.pop(int(item), None)  # a re-click moves the item to its latest position
            clicked[int(item)] = None
    return tuple(clicked)[-length:]


def _visit_seconds(hours: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` sorted visit times (seconds since origin) at uniform moments of the given hours."""
    chosen = rng.choice(hours, size=count)
    return np.sort(chosen * 3_600 + rng.integers(0, 3_600, size=count))


class _Homepage:
    """Which articles are fresh at a time, which of them a visit shows, and what gets clicked."""

    def __init__(
        self, published_days: np.ndarray, item_topics: np.ndarray, log_appeal: np.ndarray, config: MindSimConfig
    ) -> None:
        self._order = np.argsort(published_days, kind="stable")
        self._published_sorted = published_days[self._order]
        self._published = published_days
        self._topics = item_topics
        self._log_appeal = log_appeal
        self._config = config

    def _fresh(self, day: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first, last) positions in publication order of the articles fresh at `day`."""
        first = np.searchsorted(self._published_sorted, day - self._config.max_age_days, side="left")
        last = np.searchsorted(self._published_sorted, day, side="right")
        return first, last

    def open_hours(self, start_day: float, end_day: float) -> np.ndarray:
        """Hours (since origin) in [start_day, end_day) with at least min_candidates fresh articles."""
        hours = np.arange(int(start_day * 24), int(end_day * 24))
        first, last = self._fresh(hours / 24)
        return hours[last - first >= self._config.min_candidates]

    def visit(self, user_topics: np.ndarray, second: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Candidates (article indices, display order) and their 0/1 labels for one visit."""
        config = self._config
        first, last = self._fresh((second // 3_600) / 24)
        fresh = self._order[first:last]
        appeal = np.exp(self._log_appeal[fresh])
        weights = (1 - config.homepage_uniform_mix) * appeal / appeal.sum() + config.homepage_uniform_mix / len(fresh)
        count = min(int(rng.integers(config.min_candidates, config.max_candidates + 1)), len(fresh))
        keys = np.log(weights) + rng.gumbel(size=len(fresh))
        candidates = rng.permutation(fresh[np.argpartition(-keys, count - 1)[:count]])
        logits = config.click_logit(
            _cosine(self._topics[candidates], user_topics),
            self._log_appeal[candidates],
            second / SECONDS_PER_DAY - self._published[candidates],
        )
        return candidates, _clicks_given_any(expit(logits), rng)


def _clicks_given_any(probabilities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Independent Bernoulli labels conditioned on at least one 1, sampled exactly."""
    no_click_before = np.concatenate(([1.0], np.cumprod(1 - probabilities)[:-1]))
    first_click = np.cumsum(probabilities * no_click_before)
    position = min(
        int(np.searchsorted(first_click, rng.random() * first_click[-1], side="right")), len(first_click) - 1
    )
    labels = np.zeros(len(probabilities), dtype=np.int8)
    labels[position] = 1
    labels[position + 1 :] = rng.random(len(probabilities) - position - 1) < probabilities[position + 1 :]
    return labels
