"""MilvusStore against Milvus Lite (in process): schema setup, writes, reads, filters and error mapping."""

from __future__ import annotations

import random
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
from milvus_fixtures import (
    NEWS_DIM,
    PASSAGE_DIM,
    copy_lite_catalog,
    lite_settings,
    make_lite_catalog,
    news_row,
    passage_row,
)
from pymilvus import DataType, MilvusClient
from test_admission import FakeClock

from devstack.process import free_port
from server.circuit import Circuit
from server.config import MilvusSettings
from server.domain import Filters
from server.errors import DependencyTimeout, DependencyUnavailable, InvalidArgument, NotFound
from server.milvus import MilvusStore, SchemaMismatch

pytestmark = pytest.mark.anyio

NEWS = "news"
PASSAGES = "passages"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lite_catalog(tmp_path_factory.mktemp("lite") / "template.db")


@pytest.fixture
async def store(template: Path, tmp_path: Path) -> AsyncIterator[MilvusStore]:
    async with MilvusStore(lite_settings(copy_lite_catalog(template, tmp_path / "catalog.db"))) as store:
        await store.ensure_collections(NEWS_DIM, PASSAGE_DIM)
        yield store


def one_hot(index: int, dim: int = NEWS_DIM, scale: float = 1.0) -> np.ndarray:
    vector = np.zeros(dim, dtype=np.float32)
    vector[index] = scale
    return vector


# ---- schema ----------------------------------------------------------------------------------------


async def test_ensure_collections_creates_both_collections_ready_for_rows(tmp_path: Path) -> None:
    async with MilvusStore(lite_settings(tmp_path / "new.db")) as store:
        await store.ensure_collections(NEWS_DIM, PASSAGE_DIM)
        assert await store.ready()
        await store.upsert(NEWS, [news_row("n1", one_hot(0), popularity=0.5)])
        await store.upsert(PASSAGES, [passage_row("p1", one_hot(0, PASSAGE_DIM), text="x" * 8000)])
        assert (await store.count(NEWS), await store.count(PASSAGES)) == (1, 1)


async def test_ensure_collections_is_idempotent_and_keeps_rows(store: MilvusStore) -> None:
    await store.upsert(NEWS, [news_row("n1", one_hot(0))])
    await store.ensure_collections(NEWS_DIM, PASSAGE_DIM)
    assert await store.count(NEWS) == 1


async def test_ensure_collections_rejects_an_existing_collection_of_another_dim(store: MilvusStore) -> None:
    with pytest.raises(SchemaMismatch, match=r"'news'.*vector: expected \('FLOAT_VECTOR', 16"):
        await store.ensure_collections(16, PASSAGE_DIM)


