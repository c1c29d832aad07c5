"""Model versions without servers: stable A/B bucketing, alias resolution, the rollout settings."""

from __future__ import annotations

import subprocess
import sys

import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

from server.config import MilvusSettings, RolloutSettings, Settings
from server.domain import Filters, RecommendQuery
from server.pipeline.common import RequestContext
from server.pipeline.recommend import Recommendation
from server.versions import (
    CONTROL,
    PREVIOUS,
    STAGING,
    ModelVersion,
    ServingVersions,
    VersionRouter,
    alias,
    bucket,
    collection,
    resolve,
)

USERS = [f"U{i}" for i in range(20_000)]


def test_a_user_lands_in_the_same_bucket_in_another_process() -> None:
    here = [bucket(user) for user in USERS[:50]]
    code = "import sys; from server.versions import bucket; print([bucket(f'U{i}') for i in range(50)])"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == str(here)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 1.0])
def test_the_candidate_gets_its_fraction_of_users(fraction: float) -> None:
    versions = ServingVersions(None, MilvusSettings(), RolloutSettings(candidate=2, fraction=fraction))  # type: ignore[arg-type]
    served = [versions.for_user(user).triton_version for user in USERS]
    assert served.count("2") / len(USERS) == pytest.approx(fraction, abs=0.01)
    assert versions.for_user("").triton_version == ""  # no user id: the control


def test_without_aliases_the_unversioned_catalog_serves_with_tritons_newest() -> None:
    serving = resolve({}, "news", RolloutSettings())
    assert serving.control == ModelVersion("news", "") and serving.written == (serving.control,)
    assert serving.control.label == "latest"


def test_every_aliased_version_and_the_candidate_receive_writes() -> None:
    aliases = {
        alias("news", CONTROL): collection("news", 3),
        alias("news", PREVIOUS): "news",
        alias("news", STAGING): collection("news", 4),
    }
    serving = resolve(aliases, "news", RolloutSettings(candidate=3, fraction=0.5, base_version=1))
    assert serving.control == ModelVersion("news_v3", "3")
    assert serving.candidate == ModelVersion("news_v3", "3")
    assert serving.written == (ModelVersion("news_v3", "3"), ModelVersion("news", "1"), ModelVersion("news_v4", "4"))


def test_rollout_settings_reject_unknown_keys_and_fractions_outside_0_1() -> None:
    with pytest.raises(ValidationError, match="fraction"):
        Settings(rollout={"candidate": 2, "fraction": 1.5})
    with pytest.raises(ValidationError, match="canditate"):
        Settings(rollout={"canditate": 2})


@pytest.mark.anyio
async def test_the_router_answers_with_the_users_version_and_counts_requests_per_version() -> None:
    versions = ServingVersions(None, MilvusSettings(), RolloutSettings(candidate=7, fraction=0.5))  # type: ignore[arg-type]
    built: list[ModelVersion] = []

    def build(version: ModelVersion):
        built.append(version)

        async def pipeline(query: RecommendQuery, ctx: RequestContext) -> Recommendation:
            return Recommendation([], cold_start=True, history_used=0)

        return pipeline

    router = VersionRouter(versions, build)
    users = {"": "", **{user: versions.for_user(user).triton_version for user in USERS[:40]}}
    before = {label: _requests(label) for label in ("latest", "7")}
    for user, version in users.items():
        query = RecommendQuery(user, (), 5, Filters(), exclude_seen=True, diversity=0.0)
        assert (await router(query, RequestContext.with_budget(1))).model_version == version
    assert sorted(v.label for v in built) == ["7", "latest"]  # one pipeline per version
    served = list(users.values())
    assert _requests("7") - before["7"] == served.count("7") > 0
    assert _requests("latest") - before["latest"] == served.count("") > 0


def _requests(version: str) -> float:
    return (
        REGISTRY.get_sample_value("recstack_recommend_version_seconds_count", {"version": version, "outcome": "ok"})
        or 0.0
    )
