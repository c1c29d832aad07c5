"""Generator sanity checks: does the simulated log carry the signals it claims to?

Group AUC (ROC AUC per dev impression, averaged over impressions holding both a click and a
non-click) of these rankers on the dev split:
  random                    uniform scores: ~0.5 by construction
  popularity_train_clicks   how many train impressions clicked the item (0 if never). Confounded:
                            an item with many train clicks is an old item, stale by dev time, and
                            the freshest dev items have none — expect it at or below random.
  popularity_train_ctr      the item's train click-through rate, shrunk towards the global rate
                            with `CTR_PRIOR_IMPRESSIONS` pseudo-impressions (unseen items get the
                            global rate): the meaningful popularity baseline.
  oracle_affinity           the true cos(θ_u, φ_i), i.e. topic preference alone
  oracle_click_logit        the true click logit (affinity + appeal + freshness)
The oracles must beat popularity_train_ctr, and it must beat random; otherwise the generator is broken.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import rankdata

from training.data.mind_sim import SimulatedLog
from training.data.types import Impression

CTR_PRIOR_IMPRESSIONS = 10


def group_auc(impressions: Sequence[Impression], score: Callable[[Impression], np.ndarray]) -> float:
    """Mean per-impression ROC AUC over labeled impressions with both classes (NaN if none)."""
    aucs = [
        impression_auc(np.asarray(impression.labels), score(impression))
        for impression in impressions
        if impression.labels is not None and 0 < sum(impression.labels) < len(impression.labels)
    ]
    return float(np.mean(aucs)) if aucs else float("nan")


def impression_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of one impression via the Mann-Whitney U statistic (ties count half).

    Equal to sklearn's roc_auc_score, ~12x faster on small lists, which matters for
    thousands of impressions.
    """
    positives = labels == 1
    n_positive, n_negative = int(positives.sum()), int((~positives).sum())
    rank_sum = rankdata(scores)[positives].sum()
    return float((rank_sum - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative))


def click_rate(impressions: Sequence[Impression]) -> float:
    """Clicked candidates / all candidates."""
    labels = [label for impression in impressions for label in impression.labels or ()]
    return float(np.mean(labels)) if labels else float("nan")


def generator_sanity(log: SimulatedLog, seed: int = 0) -> dict[str, float]:
    """Dev-split group AUC of the rankers in the module docstring."""
    shown, clicked = Counter[str](), Counter[str]()
    for impression in log.train:
        shown.update(impression.candidates)
        clicked.update(
            news_id for news_id, label in zip(impression.candidates, impression.labels, strict=True) if label
        )
    prior = sum(clicked.values()) / max(sum(shown.values()), 1)
    rng = np.random.default_rng(seed)
    rankers: dict[str, Callable[[Impression], np.ndarray]] = {
        "random": lambda impression: rng.random(len(impression.candidates)),
        "popularity_train_clicks": lambda impression: np.array(
            [clicked[news_id] for news_id in impression.candidates], dtype=float
        ),
        "popularity_train_ctr": lambda impression: np.array(
            [
                (clicked[news_id] + CTR_PRIOR_IMPRESSIONS * prior) / (shown[news_id] + CTR_PRIOR_IMPRESSIONS)
                for news_id in impression.candidates
            ]
        ),
        "oracle_affinity": log.affinity,
        "oracle_click_logit": log.click_logits,
    }
    dev = log.dev
    return {name: round(group_auc(dev, ranker), 4) for name, ranker in rankers.items()}
