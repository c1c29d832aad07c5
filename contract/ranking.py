"""The popularity-aware ranking after retrieval: one formula for training, export and the gateway.

    score = content * NRMS click score + popularity * logit(CTR) + age * log(1 + age in hours)

- CTR: the item's smoothed click-through rate, (clicks + PRIOR_SHOWS * prior CTR) / (shows + PRIOR_SHOWS),
  what the catalog stores as a news item's `popularity` (`smoothed_ctr`). Whoever counts clicks and
  shows (export.catalog from the logs today; a feedback-event consumer later) computes it with
  `smoothed_ctr` and sends it with UpsertItems, which refreshes Milvus and the gateway's item cache.
- age: hours from the item's publication (first appearance in the log for real MIND) to the moment
  of ranking: the impression's time in training, the catalog clock's newest publication at serving
  (so a replayed catalog ranks as it did when it was live). An unknown publication (0) counts as new.

The weights are fitted in training (`training.ranking`), stored in the NRMS checkpoint and exported as
JSON (`contract.layout.ServingLayout.ranking`), which the gateway loads: serving equals training.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray

SECONDS_PER_HOUR = 3600.0
PRIOR_SHOWS = 10.0  # pseudo-shows of the CTR smoothing (also the popularity baseline's)
CTR_EPSILON = 1e-6  # keeps logit(CTR) finite for a stored 0 or 1
FEATURES = ("content", "popularity", "age")


@dataclass(frozen=True)
class RankingWeights:
    """The fitted combination (the defaults keep the NRMS order)."""

    content: float = 1.0
    popularity: float = 0.0
    age: float = 0.0

    def to_json(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def from_json(cls, path: Path) -> RankingWeights:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or set(data) != set(cls.__dataclass_fields__):
            raise ValueError(f"{path}: expected the keys {sorted(cls.__dataclass_fields__)}")
        return cls(**{key: float(value) for key, value in data.items()})

    def vector(self) -> NDArray[np.float64]:
        """The weights in `FEATURES` order."""
        return np.array([self.content, self.popularity, self.age], dtype=np.float64)


def smoothed_ctr(clicks: float, shows: float, prior_ctr: float, prior_shows: float = PRIOR_SHOWS) -> float:
    """Click-through rate pulled towards `prior_ctr` by `prior_shows` pseudo-shows (an unseen item scores the prior)."""
    return (clicks + prior_shows * prior_ctr) / (shows + prior_shows)


def age_hours(now_s: ArrayLike, published_s: ArrayLike) -> NDArray[np.float64]:
    """Hours from publication to `now_s` (unix seconds), 0 for future or unknown (0) publications."""
    now, published = np.asarray(now_s, dtype=np.float64), np.asarray(published_s, dtype=np.float64)
    return np.where(published > 0, np.maximum(now - published, 0.0), 0.0) / SECONDS_PER_HOUR


def features(content: ArrayLike, popularity: ArrayLike, hours: ArrayLike) -> NDArray[np.float64]:
    """[N, 3] in `FEATURES` order: NRMS score, logit of the CTR, log(1 + age hours)."""
    ctr = np.clip(np.asarray(popularity, dtype=np.float64), CTR_EPSILON, 1 - CTR_EPSILON)
    return np.column_stack(
        [np.asarray(content, dtype=np.float64), np.log(ctr / (1 - ctr)), np.log1p(np.asarray(hours, np.float64))]
    )


def ranking_scores(
    weights: RankingWeights, content: ArrayLike, popularity: ArrayLike, hours: ArrayLike
) -> NDArray[np.float64]:
    """The final score of each candidate (higher ranks first)."""
    scores: NDArray[np.float64] = features(content, popularity, hours) @ weights.vector()
    return scores
