"""ANN recall@k: Milvus's HNSW top-k against the exact top-k (brute-force inner product in NumPy).

recall@k of one query = |ANN top-k ∩ exact top-k| / k; the reported value is the mean over queries.
Queries go through the same `MilvusStore.search` the gateway uses (same metric, same ef from
`MilvusSettings.search_ef`, raised to k when smaller), without filters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from benchmarks.components import CatalogVectors
from server.milvus import MilvusStore

EXACT_CHUNK_ELEMENTS = 16_000_000  # queries × items scored at once by the brute force (64 MB of float32)
ANN_BATCH = 64  # queries per Milvus search request


@dataclass(frozen=True)
class Recall:
    k: int
    recall: float  # mean recall@k over the queries
    queries: int
    catalog: int  # rows searched
    ef: int  # HNSW ef used at search time

    def to_dict(self) -> dict:
        return asdict(self)


def exact_top_k(queries: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    """[Q, k] row indices of `vectors` with the largest inner product per query, best first."""
    if queries.ndim != 2 or vectors.ndim != 2 or queries.shape[1] != vectors.shape[1]:
        raise ValueError(f"shapes {queries.shape} and {vectors.shape} are not [Q, D] and [N, D]")
    k = min(k, vectors.shape[0])
    step = max(1, EXACT_CHUNK_ELEMENTS // vectors.shape[0])
    chunks = []
    for start in range(0, queries.shape[0], step):
        scores = queries[start : start + step] @ vectors.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        chunks.append(np.take_along_axis(top, order, axis=1))
    return np.concatenate(chunks)


def recall_at_k(found: Sequence[Sequence[str]], exact: Sequence[Sequence[str]], k: int) -> float:
    """Mean over queries of |found[:k] ∩ exact[:k]| / k (found and exact are per-query id lists)."""
    if len(found) != len(exact) or not exact:
        raise ValueError(f"need one exact list per found list, got {len(found)} and {len(exact)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    hits = [len(set(f[:k]) & set(e[:k])) for f, e in zip(found, exact, strict=True)]
    return float(np.mean(hits)) / k


async def ann_recall(
    store: MilvusStore, collection: str, catalog: CatalogVectors, queries: np.ndarray, k: int = 10
) -> Recall:
    """recall@k of `store`'s ANN search over `collection` (which holds exactly `catalog`) for `queries`."""
    exact = [[catalog.ids[row] for row in rows] for rows in exact_top_k(queries, catalog.vectors, k)]
    found: list[list[str]] = []
    for start in range(0, len(queries), ANN_BATCH):
        hits = await store.search(collection, queries[start : start + ANN_BATCH], k)
        found.extend(query_hits.ids for query_hits in hits)
    ef = max(store.settings.search_ef, k)
    return Recall(k, recall_at_k(found, exact, k), len(queries), len(catalog.ids), ef)
