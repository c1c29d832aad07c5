"""Filters: validation naming the field, and user strings that can neither break nor widen the expression
(property test against Milvus Lite's real expression parser)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from milvus_fixtures import NEWS_DIM, PASSAGE_DIM, lite_settings, news_row

from server.domain import Filters
from server.errors import InvalidArgument
from server.milvus import MilvusStore
from server.milvus.expressions import filter_expression

NEWS = "news"
# Printable text of any script, quotes and backslashes included; control characters are rejected (below).
CATEGORY = st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=12)
HOSTILE = ['"', "\\", '\\"', "a\\", '"] or category != "', "' or 1 == 1 or '", "é ü 中文 🙂", ""]


@dataclass
class LiteStore:
    runner: asyncio.Runner
    store: MilvusStore


@pytest.fixture(scope="module")
def lite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiteStore]:
    """One store on one event loop for all examples (creating collections per example would take ~1 s)."""
    with asyncio.Runner() as runner:
        store = MilvusStore(lite_settings(Path(tmp_path_factory.mktemp("filters")) / "catalog.db"))
        runner.run(store.ensure_collections(NEWS_DIM, PASSAGE_DIM))
        yield LiteStore(runner, store)
        runner.run(store.close())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(categories=st.lists(CATEGORY | st.sampled_from(HOSTILE), min_size=1, max_size=4))
@example(categories=['"] or category != "', "sport"])
@example(categories=["a\\", "b"])
def test_a_category_filter_matches_exactly_the_rows_of_that_category(lite: LiteStore, categories: list[str]) -> None:
    rows = [news_row(f"row{i}", np.ones(NEWS_DIM), category=category) for i, category in enumerate(categories)]
    wanted = categories[0]

    async def matching() -> set[str]:
        await lite.store.upsert(NEWS, rows)
        try:
            hits = await lite.store.search(NEWS, np.ones((1, NEWS_DIM)), limit=10, filters=Filters([wanted]))
            return {hit.id for hit in hits[0]}
        finally:
            await lite.store.delete(NEWS, [row["id"] for row in rows])

    assert lite.runner.run(matching()) == {row["id"] for row in rows if row["category"] == wanted}


@pytest.mark.parametrize(
    ("filters", "field"),
    [
        (Filters(categories="sport"), "filters.categories"),
        (Filters(categories=[3]), "filters.categories[0]"),
        (Filters(categories=["ok", "new\nline"]), "filters.categories[1]"),
        (Filters(categories=["nul\x00"]), "filters.categories[0]"),
        (Filters(published_after=-1), "filters.published_after"),
        (Filters(published_after=1.5), "filters.published_after"),
        (Filters(published_after=True), "filters.published_after"),
        (Filters(published_after=2**63), "filters.published_after"),
    ],
)
def test_invalid_filter_values_name_the_field(filters: Filters, field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        filter_expression(filters)
    assert raised.value.field == field
