"""Latent topics of article bodies: TF-IDF + NMF (scikit-learn), the generator's notion of "about".

Each article gets a topic mixture φ_i (a row of NMF's W, normalised to sum to 1; an article with
no vocabulary left gets the uniform mixture). Only body text goes in — never titles — so a model
that ranks by title must learn how titles relate to what the body is about. Deterministic: NMF
starts from NNDSVDa, which involves no randomness.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import NMF
from sklearn.feature_extraction.text import TfidfVectorizer


@dataclass(frozen=True)
class TopicModel:
    """Per-article topic mixtures (n_articles x n_topics, rows sum to 1) and each topic's top words."""

    mixtures: np.ndarray
    top_words: list[list[str]]


def fit_topics(bodies: Sequence[str], n_topics: int, *, words_per_topic: int = 8) -> TopicModel:
    """Fit TF-IDF (English stop words removed, sublinear tf) + NMF with `n_topics` components."""
    vectorizer = TfidfVectorizer(stop_words="english", sublinear_tf=True, min_df=3, max_df=0.5, max_features=20_000)
    tfidf = vectorizer.fit_transform(bodies)
    nmf = NMF(n_components=n_topics, init="nndsvda", max_iter=400, random_state=0)
    weights = nmf.fit_transform(tfidf)
    totals = weights.sum(axis=1, keepdims=True)
    mixtures = np.where(totals > 0, weights / np.where(totals > 0, totals, 1.0), 1.0 / n_topics)
    vocabulary = vectorizer.get_feature_names_out()
    top_words = [
        [str(vocabulary[index]) for index in np.argsort(component)[::-1][:words_per_topic]]
        for component in nmf.components_
    ]
    return TopicModel(mixtures=mixtures, top_words=top_words)
