"""ItemCache: columnar lookups in request order, TTL expiry, least-recently-used eviction, forget."""

from __future__ import annotations

import numpy as np
from prometheus_client import REGISTRY

from server.item_cache import CachedNews, ItemCache

DIM = 4


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def entry(n: int) -> CachedNews:
    return CachedNews(np.full(DIM, n, np.float32), f"title {n}", f"cat {n % 2}", 1000 + n)


def test_lookup_returns_found_entries_as_columns_in_request_order_and_the_missing_ids() -> None:
    cache = ItemCache(100, 60)
    cache.store({f"n{n}": entry(n) for n in range(40)})  # grows past the first allocation
    found, missing = cache.lookup(["n7", "nope", "n0", "n39"])
    assert missing == ["nope"]
    assert found.ids == ["n7", "n0", "n39"] and found.positions == {"n7": 0, "n0": 1, "n39": 2}
    np.testing.assert_array_equal(found.vectors, np.array([[7] * DIM, [0] * DIM, [39] * DIM], np.float32))
    assert list(found.titles) == ["title 7", "title 0", "title 39"]
    assert list(found.categories) == ["cat 1", "cat 0", "cat 1"]
    assert found.published.tolist() == [1007, 1000, 1039]


def test_an_entry_expires_ttl_after_it_was_stored_and_storing_it_again_refreshes_it() -> None:
    clock = Clock()
    cache = ItemCache(10, 60, clock)
    cache.store({"a": entry(1), "b": entry(2)})
    clock.now = 59.0
    assert cache.lookup(["a", "b"])[1] == []
    cache.store({"b": entry(3)})
    clock.now = 61.0
    found, missing = cache.lookup(["a", "b"])
    assert missing == ["a"] and found.ids == ["b"] and found.titles[0] == "title 3"


def test_a_full_cache_evicts_the_least_recently_used_entries() -> None:
    clock = Clock()
    cache = ItemCache(3, 600, clock)
    cache.store({"a": entry(1), "b": entry(2), "c": entry(3)})
    clock.now = 1.0
    cache.lookup(["a", "c"])  # b is now the least recently used
    clock.now = 2.0
    cache.store({"d": entry(4)})
    assert len(cache) == 3 and not cache.has_room()
    assert cache.lookup(["a", "b", "c", "d"])[1] == ["b"]


def test_forget_frees_the_row_for_the_next_entry_and_capacity_zero_keeps_nothing() -> None:
    cache = ItemCache(2, 600)
    cache.store({"a": entry(1), "b": entry(2)})
    cache.forget(["a", "unknown"])
    assert cache.has_room() and cache.lookup(["a"])[1] == ["a"]
    cache.store({"c": entry(3)})
    found, missing = cache.lookup(["b", "c"])
    assert missing == [] and found.published.tolist() == [1002, 1003]
    empty = ItemCache(0, 600)
    empty.store({"a": entry(1)})
    assert len(empty) == 0 and empty.lookup(["a"])[1] == ["a"]


def test_lookups_count_hits_and_misses_also_in_a_cache_that_holds_nothing() -> None:
    def count(result: str) -> float:
        return REGISTRY.get_sample_value("recstack_item_cache_total", {"result": result}) or 0.0

    before = count("hit"), count("miss")
    cache = ItemCache(10, 600)
    cache.store({"a": entry(1)})
    cache.lookup(["a", "b"])
    ItemCache(0, 600).lookup(["a", "b", "c"])
    assert (count("hit") - before[0], count("miss") - before[1]) == (1, 4)
