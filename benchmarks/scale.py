"""Synthetic catalogs of N items in Milvus, to measure how Recommend and Search latency grow with N.

Vectors are synthetic (latency depends on the catalog's size and dimension, not on what the vectors
mean) but clustered, a gaussian mixture like real embeddings, because HNSW behaves very differently
on structureless random vectors (shared PLAYBOOK: recall 0.16-0.72 on random vectors vs 0.99 on
clustered ones). Ids come from `benchmarks.workload.synthetic_ids`, categories from
`synthetic_category`, so the load generator's `--synthetic-items N` histories and filters hit stored
items, as they do on the naive server's `--synthetic-items N` tables.

Each catalog lives in its own pair of collections (`bench_news_<label>_d<D>`, `bench_passages_...`)
next to the demo catalog's, written with the MilvusStore façade's bulk `upsert` straight into Milvus
(no Triton encoding). A catalog that is already complete is kept: `make bench` loads 1M rows once.
After loading, the collections are settled (`settle`: flushed, compacted, indexed), so searches measure
the HNSW index, and no background compaction runs beside the measurements.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from urllib.parse import urlsplit

import grpc
import numpy as np
from pymilvus import MilvusClient
from pymilvus.grpc_gen import milvus_pb2, milvus_pb2_grpc

from benchmarks.naive_server import SYNTHETIC_EPOCH
from benchmarks.workload import ItemKind, synthetic_category, synthetic_ids
from server.config import MilvusSettings
from server.milvus import MilvusStore

CLUSTERS = 1024
CLUSTER_SPREAD = 0.35  # within-cluster standard deviation, relative to the unit-variance centres
VECTOR_BLOCK = 10_000
LOAD_CHUNK = 20_000  # rows per façade upsert call (each call waits once for its writes to be visible)
LOAD_TIMEOUT_S = 600.0
INDEX_TIMEOUT_S = 3600.0


def size_label(count: int) -> str:
    """10_000 -> "10k", 1_000_000 -> "1m", 2_507 -> "2507"."""
    for unit, label in ((1_000_000, "m"), (1_000, "k")):
        if count >= unit and count % unit == 0:
            return f"{count // unit}{label}"
    return str(count)


@dataclass(frozen=True)
class SyntheticCatalog:
    """N news and N passages of the served models' dimensions."""

    count: int
    news_dim: int
    passage_dim: int
    seed: int = 0

    @property
    def label(self) -> str:
        return size_label(self.count)

    @property
    def news_collection(self) -> str:
        return f"bench_news_{self.label}_d{self.news_dim}"

    @property
    def passage_collection(self) -> str:
        return f"bench_passages_{self.label}_d{self.passage_dim}"

    def milvus_settings(self, uri: str) -> MilvusSettings:
        return MilvusSettings(uri=uri, news_collection=self.news_collection, passage_collection=self.passage_collection)

    def gateway_env(self) -> dict[str, str]:
        """A gateway serving this catalog, with every news vector in its item cache (as production sizes it)."""
        return {
            "RECSTACK_MILVUS__NEWS_COLLECTION": self.news_collection,
            "RECSTACK_MILVUS__PASSAGE_COLLECTION": self.passage_collection,
            "RECSTACK_RECOMMEND__ITEM_CACHE_CAPACITY": str(self.count),
        }

    def rows(self, kind: ItemKind, start: int, stop: int) -> list[dict]:
        """Rows [start, stop) of one collection, every schema field filled (news vectors raw, passages unit)."""
        dim = self.news_dim if kind == "news" else self.passage_dim
        vectors = clustered_vectors(start, stop, dim, self.seed + (kind == "passage"), unit=kind == "passage")
        ids = synthetic_ids(kind, stop)[start:stop]
        rows = []
        for offset, (item_id, vector) in enumerate(zip(ids, vectors, strict=True)):
            row = start + offset
            common = {"id": item_id, "vector": vector, "category": synthetic_category(row)}
            common |= {"title": f"synthetic {kind} {row}", "published": SYNTHETIC_EPOCH + row}
            if kind == "news":
                rows.append(common | {"abstract": "", "subcategory": "synthetic", "popularity": 0.0})
            else:
                rows.append(common | {"text": f"synthetic passage text {row}", "doc_id": ""})
        return rows


