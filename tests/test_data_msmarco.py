"""MS MARCO loaders and writers: real formats, error messages, triple detection, round trips."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from training.data.errors import DataFormatError
from training.data.msmarco import (
    IdTriple,
    TextTriple,
    iter_collection,
    load_collection,
    load_passage_meta,
    load_qrels,
    load_queries,
    load_retrieval_split,
    load_triples,
    write_collection,
    write_passage_meta,
    write_qrels,
    write_queries,
    write_triples,
)
from training.data.types import PassageMeta


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_loads_msmarco_shaped_files(tmp_path: Path) -> None:
    collection = write_lines(tmp_path / "collection.tsv", ["0\tThe presence of communication.", "1\tManhattan."])
    queries = write_lines(tmp_path / "queries.tsv", ["1185869\t)what was the immediate impact"])
    # MS MARCO's qrels.train.tsv is tab-separated; TREC's classic form uses spaces.
    qrels = write_lines(tmp_path / "qrels.tsv", ["1185869\t0\t0\t1", "1185869 0 16 0"])
    assert load_collection(collection) == {"0": "The presence of communication.", "1": "Manhattan."}
    assert load_queries(queries) == {"1185869": ")what was the immediate impact"}
    assert load_qrels(qrels) == {"1185869": {"0": 1, "16": 0}}
    split = load_retrieval_split(queries, qrels)
    assert split.qrels == {"1185869": {"0": 1, "16": 0}}


def test_collection_streams_lazily(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "collection.tsv", ["1\tok", "broken line without tab"])
    stream = iter_collection(path)
    assert next(stream) == ("1", "ok")  # the bad second line is not read yet
    with pytest.raises(DataFormatError, match=r"collection\.tsv:2:"):
        next(stream)


@pytest.mark.parametrize(
    ("loader", "lines", "bad_line", "problem"),
    [
        (load_collection, ["1\ta", "2\tb\tc"], 2, "expected 2 tab-separated columns (pid, passage), found 3"),
        (load_collection, ["1\ta", "1\tb"], 2, "duplicate pid '1'"),
        (load_queries, ["q1\twhat", "\twho"], 2, "qid '' is empty"),
        (load_queries, ["q1\twhat", "q1\twho"], 2, "duplicate qid 'q1'"),
        (load_qrels, ["q1 0 p1 1", "q1 0 p2"], 2, "expected 4 whitespace-separated columns"),
        (load_qrels, ["q1 0 p1 relevant"], 1, "grade 'relevant' is not an integer"),
        (load_qrels, ["q1 0 p1 1", "q1\t0\tp1\t0"], 2, "duplicate judgement for qid 'q1', pid 'p1'"),
        (load_passage_meta, ["p1\td1\tTitle\tnews\tlast week"], 1, "not an ISO-8601 datetime"),
        (load_passage_meta, ["p1\td1\tTitle\tnews\t", "p1\td1\tTitle\tnews\t"], 2, "duplicate pid 'p1'"),
        (load_passage_meta, ["p1\td1\tTitle\tnews"], 1, "expected 5 tab-separated columns"),
    ],
)
def test_malformed_lines_name_file_line_and_problem(
    tmp_path: Path, loader, lines: list[str], bad_line: int, problem: str
) -> None:
    path = write_lines(tmp_path / "input.tsv", lines)
    with pytest.raises(DataFormatError) as caught:
        loader(path)
    assert str(caught.value).startswith(f"{path}:{bad_line}: ")
    assert problem in str(caught.value)


def test_qrels_of_unknown_queries_raise_or_are_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    queries = write_lines(tmp_path / "queries.tsv", ["q1\twhat"])
    qrels = write_lines(tmp_path / "qrels.tsv", ["q1 0 p1 1", "q2 0 p1 1"])
    with pytest.raises(DataFormatError, match=r"qids not in queries\.tsv: \['q2'\]"):
        load_retrieval_split(queries, qrels)
    with caplog.at_level(logging.WARNING):
        split = load_retrieval_split(queries, qrels, strict=False)
    assert split.qrels == {"q1": {"p1": 1}}
    assert "skipped judgements of 1 unknown qids" in caplog.text


def test_triples_detect_text_and_id_forms(tmp_path: Path) -> None:
    text = write_lines(tmp_path / "triples.train.small.tsv", ["is a tomato a fruit\tYes it is.\tPasta is food."])
    ids = write_lines(tmp_path / "qidpidtriples.train.full.tsv", ["400296\t1540783\t3518497"])
    assert list(load_triples(text)) == [TextTriple("is a tomato a fruit", "Yes it is.", "Pasta is food.")]
    assert list(load_triples(ids)) == [IdTriple("400296", "1540783", "3518497")]


def test_id_triples_file_with_a_text_line_is_an_error(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "triples.tsv", ["1\t2\t3", "what is\ta passage\tanother passage"])
    with pytest.raises(DataFormatError, match=r"triples\.tsv:2: qid 'what is' is empty or contains whitespace"):
        list(load_triples(path))


def test_writers_refuse_what_loaders_would_reject(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="qid"):
        write_qrels(tmp_path / "qrels.tsv", {"q 1": {"p1": 1}})
    with pytest.raises(ValueError, match="line break"):
        write_collection(tmp_path / "collection.tsv", {"p1": "two\nlines"})
    with pytest.raises(ValueError, match="not both"):
        write_triples(tmp_path / "triples.tsv", [IdTriple("1", "2", "3"), TextTriple("a b", "c d", "e f")])


# --- round trips -------------------------------------------------------------------------------

ids = st.from_regex(r"[A-Za-z0-9_]{1,10}", fullmatch=True)
text = st.text(st.characters(blacklist_characters="\t\n\r", blacklist_categories=("Cs",)), max_size=40)
fixture_ok = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@fixture_ok
@given(passages=st.dictionaries(ids, text, max_size=10), queries=st.dictionaries(ids, text, max_size=10))
def test_collection_and_queries_round_trip(tmp_path: Path, passages: dict, queries: dict) -> None:
    write_collection(tmp_path / "collection.tsv", passages)
    write_queries(tmp_path / "queries.tsv", queries)
    assert load_collection(tmp_path / "collection.tsv") == passages
    assert load_queries(tmp_path / "queries.tsv") == queries


@fixture_ok
@given(qrels=st.dictionaries(ids, st.dictionaries(ids, st.integers(-1, 3), min_size=1, max_size=4), max_size=6))
def test_qrels_round_trip(tmp_path: Path, qrels: dict) -> None:
    write_qrels(tmp_path / "qrels.tsv", qrels)
    assert load_qrels(tmp_path / "qrels.tsv") == qrels


@fixture_ok
@given(
    meta=st.dictionaries(
        ids,
        st.builds(
            PassageMeta,
            doc_id=ids,
            title=text,
            category=text,
            published=st.none() | st.datetimes(min_value=datetime(1990, 1, 1)),
        ),
        max_size=8,
    )
)
def test_passage_meta_round_trip(tmp_path: Path, meta: dict) -> None:
    write_passage_meta(tmp_path / "passage_meta.tsv", meta)
    assert load_passage_meta(tmp_path / "passage_meta.tsv") == meta


@fixture_ok
@given(
    triples=st.lists(st.builds(IdTriple, ids, ids, ids), min_size=1, max_size=5)
    | st.lists(
        st.builds(TextTriple, *(st.from_regex(r"[a-z]{1,5} [a-z ]{0,20}", fullmatch=True) for _ in range(3))),
        min_size=1,
        max_size=5,
    )
)
def test_triples_round_trip(tmp_path: Path, triples: list) -> None:
    write_triples(tmp_path / "triples.tsv", triples)
    assert list(load_triples(tmp_path / "triples.tsv")) == triples
