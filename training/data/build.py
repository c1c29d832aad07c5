"""`build_datasets`: the one entry point that writes both offline data sets (idempotently).

Layout under `out_dir` (default `artifacts/data`):
    mind/train/{news.tsv, behaviors.tsv, news_published.tsv}
    mind/dev/{news.tsv, behaviors.tsv, news_published.tsv}
    mind/manifest.json
    msmarco/{collection.tsv, queries.train.tsv, queries.dev.tsv, qrels.train.tsv, qrels.dev.tsv,
             passage_meta.tsv, manifest.json}

Each set's manifest.json records its build spec (builder version, seed, `max_articles`, the
source zip's SHA-256 and, for MIND, every `MindSimConfig` field), a hash of that spec, and the
counts and sanity numbers of the build. A set whose manifest hash matches the requested spec is
left alone; otherwise it is rebuilt in `<name>.partial/` and swapped in whole, so an interrupted
build never leaves a half-written set behind a valid manifest.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from contract import layout
from training.data import msmarco_builder
from training.data.mind import BEHAVIORS_FILE, NEWS_FILE
from training.data.mind_builder import build_mind
from training.data.mind_sim import MindSimConfig
from training.data.news_corpus import SourceArticle, load_source_articles, locate_news_articles_zip

logger = logging.getLogger(__name__)

DEFAULT_OUT_DIR = layout.DATA
MANIFEST_FILE = "manifest.json"
# Bump when a builder's output changes for the same spec, so existing builds are redone.
BUILDER_VERSION = 1


@dataclass(frozen=True)
class DatasetPaths:
    """Where `build_datasets` put everything."""

    root: Path

    @property
    def mind(self) -> Path:
        return self.root / "mind"

    @property
    def mind_train(self) -> Path:
        """A MIND split folder: pass it to `training.data.mind.load_mind_split`."""
        return self.mind / "train"

    @property
    def mind_dev(self) -> Path:
        return self.mind / "dev"

    @property
    def msmarco(self) -> Path:
        return self.root / "msmarco"

    @property
    def collection(self) -> Path:
        return self.msmarco / msmarco_builder.COLLECTION_FILE

    @property
    def queries_train(self) -> Path:
        return self.msmarco / msmarco_builder.QUERIES_TRAIN_FILE

    @property
    def queries_dev(self) -> Path:
        return self.msmarco / msmarco_builder.QUERIES_DEV_FILE

    @property
    def qrels_train(self) -> Path:
        return self.msmarco / msmarco_builder.QRELS_TRAIN_FILE

    @property
    def qrels_dev(self) -> Path:
        return self.msmarco / msmarco_builder.QRELS_DEV_FILE

    @property
    def passage_meta(self) -> Path:
        return self.msmarco / msmarco_builder.PASSAGE_META_FILE


def build_datasets(
    out_dir: Path = DEFAULT_OUT_DIR,
    *,
    seed: int = 0,
    mind: MindSimConfig | None = None,
    max_articles: int | None = None,
) -> DatasetPaths:
    """Build (or keep, if already built with the same spec) the MIND- and MS MARCO-format sets.

    `seed` drives the simulated readers and the MS MARCO dev split; `max_articles` builds from
    that many source articles spread over time (small, fast builds for tests).
    """
    paths = DatasetPaths(Path(out_dir))
    mind = mind or MindSimConfig()
    common = {
        "builder_version": BUILDER_VERSION,
        "seed": seed,
        "max_articles": max_articles,
        "source_sha256": _sha256(locate_news_articles_zip()),
    }

    @functools.cache
    def source() -> list[SourceArticle]:
        return load_source_articles(max_articles)

    _build_once(
        paths.mind,
        {**common, "mind": asdict(mind)},
        lambda directory: build_mind(directory, source(), mind, seed),
        expected=[Path(split, name) for split in ("train", "dev") for name in (NEWS_FILE, BEHAVIORS_FILE)],
    )
    _build_once(
        paths.msmarco,
        {
            **common,
            "passage_words": [msmarco_builder.MIN_WORDS, msmarco_builder.MAX_WORDS],
            "dev_fraction": msmarco_builder.DEV_FRACTION,
        },
        lambda directory: msmarco_builder.build_msmarco(directory, source(), seed),
        expected=[Path(paths.collection.name), Path(paths.qrels_dev.name)],
    )
    return paths


def _build_once(
    directory: Path,
    spec: dict[str, Any],
    build: Callable[[Path], dict[str, Any]],
    expected: list[Path],
) -> None:
    spec_hash = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    manifest_path = directory / MANIFEST_FILE
    if _built_with(manifest_path, spec_hash) and all((directory / name).exists() for name in expected):
        logger.info("%s is up to date (spec %s)", directory, spec_hash[:12])
        return
    started = time.perf_counter()
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    stats = build(partial)
    manifest = {"spec_hash": spec_hash, "spec": spec, "stats": stats}
    (partial / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)
    logger.info("built %s in %.1f s", directory, time.perf_counter() - started)


def _built_with(manifest_path: Path, spec_hash: str) -> bool:
    try:
        return json.loads(manifest_path.read_text()).get("spec_hash") == spec_hash
    except (OSError, ValueError):
        return False


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
