"""A bounded in-memory view of the news catalog (vector + display fields), so Recommend reads no
item data from the database on its hot path.

Why: measured on this machine, fetching ~50 history vectors from Milvus was the most expensive
stage of Recommend (shared PLAYBOOK: serving them from gateway memory halved latency and doubled
throughput), and a Milvus search that also returns title/category/published costs ~1 ms more than
one that returns ids and scores only (the extra retrieve step on sealed segments). So history
vectors and candidates' display fields come from here; Milvus is asked only for what is missing.

- Columnar: one contiguous float32 vector matrix plus parallel columns (title, category, published,
  stored and last-used times) and an id -> row dict, so a lookup is one dict probe per id and one
  fancy-index per column, with no per-entry objects (a TTL/LRU cache of entry objects cost the gateway
  ~1.3 ms of CPU per Recommend, profiled).
- Bounded: beyond `capacity` items the least recently used rows are evicted (on `store`, in chunks).
- Fresh: this gateway's UpsertItems writes the new entry here and DeleteItems removes it, in the
  same request that writes Milvus, so the next request sees the change. Writes made through
  *another* gateway replica are picked up when the entry expires (`ttl_s` after it was stored: a
  lookup then reports it missing) or is evicted.
- Refreshed ahead: an entry found after REFRESH_AT x `ttl_s` is still served, and its id is noted as
  due (`take_due`) for the owner to re-read in the background (`CatalogView`), so entries in use do not
  expire on the request path. Why: the warm-up stores the whole catalog within seconds, so it all expired
  within seconds too: on the demo stack at c8 the 10 s window 300 s after a refill had 1,772 misses and
  496 Milvus reads on the request path (none in the windows around it) and p99 83 ms against 40-74.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from server.observability import ITEM_CACHE, labelled

FIELDS = ("vector", "title", "category", "published", "popularity")
EVICTION_CHUNK = 64  # a full cache evicts at least capacity / EVICTION_CHUNK rows at once
REFRESH_AT = 0.75  # an entry found after this share of ttl_s is due for a background refresh
Strings = NDArray[np.object_]


@dataclass(frozen=True, slots=True)
class CachedNews:
    """One entry to store."""

    vector: NDArray[np.float32]
    title: str
    category: str
    published: int
    popularity: float = 0.0  # smoothed click-through rate (contract.ranking)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> CachedNews:
        """From a Milvus row (or an upserted one) holding at least FIELDS."""
        return cls(
            vector=np.asarray(row["vector"], dtype=np.float32),
            title=row["title"],
            category=row["category"],
            published=int(row["published"]),
            popularity=float(row.get("popularity", 0.0)),
        )


@dataclass(frozen=True)
class NewsBatch:
    """News entries as columns: row i of each column belongs to `ids[i]`."""

    ids: list[str]
    vectors: NDArray[np.float32]  # [n, D] (D is 0 where the vectors were not read)
    titles: Strings
    categories: Strings
    published: NDArray[np.int64]
    popularity: NDArray[np.float32]

    def __len__(self) -> int:
        return len(self.ids)

    @functools.cached_property
    def positions(self) -> dict[str, int]:
        """Row by id."""
        return {item_id: i for i, item_id in enumerate(self.ids)}

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]]) -> NewsBatch:
        """From Milvus rows with `id`, title, category, published and popularity (no vectors)."""
        return cls(
            [row["id"] for row in rows],
            np.zeros((len(rows), 0), np.float32),
            _strings(row.get("title", "") for row in rows),
            _strings(row.get("category", "") for row in rows),
            np.array([int(row.get("published", 0) or 0) for row in rows], dtype=np.int64),
            np.array([float(row.get("popularity", 0.0) or 0.0) for row in rows], dtype=np.float32),
        )

    def take(self, rows: NDArray[np.intp]) -> NewsBatch:
        """The entries at `rows`, in that order."""
        ids = self.ids
        return NewsBatch(
            [ids[i] for i in rows.tolist()],
            self.vectors[rows],
            self.titles[rows],
            self.categories[rows],
            self.published[rows],
            self.popularity[rows],
        )

    @classmethod
    def from_entries(cls, entries: Mapping[str, CachedNews]) -> NewsBatch:
        values = list(entries.values())
        return cls(
            list(entries),
            np.stack([e.vector for e in values]) if values else np.zeros((0, 0), np.float32),
            _strings(e.title for e in values),
            _strings(e.category for e in values),
            np.array([e.published for e in values], dtype=np.int64),
            np.array([e.popularity for e in values], dtype=np.float32),
        )

    def concat(self, other: NewsBatch) -> NewsBatch:
        if not len(other):
            return self
        if not len(self):
            return other
        return NewsBatch(
            self.ids + other.ids,
            np.concatenate([self.vectors, other.vectors]),
            np.concatenate([self.titles, other.titles]),
            np.concatenate([self.categories, other.categories]),
            np.concatenate([self.published, other.published]),
            np.concatenate([self.popularity, other.popularity]),
        )


class ItemCache:
    def __init__(self, capacity: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity, self.ttl_s, self._clock = capacity, ttl_s, clock
        self._rows: dict[str, int] = {}
        self._free: list[int] = []
        self._ids: Strings = _strings(())
        self._vectors: NDArray[np.float32] = np.zeros((0, 0), np.float32)
        self._titles: Strings = _strings(())
        self._categories: Strings = _strings(())
        self._published: NDArray[np.int64] = np.zeros(0, np.int64)
        self._popularity: NDArray[np.float32] = np.zeros(0, np.float32)
        self._stored: NDArray[np.float64] = np.zeros(0)  # clock() when written
        self._used: NDArray[np.float64] = np.zeros(0)  # clock() when last found by a lookup
        self._due: set[str] = set()  # ids found after REFRESH_AT x ttl_s, not yet taken for a refresh

    def __len__(self) -> int:
        return len(self._rows)

    def lookup(self, ids: Sequence[str]) -> tuple[NewsBatch, list[str]]:
        """(the fresh entries found, in `ids` order; ids not in memory or expired)."""
        if not self._rows:
            labelled(ITEM_CACHE, "miss").inc(len(ids))
            return self._batch([], np.zeros(0, np.intp)), list(ids)
        rows = np.fromiter(map(self._rows.get, ids, itertools.repeat(-1)), np.intp, len(ids))
        now = self._clock()
        found = self._stored[rows] > now - self.ttl_s  # an unknown id's -1 reads the last row: masked next
        found &= rows >= 0
        if found.all():  # the common case, without the masks' copies (this runs twice per Recommend)
            found_ids, hit_rows, missing = list(ids), rows, []
        else:
            found_ids = [ids[i] for i in np.flatnonzero(found)]
            hit_rows, missing = rows[found], [ids[i] for i in np.flatnonzero(~found)]
            labelled(ITEM_CACHE, "miss").inc(len(missing))
        self._used[hit_rows] = now
        aging = self._stored[hit_rows] <= now - REFRESH_AT * self.ttl_s
        if aging.any():
            self._due.update(found_ids[i] for i in np.flatnonzero(aging))
        labelled(ITEM_CACHE, "hit").inc(len(hit_rows))
        return self._batch(found_ids, hit_rows), missing

    def has_due(self) -> bool:
        return bool(self._due)

    def take_due(self, most: int) -> list[str]:
        """Up to `most` ids due for a refresh (see the module docstring) that are still cached; each is given once."""
        taken: list[str] = []
        while self._due and len(taken) < most:
            item_id = self._due.pop()
            if item_id in self._rows:
                taken.append(item_id)
        return taken

    def _batch(self, ids: list[str], rows: NDArray[np.intp]) -> NewsBatch:
        return NewsBatch(
            ids,
            self._vectors[rows],
            self._titles[rows],
            self._categories[rows],
            self._published[rows],
            self._popularity[rows],
        )

    def store(self, entries: Mapping[str, CachedNews]) -> None:
        now = self._clock()
        for item_id, entry in entries.items():
            row = self._rows.get(item_id)
            if row is None:
                row = self._allocate(item_id, entry.vector.shape[-1])
                if row is None:
                    return
            self._vectors[row] = entry.vector
            self._titles[row], self._categories[row] = entry.title, entry.category
            self._published[row] = entry.published
            self._popularity[row] = entry.popularity
            self._stored[row] = self._used[row] = now

    def forget(self, ids: Iterable[str]) -> None:
        for item_id in ids:
            row = self._rows.pop(item_id, None)
            if row is not None:
                self._free.append(row)

    def has_room(self) -> bool:
        return len(self._rows) < self.capacity

    def _allocate(self, item_id: str, dim: int) -> int | None:
        """A row for a new id (None when the capacity is 0): a free one, a new one, or an evicted one."""
        if not self.capacity:
            return None
        if not self._free:
            if len(self._rows) >= self.capacity:
                self._evict()
            else:
                self._grow(dim)
        row = self._free.pop()
        self._rows[item_id] = row
        self._ids[row] = item_id
        return row

    def _grow(self, dim: int) -> None:
        """Double the columns (up to capacity) and free the new rows."""
        size = len(self._stored)
        new_size = min(self.capacity, max(2 * size, 16))
        if size and self._vectors.shape[1] != dim:
            raise ValueError(f"vector dim {dim} differs from the cached ones' {self._vectors.shape[1]}")
        vectors = np.zeros((new_size, dim), np.float32)
        if size:
            vectors[:size] = self._vectors
        self._vectors = vectors
        self._ids, self._titles, self._categories = (
            _resized(c, new_size) for c in (self._ids, self._titles, self._categories)
        )
        self._published = _resized(self._published, new_size)
        self._popularity = _resized(self._popularity, new_size)
        self._stored, self._used = _resized(self._stored, new_size), _resized(self._used, new_size)
        self._free.extend(range(new_size - 1, size - 1, -1))

    def _evict(self) -> None:
        """Free the least recently used rows (a chunk, so a full cache does not sort on every store)."""
        count = max(1, self.capacity // EVICTION_CHUNK)
        for row in np.argpartition(self._used, count - 1)[:count]:
            del self._rows[self._ids[row]]
            self._free.append(int(row))


def _strings(values: Iterable[str]) -> Strings:
    """A column of Python strings (a NumPy object array, so it can be fancy-indexed)."""
    items = list(values)
    column = np.empty(len(items), dtype=object)
    column[:] = items
    return column


def _resized(column: NDArray[Any], size: int) -> NDArray[Any]:
    """`column` zero-extended (or "" for strings) to `size` rows."""
    grown = np.full(size, "", dtype=object) if column.dtype == object else np.zeros(size, dtype=column.dtype)
    grown[: len(column)] = column
    return grown
