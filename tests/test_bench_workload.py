"""Request streams: seeded determinism, mix weights, demo data files and the synthetic workload."""

from __future__ import annotations

import random
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from benchmarks.workload import (
    DemoRequests,
    RequestOptions,
    RequestStream,
    SyntheticRequests,
    load_catalog,
    parse_mix,
    synthetic_ids,
)
from recstack.v1 import gateway_pb2 as pb
from training.data.build import DatasetPaths
from training.data.mind import load_mind_split, write_behaviors, write_news
from training.data.msmarco import load_collection, write_collection, write_passage_meta, write_queries
from training.data.types import Impression, NewsArticle, PassageMeta

NEWS_IDS = synthetic_ids("news", 200)
PASSAGE_IDS = synthetic_ids("passage", 50)
ALL_RPCS = {"recommend": 1.0, "search": 1.0, "answer": 1.0, "upsert": 1.0}


def serialized(stream: RequestStream, count: int) -> list[tuple[str, bytes]]:
    return [(rpc, message.SerializeToString()) for rpc, message in (next(stream) for _ in range(count))]


@pytest.fixture
def demo_dir(tmp_path: Path) -> Path:
    """A tiny data folder in the demo layout, written with the project's own writers."""
    published = datetime(2017, 1, 2, 3, 4, 5)
    news = [NewsArticle(f"N{i}", "sports" if i % 2 else "politics", "sub", f"title {i}", published=published)
            for i in range(1, 7)]  # fmt: skip
    write_news(tmp_path / "mind" / "train" / "news.tsv", news[:4])
    write_news(tmp_path / "mind" / "dev" / "news.tsv", news[2:])
    impressions = [
        Impression("1", "U1", datetime(2019, 11, 15, 8), ("N1", "N2"), ("N3", "N4"), (1, 0)),
        Impression("2", "U2", datetime(2019, 11, 15, 9), (), ("N5", "N6"), (0, 1)),
        Impression("3", "U3", datetime(2019, 11, 15, 10), ("N4",), ("N5", "N6"), (1, 0)),
    ]
    write_behaviors(tmp_path / "mind" / "dev" / "behaviors.tsv", impressions)
    msmarco = tmp_path / "msmarco"
    write_collection(msmarco / "collection.tsv", {"P1_0": "first passage", "P2_0": "second passage"})
    write_passage_meta(msmarco / "passage_meta.tsv", {"P1_0": PassageMeta("D1", "Doc one", "sports", published)})
    write_queries(msmarco / "queries.dev.tsv", {"Q1": "who won", "Q2": "what happened"})
    return tmp_path


def test_parse_mix_reads_single_names_and_weights():
    assert parse_mix("recommend") == {"recommend": 1.0}
    assert parse_mix("recommend=3, search=1") == {"recommend": 3.0, "search": 1.0}


@pytest.mark.parametrize(
    ("spec", "message"),
    [("recomend", "recomend"), ("search=x", "'x'"), ("search=0", "> 0"), ("search,search", "twice"), ("", "empty")],
)
def test_parse_mix_rejects_bad_specs_naming_the_problem(spec: str, message: str):
    with pytest.raises(ValueError, match=message):
        parse_mix(spec)


def test_same_seed_gives_the_same_sequence_and_another_seed_does_not():
    def stream(seed: int) -> RequestStream:
        return RequestStream(SyntheticRequests(NEWS_IDS, PASSAGE_IDS), ALL_RPCS, seed)

    first = serialized(stream(7), 200)
    assert first == serialized(stream(7), 200)
    assert first != serialized(stream(8), 200)


def test_priming_loads_nothing_from_the_sequence():
    factory = SyntheticRequests(NEWS_IDS, PASSAGE_IDS)
    primed = RequestStream(factory, ALL_RPCS, seed=3)
    primed.prime()
    assert serialized(primed, 50) == serialized(RequestStream(factory, ALL_RPCS, seed=3), 50)


def test_mix_weights_shape_the_sequence():
    stream = RequestStream(SyntheticRequests(NEWS_IDS), {"recommend": 3.0, "search": 1.0}, seed=0)
    counts = Counter(rpc for rpc, _ in (next(stream) for _ in range(4000)))
    assert set(counts) == {"recommend", "search"}
    assert counts["recommend"] / 4000 == pytest.approx(0.75, abs=0.03)