def clustered_vectors(start: int, stop: int, dim: int, seed: int, unit: bool) -> np.ndarray:
    """Rows [start, stop) of an endless gaussian mixture (CLUSTERS centres fixed by `seed`), float32.

    Rows are generated in blocks of VECTOR_BLOCK, each from its own seed, so any row range of a catalog
    is the same whichever chunks it is generated in.
    """
    centres = np.random.default_rng(seed).standard_normal((CLUSTERS, dim), dtype=np.float32)
    first, last = start // VECTOR_BLOCK, (stop - 1) // VECTOR_BLOCK
    blocks = []
    for block in range(first, last + 1):
        rng = np.random.default_rng((seed, block))
        noise = rng.standard_normal((VECTOR_BLOCK, dim), dtype=np.float32) * CLUSTER_SPREAD
        blocks.append(centres[rng.integers(CLUSTERS, size=VECTOR_BLOCK)] + noise)
    offset = first * VECTOR_BLOCK
    vectors = np.concatenate(blocks)[start - offset : stop - offset]
    if unit:
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def chunks(count: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, count, size):
        yield start, min(count, start + size)


def no_progress(rows: int) -> None:
    """The default progress report of `load_catalog`: none."""


async def load_catalog(
    catalog: SyntheticCatalog,
    uri: str,
    on_rows: Callable[[int], None] = no_progress,
    cancelled: threading.Event | None = None,
) -> dict[str, float]:
    """Make both collections hold exactly the catalog (kept when already complete), flushed and indexed.

    Returns {"rows_written", "load_s", "index_s" (`settle`: flush, compaction, index build)};
    `on_rows(n)` reports progress. Cancelling the task (Ctrl-C under asyncio.run) or setting
    `cancelled` stops the wait for Milvus within a poll interval.
    """
    cancelled = cancelled or threading.Event()
    started = time.perf_counter()
    written = 0
    async with MilvusStore(catalog.milvus_settings(uri)) as store:
        await store.ensure_collections(catalog.news_dim, catalog.passage_dim)
        for kind, collection in (("news", catalog.news_collection), ("passage", catalog.passage_collection)):
            if await store.count(collection) == catalog.count:
                on_rows(catalog.count)
                continue
            for start, stop in chunks(catalog.count, LOAD_CHUNK):
                rows = await asyncio.to_thread(catalog.rows, kind, start, stop)
                written += await store.upsert(collection, rows, timeout=LOAD_TIMEOUT_S)
                on_rows(stop - start)
    loaded = time.perf_counter()
    try:
        collections = [catalog.news_collection, catalog.passage_collection]
        await asyncio.to_thread(settle, uri, collections, cancelled=cancelled, compact=written > 0)
    except asyncio.CancelledError:
        cancelled.set()  # the settling thread would otherwise keep asyncio.run waiting for up to an hour
        raise
    return {
        "rows_written": written,
        "load_s": round(loaded - started, 1),
        "index_s": round(time.perf_counter() - loaded, 1),
    }


def settle(
    uri: str,
    collections: Sequence[str],
    poll_s: float = 1.0,
    cancelled: threading.Event | None = None,
    compact: bool = True,
) -> None:
    """Bring collections to the state a long-running catalog is served from: sealed, compacted, indexed.

    Rows written a moment ago sit in growing segments (searched without the HNSW index), and Milvus
    merges and re-indexes small segments in the background later: measured here, that background work
    took minutes of CPU after a 100k load and disturbed the measurements beside it, and the demo passages'
    recall@10 was 0.915 from growing segments vs 0.964 from the sealed HNSW one. So: flush, compact
    (unless `compact` is False: a catalog settled by an earlier run and not written since; compacting
    the 1M passages again re-merged their segments and re-indexed them for ~15 min), wait
    for the compaction, for the index to cover every row and for the query nodes to serve the sealed,
    indexed segments; then for the server's other collections' queued index builds (e.g. left by an
    earlier run's compactions: Milvus builds one index at a time, at full CPU). TimeoutError after
    INDEX_TIMEOUT_S; InterruptedError once `cancelled` is set (the index build goes on inside Milvus,
    the next run waits for what is left). Setup only, through
    pymilvus's MilvusClient (the gateway's façade has no flush).
    """
    client = MilvusClient(uri, timeout=LOAD_TIMEOUT_S, dedicated=True)
    waiting = Waiting(time.monotonic() + INDEX_TIMEOUT_S, poll_s, cancelled or threading.Event())
    try:
        for collection in collections:
            client.flush(collection, timeout=LOAD_TIMEOUT_S)
            if compact:
                job = compact_collection(client, uri, collection)
                waiting.until(partial(compaction_done, client, job), f"compaction of {collection}")
            waiting.until(partial(index_done, client, collection), f"index build of {collection}")
            waiting.until(partial(serving_sealed, client, collection), f"loading the index of {collection}")
        for other in set(client.list_collections(timeout=LOAD_TIMEOUT_S)) - set(collections):
            waiting.until(partial(index_done, client, other), f"index build of {other} (queued by an earlier run)")
    finally:
        client.close()


