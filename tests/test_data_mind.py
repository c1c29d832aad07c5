"""MIND loaders and writers: the real format, its error messages, and writer -> loader round trips."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from training.data.errors import DataFormatError
from training.data.mind import (
    format_mind_time,
    infer_published,
    load_behaviors,
    load_mind_split,
    load_news,
    write_behaviors,
    write_news,
)
from training.data.types import Impression, NewsArticle

NEWS_ROWS = [
    "N1\tsports\tfootball_nfl\tBills win\tA short abstract.\thttps://x/1\t[]\t[]",
    "N2\tnews\tnewsus\tStorm hits coast\t\thttps://x/2\t\t",
]
BEHAVIOR_ROWS = [
    "1\tU1\t11/15/2019 8:55:22 AM\tN1 N2\tN1-1 N2-0",
    "2\tU2\t11/15/2019 12:05:01 PM\t\tN2-1",
]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def split_dir(tmp_path: Path) -> Path:
    write_lines(tmp_path / "news.tsv", NEWS_ROWS)
    write_lines(tmp_path / "behaviors.tsv", BEHAVIOR_ROWS)
    return tmp_path


def test_loads_real_format_with_empty_abstract_entities_and_history(split_dir: Path) -> None:
    split = load_mind_split(split_dir)
    assert split.news["N2"].abstract == ""
    assert split.news["N2"].title_entities == ""
    assert split.news["N1"].category == "sports"
    assert split.news["N1"].published is None
    first, second = split.impressions
    assert first.time == datetime(2019, 11, 15, 8, 55, 22)
    assert second.time == datetime(2019, 11, 15, 12, 5, 1)
    assert first.history == ("N1", "N2")
    assert first.candidates == ("N1", "N2") and first.labels == (1, 0)
    assert second.history == ()


def test_unlabeled_test_split_impressions_have_no_labels(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "behaviors.tsv", ["7\tU9\t11/16/2019 1:00:00 AM\tN1\tN1 N2"])
    (impression,) = load_behaviors(path)
    assert impression.candidates == ("N1", "N2")
    assert impression.labels is None


def test_published_sidecar_fills_published(split_dir: Path) -> None:
    write_lines(split_dir / "news_published.tsv", ["N2\t2019-11-14T06:30:00"])
    news = load_news(split_dir / "news.tsv")
    assert news["N2"].published == datetime(2019, 11, 14, 6, 30)
    assert news["N1"].published is None


@pytest.mark.parametrize(
    ("file_name", "lines", "bad_line", "problem"),
    [
        ("news.tsv", [NEWS_ROWS[0], "N3\tnews\tnewsus\tonly four"], 2, "expected 8 tab-separated columns"),
        ("news.tsv", [NEWS_ROWS[0], NEWS_ROWS[1], NEWS_ROWS[0]], 3, "duplicate news_id 'N1'"),
        ("news.tsv", ["N-1\tnews\tnewsus\tt\t\t\t\t"], 1, "contains '-'"),
        ("behaviors.tsv", [BEHAVIOR_ROWS[0], "2\tU2\t11/15/2019\t\tN1-1"], 2, "is not like"),
        ("behaviors.tsv", ["1\tU1\t2019-11-15 08:00:00\t\tN1-1"], 1, "is not like"),
        ("behaviors.tsv", ["1\tU1\t11/15/2019 8:55:22 AM\t\tN1-2 N2-0"], 1, "label must be 0 or 1"),
        ("behaviors.tsv", ["1\tU1\t11/15/2019 8:55:22 AM\t\tN1-x"], 1, "label must be 0 or 1"),
        ("behaviors.tsv", ["1\tU1\t11/15/2019 8:55:22 AM\t\tN1-1 N2"], 1, "mix labeled"),
        ("behaviors.tsv", ["1\tU1\t11/15/2019 8:55:22 AM\tN1\t"], 1, "impressions column is empty"),
        ("behaviors.tsv", [BEHAVIOR_ROWS[0], BEHAVIOR_ROWS[0]], 2, "duplicate impression_id '1'"),
        ("behaviors.tsv", [BEHAVIOR_ROWS[0], "2\tU2\t11/15/2019 8:55:22 AM\tN1"], 2, "expected 5 tab-separated"),
        ("behaviors.tsv", ["1\t\t11/15/2019 8:55:22 AM\t\tN1-1"], 1, "user_id '' is empty"),
        ("news_published.tsv", ["N1\tyesterday"], 1, "not an ISO-8601 datetime"),
        ("news_published.tsv", ["N7\t2019-11-14T06:30:00"], 1, "not in news.tsv"),
        ("news_published.tsv", ["N1\t2019-11-14", "N1\t2019-11-15"], 2, "duplicate news_id 'N1'"),
    ],
)
def test_malformed_lines_name_file_line_and_problem(
    split_dir: Path, file_name: str, lines: list[str], bad_line: int, problem: str
) -> None:
    write_lines(split_dir / file_name, lines)
    with pytest.raises(DataFormatError) as caught:
        load_mind_split(split_dir)
    message = str(caught.value)
    assert message.startswith(f"{split_dir / file_name}:{bad_line}: ")
    assert problem in message
    assert caught.value.line == bad_line


def test_invalid_utf8_is_reported_with_its_line(split_dir: Path) -> None:
    (split_dir / "news.tsv").write_bytes(NEWS_ROWS[0].encode() + b"\nN2\tnews\tx\t\xff\t\t\t\t\n")
    with pytest.raises(DataFormatError, match=r"news\.tsv:2: not valid UTF-8"):
        load_news(split_dir / "news.tsv")


def test_unknown_news_ids_raise_when_strict_and_are_counted_when_not(
    split_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_lines(
        split_dir / "behaviors.tsv",
        [
            BEHAVIOR_ROWS[0],
            "2\tU2\t11/15/2019 9:00:00 AM\tN1 N99\tN2-1",  # unknown history id
            "3\tU3\t11/15/2019 9:00:00 AM\tN1\tN98-1 N2-0",  # unknown candidate
        ],
    )
    with pytest.raises(DataFormatError, match=r"behaviors\.tsv:2: news ids not in news\.tsv: \['N99'\]"):
        load_mind_split(split_dir)
    with caplog.at_level(logging.WARNING):
        split = load_mind_split(split_dir, strict=False)
    assert [impression.impression_id for impression in split.impressions] == ["1", "2"]
    assert split.impressions[1].history == ("N1",)
    assert "skipped 1 impressions" in caplog.text and "dropped 1 unknown history ids" in caplog.text


def test_infer_published_takes_first_impression_showing_the_item(split_dir: Path) -> None:
    write_lines(
        split_dir / "behaviors.tsv",
        ["1	U1	11/15/2019 12:00:00 PM	N3	N1-1 N2-0", "2	U2	11/15/2019 9:00:00 AM		N2-1"],
    )
    write_lines(split_dir / "news.tsv", [*NEWS_ROWS, "N3	news	newsus	Old story				"])
    write_lines(split_dir / "news_published.tsv", ["N1	2019-11-01T00:00:00"])
    split = load_mind_split(split_dir)
    news = infer_published(split.news, split.impressions)
    assert news["N1"].published == datetime(2019, 11, 1)  # already known: kept
    assert news["N2"].published == datetime(2019, 11, 15, 9)  # earliest of its two impressions
    assert news["N3"].published is None  # only ever in a history


def test_mind_time_format_is_unpadded_like_mind() -> None:
    assert format_mind_time(datetime(2019, 11, 9, 0, 5, 7)) == "11/9/2019 12:05:07 AM"
    assert format_mind_time(datetime(2019, 1, 15, 13, 0, 0)) == "1/15/2019 1:00:00 PM"
    with pytest.raises(ValueError, match="whole seconds"):
        format_mind_time(datetime(2019, 1, 15, 13, 0, 0, 500))


@pytest.mark.parametrize(
    "impression",
    [
        Impression("1", "U 1", datetime(2019, 1, 1), (), ("N1",), (1,)),
        Impression("1", "U1", datetime(2019, 1, 1), ("N-2",), ("N1",), (1,)),
        Impression("1", "U1", datetime(2019, 1, 1), (), (), ()),
        Impression("1", "U1", datetime(2019, 1, 1), (), ("N1", "N2"), (1,)),
    ],
)
def test_writer_refuses_impressions_the_format_cannot_hold(tmp_path: Path, impression: Impression) -> None:
    with pytest.raises(ValueError):
        write_behaviors(tmp_path / "behaviors.tsv", [impression])


def test_writer_refuses_tabs_in_text(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="title contains a tab"):
        write_news(tmp_path / "news.tsv", [NewsArticle("N1", "news", "us", "a\tb")])


# --- round trips -------------------------------------------------------------------------------

text = st.text(st.characters(blacklist_characters="\t\n\r", blacklist_categories=("Cs",)), max_size=30)
news_ids = st.from_regex(r"N[0-9]{1,5}", fullmatch=True)
token = st.from_regex(r"[A-Za-z0-9_]{1,8}", fullmatch=True)
times = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1)).map(
    lambda time: time.replace(microsecond=0)
)


@st.composite
def news_catalogs(draw: st.DrawFn) -> list[NewsArticle]:
    ids = draw(st.lists(news_ids, min_size=1, max_size=8, unique=True))
    return [
        NewsArticle(
            news_id,
            *(draw(text) for _ in range(7)),
            published=draw(st.none() | st.datetimes(min_value=datetime(1990, 1, 1))),
        )
        for news_id in ids
    ]


@st.composite
def impression_logs(draw: st.DrawFn) -> list[Impression]:
    labeled = draw(st.booleans())
    impressions = []
    for number in range(draw(st.integers(0, 6))):
        candidates = draw(st.lists(news_ids, min_size=1, max_size=6))
        impressions.append(
            Impression(
                impression_id=str(number),
                user_id=draw(token),
                time=draw(times),
                history=tuple(draw(st.lists(news_ids, max_size=5))),
                candidates=tuple(candidates),
                labels=tuple(draw(st.integers(0, 1)) for _ in candidates) if labeled else None,
            )
        )
    return impressions


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(catalog=news_catalogs())
def test_news_round_trip(tmp_path: Path, catalog: list[NewsArticle]) -> None:
    path = tmp_path / "news.tsv"
    (tmp_path / "news_published.tsv").unlink(missing_ok=True)
    write_news(path, catalog)
    assert list(load_news(path).values()) == catalog


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(impressions=impression_logs())
def test_behaviors_round_trip_is_byte_exact(tmp_path: Path, impressions: list[Impression]) -> None:
    path = tmp_path / "behaviors.tsv"
    write_behaviors(path, impressions)
    loaded = load_behaviors(path)
    assert loaded == impressions
    first_bytes = path.read_bytes()
    write_behaviors(path, loaded)
    assert path.read_bytes() == first_bytes
