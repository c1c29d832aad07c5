"""Rolling a model version out and back on Milvus Lite (aliases work there as on the server), with
deterministic stand-in encoders; the same against real Milvus and Triton is in test_rollout_stack.py."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import numpy as np
import pytest
from milvus_fixtures import NEWS_DIM, PASSAGE_DIM, copy_lite_catalog, lite_settings, make_lite_catalog, news_row

from server.config import RolloutSettings, Settings
from server.domain import NewsRecord
from server.item_cache import ItemCache
from server.milvus import MilvusStore
from server.pipeline.common import CatalogClock, RequestContext
from server.pipeline.ingest import Ingest, NewsTarget
from server.rollout import Rollout, RolloutCheckFailed
from server.versions import ModelVersion, ServingVersions, collection

ITEMS = 60


def title_vector(version: int, title: str) -> np.ndarray:
    """A different, deterministic encoder per version."""
    seed = hashlib.blake2b(f"{version}:{title}".encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(seed, "big")).normal(size=NEWS_DIM).astype(np.float32)


class VersionEncoders:
    """Stands in for Triton: `load` records the versions asked for; titles are encoded per version."""

    def __init__(self, broken: bool = False) -> None:
        self.loaded: list[int] = []
        self.broken = broken  # a bad export: every vector zero

    def load(self, versions: list[int]) -> None:
        self.loaded = list(versions)

    def encode_titles(self, version: int, titles: list[str]) -> np.ndarray:
        vectors = np.stack([title_vector(version, title) for title in titles])
        return np.zeros_like(vectors) if self.broken else vectors


class GatewayEncoders:
    """The gateway side's `Encoders` port for one version, encoding like VersionEncoders."""

    def __init__(self, version: int) -> None:
        self.version = version

    async def encode_texts(self, text_field: str, texts: list[str], timeout_s: float | None = None) -> np.ndarray:
        return np.stack([title_vector(self.version, text) for text in texts])

    async def encode_users(self, history: np.ndarray, mask: np.ndarray, timeout_s: float | None = None) -> np.ndarray:
        raise NotImplementedError


@pytest.fixture(scope="module")
def lite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lite_catalog(tmp_path_factory.mktemp("template") / "catalog.db")


@pytest.fixture
def settings(lite_template: Path, tmp_path: Path) -> Settings:
    """A Lite catalog whose unversioned news collection holds version 1's vectors of ITEMS items."""
    path = copy_lite_catalog(lite_template, tmp_path / "catalog.db")
    settings = Settings(milvus=lite_settings(path).model_dump(), rollout=RolloutSettings(refresh_s=0.05))

    async def fill() -> None:
        async with MilvusStore(settings.milvus) as store:
            await store.ensure_collections(NEWS_DIM, PASSAGE_DIM)
            rows = [news_row(f"N{i}", title_vector(1, f"title of N{i}")) for i in range(ITEMS)]
            await store.upsert("news", rows)

    asyncio.run(fill())
    return settings


def test_a_rollout_serves_the_new_version_and_a_rollback_the_old_one(settings: Settings) -> None:
    encoders = VersionEncoders()
    rollout = Rollout(settings, encoders, settle_s=0)
    try:
        check = rollout.roll_out(2)
        assert check.passed and check.rows == ITEMS and check.recall >= 0.9
        assert encoders.loaded == [1, 2]  # the unversioned catalog is version 1's
        serving = rollout.serving()
        assert serving.control == ModelVersion("news_v2", "2")
        assert serving.written == (ModelVersion("news_v2", "2"), ModelVersion("news", "1"))
        row = rollout.client.get("news_v2", ids=["N7"], output_fields=["vector", "title"])[0]
        np.testing.assert_allclose(row["vector"], title_vector(2, row["title"]), rtol=1e-6)

        assert rollout.roll_back().control == ModelVersion("news", "1")
        assert rollout.roll_back().control == ModelVersion("news_v2", "2")  # and forward again
    finally:
        rollout.close()


def test_a_rollout_that_fails_its_check_does_not_switch(settings: Settings) -> None:
    rollout = Rollout(settings, VersionEncoders(broken=True), settle_s=0)
    try:
        with pytest.raises(RolloutCheckFailed, match="version 2 not switched"):
            rollout.roll_out(2)
        assert rollout.serving().control == ModelVersion("news", "1")  # still the catalog it was
        assert set(rollout.aliases()) == {"news_control"}  # the staging alias is gone: gateways stop writing to it
    finally:
        rollout.close()


@pytest.mark.anyio
async def test_upserts_during_a_rollout_reach_both_versions(settings: Settings) -> None:
    store = MilvusStore(settings.milvus)
    await store.ensure_collections(NEWS_DIM, PASSAGE_DIM)
    versions = ServingVersions(store, settings.milvus, settings.rollout)
    caches: dict[ModelVersion, ItemCache] = {}

    def targets() -> list[NewsTarget]:
        return [
            NewsTarget(
                v.collection, GatewayEncoders(int(v.triton_version or 1)), caches.setdefault(v, ItemCache(100, 60))
            )
            for v in versions.current.written
        ]

    ingest = Ingest(GatewayEncoders(1), store, ItemCache(100, 60), CatalogClock(), "news", "passages", 8, targets)
    rollout = Rollout(settings, VersionEncoders(), settle_s=1.0)
    try:
        rolling = asyncio.create_task(asyncio.to_thread(rollout.roll_out, 2))
        while len((await versions.refresh()).written) < 2:  # the gateway sees the staging alias
            await asyncio.sleep(0.05)
        fresh = NewsRecord("FRESH", "breaking", "news", "", "", published=0, popularity=0.0)
        assert await ingest.upsert_news([fresh], RequestContext.with_budget(10)) == 1
        check = await rolling
        assert check.rows == ITEMS + 1 == check.expected_rows
        for version in (1, 2):
            name = collection("news", 2) if version == 2 else "news"
            (row,) = (await store.get(name, ["FRESH"], ["vector"])).values()
            np.testing.assert_allclose(row["vector"], title_vector(version, "breaking"), rtol=1e-6)
    finally:
        rollout.close()
        await store.close()
