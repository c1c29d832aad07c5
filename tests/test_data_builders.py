"""The offline builders on a small subset: outputs load with the real loaders and keep their promises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.data.build import DatasetPaths, build_datasets
from training.data.mind import load_mind_split
from training.data.mind_sim import MindSimConfig
from training.data.msmarco import load_collection, load_passage_meta, load_retrieval_split
from training.data.types import MindSplit

SMALL = MindSimConfig(n_users=40, min_candidates=5, max_candidates=15)
MAX_ARTICLES = 300


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> DatasetPaths:
    return build_datasets(tmp_path_factory.mktemp("data"), seed=0, mind=SMALL, max_articles=MAX_ARTICLES)


@pytest.fixture(scope="module")
def mind_splits(built: DatasetPaths) -> tuple[MindSplit, MindSplit]:
    return load_mind_split(built.mind_train), load_mind_split(built.mind_dev)


def test_mind_splits_load_and_reference_only_known_news(mind_splits: tuple[MindSplit, MindSplit]) -> None:
    for split in mind_splits:  # load_mind_split is strict: an unknown id would have raised
        assert split.impressions
        referenced = {news_id for i in split.impressions for news_id in (*i.history, *i.candidates)}
        assert referenced <= set(split.news)
        assert all(article.published is not None for article in split.news.values())
        assert all(impression.labels is not None and 1 in impression.labels for impression in split.impressions)


def test_dev_impressions_come_after_train_impressions(mind_splits: tuple[MindSplit, MindSplit]) -> None:
    train, dev = mind_splits
    assert max(i.time for i in train.impressions) < min(i.time for i in dev.impressions)
    assert not {i.impression_id for i in train.impressions} & {i.impression_id for i in dev.impressions}


def test_candidates_were_published_before_they_were_shown(mind_splits: tuple[MindSplit, MindSplit]) -> None:
    for split in mind_splits:
        for impression in split.impressions:
            assert all(split.news[news_id].published <= impression.time for news_id in impression.candidates)


def test_a_users_history_is_the_same_pre_period_in_every_impression(
    mind_splits: tuple[MindSplit, MindSplit],
) -> None:
    train, dev = mind_splits
    log_start = min(impression.time for impression in train.impressions)
    histories: dict[str, set[tuple[str, ...]]] = {}
    for impression in [*train.impressions, *dev.impressions]:
        histories.setdefault(impression.user_id, set()).add(impression.history)
        assert all(train.news[news_id].published < log_start for news_id in impression.history)
    assert all(len(variants) == 1 for variants in histories.values())


def test_msmarco_files_load_and_are_consistent(built: DatasetPaths) -> None:
    collection = load_collection(built.collection)
    meta = load_passage_meta(built.passage_meta)
    train = load_retrieval_split(built.queries_train, built.qrels_train)
    dev = load_retrieval_split(built.queries_dev, built.qrels_dev)
    assert set(meta) == set(collection)
    assert not set(train.queries) & set(dev.queries)
    assert len(dev.queries) >= 0.05 * (len(train.queries) + len(dev.queries))
    for split in (train, dev):
        assert set(split.qrels) == set(split.queries)
        for qid, judged in split.qrels.items():
            assert set(judged) <= set(collection)
            (pid,) = judged
            assert meta[pid].title == split.queries[qid]  # the judged passage is the titled article's lead
    lengths = sorted(len(passage.split()) for passage in collection.values())
    assert 60 <= lengths[len(lengths) // 2] <= 120


def test_manifest_records_counts_and_sanity(built: DatasetPaths) -> None:
    manifest = json.loads((built.mind / "manifest.json").read_text())
    stats = manifest["stats"]
    assert stats["users"] <= SMALL.n_users
    assert stats["impressions_train"] + stats["impressions_dev"] > SMALL.n_users
    assert manifest["spec"]["mind"]["n_users"] == SMALL.n_users
    assert set(stats["generator_sanity_dev_group_auc"]) >= {"random", "popularity_train_ctr", "oracle_affinity"}


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*.tsv"))}


def test_same_seed_gives_byte_identical_files(built: DatasetPaths, tmp_path: Path) -> None:
    again = build_datasets(tmp_path, seed=0, mind=SMALL, max_articles=MAX_ARTICLES)
    assert _file_bytes(again.root) == _file_bytes(built.root)


def test_another_seed_gives_other_behaviors_and_dev_queries(built: DatasetPaths, tmp_path: Path) -> None:
    other = build_datasets(tmp_path, seed=1, mind=SMALL, max_articles=MAX_ARTICLES)
    assert (other.mind_train / "behaviors.tsv").read_bytes() != (built.mind_train / "behaviors.tsv").read_bytes()
    assert other.queries_dev.read_bytes() != built.queries_dev.read_bytes()
    assert other.collection.read_bytes() == built.collection.read_bytes()  # the text does not depend on it


def test_rebuild_only_when_the_spec_changes(tmp_path: Path) -> None:
    paths = build_datasets(tmp_path, seed=0, mind=SMALL, max_articles=100)
    behaviors, collection = paths.mind_train / "behaviors.tsv", paths.collection
    stamps = (behaviors.stat().st_mtime_ns, collection.stat().st_mtime_ns)
    build_datasets(tmp_path, seed=0, mind=SMALL, max_articles=100)
    assert (behaviors.stat().st_mtime_ns, collection.stat().st_mtime_ns) == stamps
    bigger = MindSimConfig(n_users=50, min_candidates=5, max_candidates=15)
    build_datasets(tmp_path, seed=0, mind=bigger, max_articles=100)
    assert behaviors.stat().st_mtime_ns != stamps[0]
    assert collection.stat().st_mtime_ns == stamps[1]
    assert json.loads((paths.mind / "manifest.json").read_text())["spec"]["mind"]["n_users"] == 50
    assert not list(tmp_path.glob("*/*.partial")) and not list(tmp_path.glob("*.partial"))