def compact_collection(client: MilvusClient, uri: str, collection: str) -> int:
    """Start a compaction of `collection`, and of no other; returns the job id.

    pymilvus 2.5's `compact` names the collection only by `collection_name`, a field Milvus 2.3.5 does
    not read: it took the unset `collectionID` (0) as "every collection" and merged and re-indexed the
    whole server's segments, the 1M catalog included, at each settle. This request carries the id.
    """
    collection_id = client.describe_collection(collection, timeout=LOAD_TIMEOUT_S)["collection_id"]
    request = milvus_pb2.ManualCompactionRequest(collectionID=collection_id, collection_name=collection)
    with grpc.insecure_channel(urlsplit(uri).netloc) as channel:
        response = milvus_pb2_grpc.MilvusServiceStub(channel).ManualCompaction(request, timeout=LOAD_TIMEOUT_S)
    if response.status.error_code or response.status.code:
        raise RuntimeError(f"milvus: compaction of {collection} refused: {response.status.reason}")
    return response.compactionID


def release(uri: str, collections: Sequence[str]) -> None:
    """Free the query nodes' memory of measured collections (`load_catalog` loads them again).

    Milvus reloads at start whatever was loaded when it stopped: with the 1M catalog still loaded, the
    next run's start took minutes of both cores beside Triton's, its etcd sessions lapsed and it exited.
    """
    client = MilvusClient(uri, timeout=LOAD_TIMEOUT_S, dedicated=True)
    try:
        for collection in collections:
            client.release_collection(collection, timeout=LOAD_TIMEOUT_S)
    finally:
        client.close()


def compaction_done(client: MilvusClient, job: int) -> bool:
    return client.get_compaction_state(job, timeout=LOAD_TIMEOUT_S) == "Completed"


def index_done(client: MilvusClient, collection: str) -> bool:
    indexes = client.list_indexes(collection, field_name="vector", timeout=LOAD_TIMEOUT_S)
    return not any(
        client.describe_index(collection, index, timeout=LOAD_TIMEOUT_S).get("pending_index_rows", 0)
        for index in indexes
    )


def serving_sealed(client: MilvusClient, collection: str) -> bool:
    """The query nodes serve every flushed row from sealed (indexed) segments, none from growing ones."""
    loaded = client.list_loaded_segments(collection, timeout=LOAD_TIMEOUT_S)
    flushed = client.list_persistent_segments(collection, timeout=LOAD_TIMEOUT_S)
    flushed_rows = sum(s.num_rows for s in flushed if s.state_name == "Flushed")
    return all(s.state_name == "Sealed" for s in loaded) and sum(s.num_rows for s in loaded) == flushed_rows


@dataclass(frozen=True)
class Waiting:
    """Polls conditions until one shared deadline, giving up as soon as `cancelled` is set."""

    deadline: float  # time.monotonic()
    interval_s: float
    cancelled: threading.Event

    def until(self, done: Callable[[], bool], what: str) -> None:
        while not done():
            if time.monotonic() > self.deadline:
                raise TimeoutError(f"milvus: {what} not finished after {INDEX_TIMEOUT_S:.0f} s")
            if self.cancelled.wait(self.interval_s):
                raise InterruptedError(f"milvus: stopped waiting for the {what}")