async def test_ensure_collections_rejects_an_existing_collection_with_other_fields(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    client = MilvusClient(str(path))
    schema = client.create_schema(enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=NEWS_DIM)
    schema.add_field("title", DataType.VARCHAR, max_length=1024)
    index = client.prepare_index_params()
    index.add_index("vector", index_type="HNSW", metric_type="IP", params={"M": 8, "efConstruction": 32})
    client.create_collection(NEWS, schema=schema, index_params=index)
    client.close()
    async with MilvusStore(lite_settings(path)) as store:
        with pytest.raises(SchemaMismatch, match=r"popularity: expected .*found no field"):
            await store.ensure_collections(NEWS_DIM, PASSAGE_DIM)


# ---- writes ----------------------------------------------------------------------------------------


async def test_upserting_an_id_twice_keeps_one_row_with_the_latest_values(store: MilvusStore) -> None:
    assert await store.upsert(NEWS, [news_row("n1", one_hot(0), title="old")]) == 1
    await store.upsert(NEWS, [news_row("n1", one_hot(1), title="new")])
    assert await store.count(NEWS) == 1
    row = (await store.get(NEWS, ["n1"], ["title", "vector"]))["n1"]
    assert row["title"] == "new"
    np.testing.assert_array_equal(row["vector"], one_hot(1))


async def test_upsert_in_several_batches_writes_every_row(template: Path, tmp_path: Path) -> None:
    settings = lite_settings(copy_lite_catalog(template, tmp_path / "catalog.db"), write_batch_rows=3)
    async with MilvusStore(settings) as store:
        await store.ensure_collections(NEWS_DIM, PASSAGE_DIM)
        rows = [news_row(f"n{i}", one_hot(i % NEWS_DIM)) for i in range(10)]
        assert await store.upsert(NEWS, rows) == 10
        assert await store.count(NEWS) == 10


async def test_delete_counts_only_ids_that_existed(store: MilvusStore) -> None:
    await store.upsert(NEWS, [news_row("a", one_hot(0)), news_row("b", one_hot(1))])
    assert await store.delete(NEWS, ["a", "missing", "a"]) == 1
    assert await store.get(NEWS, ["a", "b"]) == {"b": {"id": "b"}}
    assert await store.delete(NEWS, []) == 0


async def test_rows_survive_closing_and_reopening_a_lite_catalog(template: Path, tmp_path: Path) -> None:
    settings = lite_settings(copy_lite_catalog(template, tmp_path / "catalog.db"))
    async with MilvusStore(settings) as store:
        await store.ensure_collections(NEWS_DIM, PASSAGE_DIM)
        await store.upsert(NEWS, [news_row("n1", one_hot(0))])
    async with MilvusStore(settings) as reopened:
        await reopened.ensure_collections(NEWS_DIM, PASSAGE_DIM)
        assert await reopened.count(NEWS) == 1


# ---- reads -----------------------------------------------------------------------------------------


async def test_get_returns_requested_fields_with_float32_vectors_and_skips_missing_ids(store: MilvusStore) -> None:
    vector = np.linspace(-1, 1, NEWS_DIM, dtype=np.float32)
    await store.upsert(NEWS, [news_row("n1", vector, title="Title 1", published=7)])
    rows = await store.get(NEWS, ["n1", "nope"], ["vector", "title", "published"])
    assert list(rows) == ["n1"]
    assert rows["n1"]["vector"].dtype == np.float32
    np.testing.assert_allclose(rows["n1"]["vector"], vector)
    assert (rows["n1"]["title"], rows["n1"]["published"]) == ("Title 1", 7)


async def test_iterate_yields_every_row_once_in_id_order_across_batches(store: MilvusStore) -> None:
    ids = [f"n{i:02d}" for i in range(25)]
    await store.upsert(NEWS, [news_row(i, one_hot(n % NEWS_DIM), title=i.upper()) for n, i in enumerate(ids)])
    rows = [row async for row in store.iterate(NEWS, ["title"], batch_size=7)]
    assert [row["id"] for row in rows] == ids
    assert all(row["title"] == row["id"].upper() for row in rows)


async def test_iterate_pages_in_id_order_whatever_the_write_order_with_quotes_in_ids(
    template: Path, tmp_path: Path
) -> None:
    ids = sorted([f"n{i:03d}" for i in range(60)] + ['n"quoted', "n\\back", "N-upper"])
    shuffled = random.Random(7).sample(ids, len(ids))
    settings = lite_settings(copy_lite_catalog(template, tmp_path / "paged.db"), write_batch_rows=9)
    async with MilvusStore(settings) as store:
        await store.ensure_collections(NEWS_DIM, PASSAGE_DIM)
        for start in range(0, len(shuffled), 20):  # several upsert calls, each in several requests
            chunk = shuffled[start : start + 20]
            await store.upsert(NEWS, [news_row(i, one_hot(n % NEWS_DIM)) for n, i in enumerate(chunk)])
        rows = [row async for row in store.iterate(NEWS, ["vector"], batch_size=8)]
    assert [row["id"] for row in rows] == ids  # more rows than one page: each once, in id order
    assert all(row["vector"].dtype == np.float32 for row in rows)


async def test_a_news_abstract_is_stored_and_read_back(store: MilvusStore) -> None:
    abstract = "An abstract of ünïcode text, " * 100
    await store.upsert(NEWS, [news_row("n1", one_hot(0), abstract=abstract)])
    assert (await store.get(NEWS, ["n1"], ["abstract"]))["n1"]["abstract"] == abstract


async def test_search_answers_each_query_of_a_batch_with_its_nearest_rows(store: MilvusStore) -> None:
    await store.upsert(NEWS, [news_row(f"n{i}", one_hot(i, scale=i + 1.0)) for i in range(NEWS_DIM)])
    queries = np.stack([one_hot(2), one_hot(5), one_hot(0)])
    results = await store.search(NEWS, queries, limit=3, output_fields=["title"])
    assert [hits[0].id for hits in results] == ["n2", "n5", "n0"]
    assert [hits[0].score for hits in results] == pytest.approx([3.0, 6.0, 1.0])  # inner products
    assert results[0][0].fields == {"title": "title of n2"}
    assert all(len(hits) == 3 and hits[0].score >= hits[1].score >= hits[2].score for hits in results)


async def test_search_filters_by_category_published_after_and_both(store: MilvusStore) -> None:
    rows = [
        news_row("old-sport", one_hot(0), category="sport", published=100),
        news_row("new-sport", one_hot(0), category="sport", published=300),
        news_row("new-music", one_hot(0), category="music", published=300),
        news_row("undated-sport", one_hot(0), category="sport", published=0),
    ]
    await store.upsert(NEWS, rows)
    query = one_hot(0)[None, :]

    async def ids(filters: Filters) -> set[str]:
        return {hit.id for hit in (await store.search(NEWS, query, limit=10, filters=filters))[0]}

    assert await ids(Filters()) == {row["id"] for row in rows}
    assert await ids(Filters(categories=["sport"])) == {"old-sport", "new-sport", "undated-sport"}
    assert await ids(Filters(categories=["music", "sport"])) == {row["id"] for row in rows}
    assert await ids(Filters(published_after=100)) == {"new-sport", "new-music"}
    assert await ids(Filters(categories=["sport"], published_after=200)) == {"new-sport"}
    assert await ids(Filters(categories=["jazz"])) == set()


# ---- errors ----------------------------------------------------------------------------------------


async def test_a_missing_collection_is_not_found(store: MilvusStore) -> None:
    with pytest.raises(NotFound, match="missing"):
        await store.search("missing", one_hot(0)[None, :], limit=3)
    with pytest.raises(NotFound):
        await store.get("missing", ["a"])
    with pytest.raises(NotFound):
        await store.upsert("missing", [news_row("a", one_hot(0))])
    with pytest.raises(NotFound):
        await store.count("missing")


async def test_a_filter_the_collection_cannot_evaluate_is_an_invalid_filter(store: MilvusStore) -> None:
    client = MilvusClient(store.settings.uri)
    client.create_collection(
        "bare", dimension=NEWS_DIM, id_type="string", max_length=64, metric_type="IP", enable_dynamic_field=False
    )
    client.close()
    with pytest.raises(InvalidArgument) as raised:
        await store.search("bare", one_hot(0)[None, :], limit=3, filters=Filters(categories=["sport"]))
    assert raised.value.field == "filters"


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda s: s.search(NEWS, np.ones((1, NEWS_DIM + 1)), limit=3), "vectors"),
        (lambda s: s.search(NEWS, np.ones(NEWS_DIM), limit=3), "vectors"),
        (lambda s: s.search(NEWS, np.full((1, NEWS_DIM), np.nan), limit=3), "vectors"),
        (lambda s: s.search(NEWS, np.ones((1, NEWS_DIM)), limit=0), "limit"),
        (lambda s: s.search(NEWS, np.ones((1, NEWS_DIM)), limit=3, output_fields=["nope"]), "output_fields"),
        (lambda s: s.get(NEWS, ["a"], ["nope"]), "fields"),
        (lambda s: s.get(NEWS, ["a"], "vector"), "fields"),
        (lambda s: anext(s.iterate(NEWS, batch_size=0)), "batch_size"),
        (lambda s: s.get(NEWS, "a"), "ids"),
        (lambda s: s.get(NEWS, ["a\nb"]), "ids[0]"),
        (lambda s: s.upsert(NEWS, [{"id": "a"}]), "rows"),
        (lambda s: s.upsert(NEWS, [news_row("a", np.ones(NEWS_DIM), title="t" * 9000)]), "rows"),
        (lambda s: s.upsert(NEWS, [news_row("a", np.ones(NEWS_DIM + 1))]), "rows"),
        (lambda s: s.upsert(NEWS, [news_row("a\x00", np.ones(NEWS_DIM))]), "rows[0].id"),
        (lambda s: s.upsert(NEWS, [news_row("", np.ones(NEWS_DIM))]), "rows[0].id"),
        (lambda s: s.upsert(NEWS, ["not a row"]), "rows[0]"),
    ],
)
async def test_bad_arguments_are_invalid_and_name_the_argument(store: MilvusStore, call, field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await call(store)
    assert raised.value.field == field


async def test_a_server_that_refuses_connections_is_unavailable_at_once() -> None:
    store = MilvusStore(MilvusSettings(uri=f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(DependencyUnavailable) as raised:
        await store.count(NEWS, timeout=30)
    assert raised.value.dependency == "milvus"
    assert not await store.ready()
    await store.close()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


async def test_a_server_that_never_answers_times_out_at_the_call_deadline(silent_server: int) -> None:
    store = MilvusStore(MilvusSettings(uri=f"http://127.0.0.1:{silent_server}"))
    with pytest.raises(DependencyTimeout):
        await store.count(NEWS, timeout=0.3)
    await store.close()


async def test_an_open_circuit_fails_request_path_reads_at_once_but_not_writes_or_scans(store: MilvusStore) -> None:
    clock = FakeClock()
    stalled = Circuit("milvus", stall_after_s=1.0, clock=clock)
    with pytest.raises(DependencyTimeout), stalled.watch():
        clock.now += 2.0  # a read hung for 2 s with nothing answered
        raise DependencyTimeout("milvus", "no answer within the deadline")
    assert stalled.is_open
    store.circuit = stalled
    with pytest.raises(DependencyUnavailable, match="calls stalled"):
        await store.search(NEWS, one_hot(0)[None, :], limit=3)
    with pytest.raises(DependencyUnavailable, match="calls stalled"):
        await store.get(NEWS, ["c1"])
    assert await store.upsert(NEWS, [news_row("c1", one_hot(1))]) == 1  # writes are not watched by the circuit
    assert [row["id"] async for row in store.iterate(NEWS)] == ["c1"]
    clock.now += 1.5  # a trial call is due: it is answered, and the circuit closes
    assert (await store.search(NEWS, one_hot(1)[None, :], limit=3))[0].ids == ["c1"]
    assert not stalled.is_open
