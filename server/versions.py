"""Model versions: which NRMS encoders and which news vectors serve a request, and where writes go.

A version V is one unit: the NRMS news and user encoders at Triton model version V plus the news vectors
V's news encoder produced, kept in the collection `<news>_v<V>` (`<news>` = `milvus.news_collection`).
`server.rollout` builds a version and moves these Milvus aliases; the gateway reads them every
`rollout.refresh_s` (`ServingVersions.run`):

  <news>_control    the version every user is served (absent: the unversioned `<news>` collection with
                    Triton's newest encoders, the behaviour before versions existed)
  <news>_previous   what a rollback returns to
  <news>_staging    a version a rollout is building

The gateway resolves an alias to its collection and reads that collection by name, so each request uses
one consistent pair (collection, Triton version) even while an alias moves; reading through the alias
itself could pair the new vectors with the old user encoder for one request. Every aliased collection and
the A/B candidate's receive every news write, each encoded by its own version, so neither a rollback nor
a finished rollout loses an upsert. A/B: with `rollout.candidate` set, users whose stable hash of
`user_id` falls below `rollout.fraction` get the candidate; requests without a user_id get the control.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import structlog
from numpy.typing import NDArray

from server.config import MilvusSettings, RolloutSettings
from server.domain import RecommendQuery
from server.milvus import MilvusStore
from server.observability import VERSION_SECONDS
from server.pipeline.common import RequestContext
from server.pipeline.recommend import Recommendation, Recommender
from server.triton import TritonEncoders

log = structlog.get_logger("recstack.versions")

CONTROL, PREVIOUS, STAGING = "control", "previous", "staging"
SLOTS = (CONTROL, PREVIOUS, STAGING)
UNVERSIONED = ""  # Triton's newest loaded version
UNVERSIONED_LABEL = "latest"  # the name of UNVERSIONED in metrics


def alias(base: str, slot: str) -> str:
    """The Milvus alias of serving slot `slot` for the news collection `base`."""
    return f"{base}_{slot}"


def collection(base: str, version: int) -> str:
    """The collection holding version `version`'s news vectors."""
    return f"{base}_v{version}"


def bucket(user_id: str) -> float:
    """A user's place in [0, 1): a stable hash (the same in every process and on every machine)."""
    digest = hashlib.blake2b(user_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class ModelVersion:
    """Where a version's news vectors are and which Triton version of the NRMS encoders made them."""

    collection: str
    triton_version: str  # UNVERSIONED: whatever Triton serves as newest

    @property
    def label(self) -> str:
        """The version's name in responses and metrics."""
        return self.triton_version or UNVERSIONED_LABEL


@dataclass(frozen=True)
class Serving:
    """One resolution of the aliases: who is served, and which versions receive writes (control first)."""

    control: ModelVersion
    candidate: ModelVersion | None
    written: tuple[ModelVersion, ...]


def resolve(aliases: dict[str, str], base: str, rollout: RolloutSettings) -> Serving:
    """The serving state of news collection `base` for `aliases` (alias -> collection)."""
    slots = {
        slot: version_of(aliases[alias(base, slot)], base, rollout) for slot in SLOTS if alias(base, slot) in aliases
    }
    control = slots.get(CONTROL, ModelVersion(base, UNVERSIONED))
    candidate = None
    if rollout.candidate is not None:
        candidate = ModelVersion(collection(base, rollout.candidate), str(rollout.candidate))
    written = [control, *(slots[s] for s in (PREVIOUS, STAGING) if s in slots), *([candidate] if candidate else [])]
    return Serving(control, candidate, tuple(dict.fromkeys(written)))


def version_of(name: str, base: str, rollout: RolloutSettings) -> ModelVersion:
    """The version stored in collection `name` (the unversioned `base` holds `rollout.base_version`'s)."""
    return ModelVersion(name, _version_number(name, base) or str(rollout.base_version))


def is_news(name: str, base: str) -> bool:
    """Whether collection `name` is `base` or one of its versions."""
    return name == base or _version_number(name, base) is not None


def _version_number(name: str, base: str) -> str | None:
    """V when `name` is `collection(base, V)`."""
    match = re.fullmatch(rf"{re.escape(base)}_v([1-9][0-9]*)", name)
    return match.group(1) if match else None


class ServingVersions:
    """The current `Serving`, re-read from Milvus's aliases every `rollout.refresh_s`."""

    def __init__(self, store: MilvusStore, milvus: MilvusSettings, rollout: RolloutSettings) -> None:
        self.store, self.base, self.rollout = store, milvus.news_collection, rollout
        self.current = resolve({}, self.base, rollout)

    def for_user(self, user_id: str) -> ModelVersion:
        """The version serving `user_id` ("" = no user id: the control)."""
        serving = self.current
        if serving.candidate is not None and user_id and bucket(user_id) < self.rollout.fraction:
            return serving.candidate
        return serving.control

    async def refresh(self) -> Serving:
        """Re-read the aliases of the news collections; returns the new state."""
        news = [name for name in await self.store.collection_names() if is_news(name, self.base)]
        resolved = resolve(await self.store.aliases(news), self.base, self.rollout)
        if resolved != self.current:
            log.info("serving_versions", control=resolved.control.label, written=[v.label for v in resolved.written])
        self.current = resolved
        return resolved

    async def run(self) -> None:
        """Refresh forever; a failed refresh keeps the last state (Milvus outages are reported by health)."""
        while True:
            await asyncio.sleep(self.rollout.refresh_s)
            try:
                await self.refresh()
            except Exception as error:  # keep serving what was resolved last
                log.warning("serving_versions_refresh_failed", error=str(error))


class VersionedEncoders:
    """The `Encoders` port over one Triton version of the encoders."""

    def __init__(self, encoders: TritonEncoders, model_version: str) -> None:
        self.encoders, self.model_version = encoders, model_version

    async def encode_texts(
        self, text_field: str, texts: list[str], timeout_s: float | None = None
    ) -> NDArray[np.float32]:
        return await self.encoders.encode_texts(text_field, texts, timeout_s, self.model_version)

    async def encode_users(
        self, history: NDArray[np.float32], mask: NDArray[np.int64], timeout_s: float | None = None
    ) -> NDArray[np.float32]:
        return await self.encoders.encode_users(history, mask, timeout_s, self.model_version)


class VersionRouter:
    """Recommend by the version serving the request's user: one pipeline per version, built on first use."""

    def __init__(self, versions: ServingVersions, build: Callable[[ModelVersion], Recommender]) -> None:
        self.versions, self.build = versions, build
        self._pipelines: dict[ModelVersion, Recommender] = {}

    def pipeline(self, version: ModelVersion) -> Recommender:
        if version not in self._pipelines:
            self._pipelines[version] = self.build(version)
        return self._pipelines[version]

    async def __call__(self, query: RecommendQuery, ctx: RequestContext) -> Recommendation:
        version = self.versions.for_user(query.user_id)
        started, outcome = time.perf_counter(), "error"
        try:
            result = await self.pipeline(version)(query, ctx)
            outcome = "ok"
        finally:
            VERSION_SECONDS.labels(version.label, outcome).observe(time.perf_counter() - started)
        return replace(result, model_version=version.triton_version)