def test_synthetic_requests_use_the_given_ids_and_options():
    options = RequestOptions(k=7, upsert_batch=4)
    factory = SyntheticRequests(NEWS_IDS, PASSAGE_IDS, options)
    rng = random.Random(1)
    recommend = factory.make("recommend", rng)
    assert recommend.k == 7
    assert 1 <= len(recommend.history) <= 50
    assert {item.id for item in recommend.history} <= set(NEWS_IDS)
    assert factory.make("search", rng).query
    upserts = [factory.make("upsert", rng) for _ in range(20)]
    written = {item.id for u in upserts for item in (*u.news, *u.passages)}
    assert written <= set(NEWS_IDS) | set(PASSAGE_IDS)
    assert all(len(u.news) + len(u.passages) == 4 for u in upserts)
    assert any(u.news for u in upserts) and any(u.passages for u in upserts)


def test_synthetic_ids_are_distinct_and_typed():
    news = synthetic_ids("news", 1000)
    assert len(set(news)) == 1000
    assert not set(news) & set(synthetic_ids("passage", 1000))


def test_demo_requests_come_from_the_dev_files(demo_dir: Path):
    factory = DemoRequests(demo_dir, RequestOptions(k=5, max_tokens=32))
    rng = random.Random(0)
    histories = {
        (r.user_id, tuple(h.id for h in r.history)) for r in (factory.make("recommend", rng) for _ in range(50))
    }
    assert histories == {("U1", ("N1", "N2")), ("U2", ()), ("U3", ("N4",))}
    assert {factory.make("search", rng).query for _ in range(50)} == {"who won", "what happened"}
    answer = factory.make("answer", rng)
    assert answer.question in {"who won", "what happened"}
    assert answer.max_tokens == 32


def test_demo_upserts_resend_catalog_items_unchanged(demo_dir: Path):
    factory = DemoRequests(demo_dir, RequestOptions(upsert_batch=2))
    catalog = load_catalog(demo_dir)
    known = {item.SerializeToString() for item in (*catalog.news, *catalog.passages)}
    rng = random.Random(0)
    for _ in range(20):
        request = factory.make("upsert", rng)
        items = [*request.news, *request.passages]
        assert len(items) == 2
        assert all(item.SerializeToString() in known for item in items)


def test_catalog_merges_train_and_dev_news_and_passage_metadata(demo_dir: Path):
    catalog = load_catalog(demo_dir)
    assert sorted(item.id for item in catalog.news) == [f"N{i}" for i in range(1, 7)]
    first = next(item for item in catalog.news if item.id == "N1")
    assert (first.title, first.category) == ("title 1", "sports")
    assert first.published.ToDatetime() == datetime(2017, 1, 2, 3, 4, 5)
    passages = {item.id: item for item in catalog.passages}
    assert (passages["P1_0"].doc_id, passages["P1_0"].title) == ("D1", "Doc one")
    assert passages["P2_0"] == pb.PassageItem(id="P2_0", text="second passage")


def test_missing_demo_files_name_the_file(tmp_path: Path):
    factory = DemoRequests(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"behaviors\.tsv"):
        factory.make("recommend", random.Random(0))
    with pytest.raises(FileNotFoundError, match=r"news\.tsv"):
        load_catalog(tmp_path)


def test_demo_workload_reads_what_the_data_builder_writes(tiny_data: DatasetPaths):
    factory = DemoRequests(tiny_data.root)
    stream = RequestStream(factory, ALL_RPCS, seed=0)
    stream.prime()
    kinds = Counter(rpc for rpc, _ in (next(stream) for _ in range(200)))
    assert set(kinds) == set(ALL_RPCS)
    dev = load_mind_split(tiny_data.mind_dev)
    assert {(imp.user_id, imp.history) for imp in dev.impressions} == set(factory.histories)
    catalog = load_catalog(tiny_data.root)
    assert len(catalog.passages) == len(load_collection(tiny_data.collection))
    assert {item.id for item in catalog.news} == set(dev.news) | set(load_mind_split(tiny_data.mind_train).news)
