"""Deterministic request streams for the load generator, and the demo catalog the naive server loads.

A `RequestStream` yields `(rpc, request message)` pairs drawn from a seeded `random.Random`: the same
seed, mix and data give the same sequence, whatever the concurrency (workers take the next request
in turn). Requests come from a `RequestFactory`:

- `DemoRequests` (real demo data under `artifacts/data`):
    recommend  a dev impression: its user id and history ids (mind/dev/behaviors.tsv), k
    search     a dev query (msmarco/queries.dev.tsv), k
    answer     a dev query as the question (k and max_tokens 0 = the server's defaults unless given)
    upsert     `upsert_batch` catalog news (mind/{train,dev}/news.tsv) or passages (msmarco/collection.tsv
               + passage_meta.tsv), re-upserted with their own content (idempotent)
  Files are read on first use, so a recommend-only run needs only behaviors.tsv.
- `SyntheticRequests` (no files): 10,000 users, each with a fixed history of 1..50 ids drawn from a given
  id list; queries made of common English words; upserts of the listed ids with synthetic titles and
  texts. `synthetic_ids` names the items of a synthetic catalog (the naive server's `--synthetic-items`
  uses it too).
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal, Protocol, get_args

from google.protobuf.message import Message

from export.catalog import news_items, passage_items
from recstack.v1 import gateway_pb2 as pb
from training.data.mind import load_behaviors
from training.data.msmarco import load_queries

Rpc = Literal["recommend", "search", "answer", "upsert"]
RPCS: tuple[Rpc, ...] = get_args(Rpc)
ItemKind = Literal["news", "passage"]

SYNTHETIC_PREFIX: dict[ItemKind, str] = {"news": "sn", "passage": "sp"}
SYNTHETIC_USERS = 10_000  # each keeps one history across requests, as a real user does
SYNTHETIC_HISTORY = (1, 50)  # min and max clicks per synthetic user
SYNTHETIC_QUERY_WORDS = (3, 8)
SYNTHETIC_CATEGORIES = 8
COMMON_WORDS = (
    *("government", "minister", "election", "vote", "court", "police", "city", "country", "president"),
    *("market", "price", "bank", "oil", "trade", "school", "health", "hospital", "doctor", "virus"),
    *("water", "climate", "storm", "weather", "energy", "power", "company", "job", "worker", "football"),
    *("match", "team", "player", "season", "film", "music", "star", "show", "family", "child", "woman"),
    *("war", "peace", "army", "border", "law", "report", "study", "science", "space", "data", "phone"),
    *("internet", "security", "attack", "fire", "road", "train"),
)


def synthetic_ids(kind: ItemKind, count: int) -> list[str]:
    """Ids of a synthetic catalog: `sn0000000`, `sn0000001`, ... for news, `sp...` for passages."""
    return [f"{SYNTHETIC_PREFIX[kind]}{i:07d}" for i in range(count)]


def synthetic_category(row: int) -> str:
    """The category of synthetic item `row` (`cat0` .. `cat7`, round robin)."""
    return f"cat{row % SYNTHETIC_CATEGORIES}"


def parse_mix(spec: str) -> dict[Rpc, float]:
    """`recommend` or `recommend=3,search=1` -> {rpc: weight}; ValueError naming the bad part."""
    mix: dict[Rpc, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, weight_text = part.partition("=")
        name = name.strip()
        if name not in RPCS:
            raise ValueError(f"rpc {name!r} in {spec!r}: expected one of {', '.join(RPCS)}")
        try:
            weight = float(weight_text) if weight_text else 1.0
        except ValueError:
            raise ValueError(f"rpc mix {spec!r}: weight {weight_text!r} of {name} is not a number") from None
        if not weight > 0 or weight == float("inf"):
            raise ValueError(f"rpc mix {spec!r}: weight of {name} must be a finite number > 0")
        if name in mix:
            raise ValueError(f"rpc mix {spec!r}: {name} given twice")
        mix[name] = weight
    if not mix:
        raise ValueError("rpc mix is empty: name at least one of " + ", ".join(RPCS))
    return mix


@dataclass(frozen=True)
class RequestOptions:
    """Request parameters that do not come from the data."""

    k: int = 10
    answer_k: int = 0  # 0 = the server's default
    max_tokens: int = 0  # 0 = the server's default
    upsert_batch: int = 10


def answer_request(question: str, options: RequestOptions) -> pb.AnswerRequest:
    """An Answer request; max_tokens 0 leaves the field unset (the server's default)."""
    return pb.AnswerRequest(question=question, k=options.answer_k, max_tokens=options.max_tokens or None)


class RequestFactory(Protocol):
    """Makes one request message of each RPC kind from a seeded random source."""

    def make(self, rpc: Rpc, rng: random.Random) -> Message: ...


@dataclass(frozen=True)
class Catalog:
    """Items as UpsertItems carries them."""

    news: list[pb.NewsItem]
    passages: list[pb.PassageItem]


def load_catalog(data_dir: Path) -> Catalog:
    """The demo catalog exactly as `make up` indexes it (news with their popularity, passages with metadata)."""
    return Catalog(news=news_items(Path(data_dir) / "mind"), passages=passage_items(Path(data_dir) / "msmarco"))


def require_file(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (run `make data`, or use a synthetic workload)")
    return path


def upsert_request(kind: ItemKind, items: Sequence[Message]) -> pb.UpsertItemsRequest:
    return pb.UpsertItemsRequest(news=items) if kind == "news" else pb.UpsertItemsRequest(passages=items)


class DemoRequests:
    """Requests from the demo data files under `data_dir` (see the module docstring)."""

    def __init__(self, data_dir: Path, options: RequestOptions = RequestOptions()) -> None:
        self.data_dir, self.options = Path(data_dir), options
        self._recommend_cache: dict[int, pb.RecommendRequest] = {}

    @cached_property
    def histories(self) -> list[tuple[str, tuple[str, ...]]]:
        impressions = load_behaviors(require_file(self.data_dir / "mind" / "dev" / "behaviors.tsv"))
        if not impressions:
            raise ValueError(f"{self.data_dir / 'mind' / 'dev' / 'behaviors.tsv'} has no impressions")
        return [(imp.user_id, imp.history) for imp in impressions]

    @cached_property
    def queries(self) -> list[str]:
        path = require_file(self.data_dir / "msmarco" / "queries.dev.tsv")
        queries = list(load_queries(path).values())
        if not queries:
            raise ValueError(f"{path} has no queries")
        return queries

    @cached_property
    def catalog(self) -> Catalog:
        return load_catalog(self.data_dir)

    def make(self, rpc: Rpc, rng: random.Random) -> Message:
        options = self.options
        if rpc == "recommend":
            return self._recommend(rng.randrange(len(self.histories)))
        if rpc == "search":
            return pb.SearchRequest(query=rng.choice(self.queries), k=options.k)
        if rpc == "answer":
            return answer_request(rng.choice(self.queries), options)
        kind: ItemKind = rng.choice(("news", "passage"))
        pool = self.catalog.news if kind == "news" else self.catalog.passages
        return upsert_request(kind, rng.sample(pool, min(options.upsert_batch, len(pool))))

    def _recommend(self, index: int) -> pb.RecommendRequest:
        """Built once per impression and reused (sending does not modify a message)."""
        request = self._recommend_cache.get(index)
        if request is None:
            user_id, history = self.histories[index]
            request = pb.RecommendRequest(
                user_id=user_id, history=[pb.HistoryItem(id=i) for i in history], k=self.options.k
            )
            self._recommend_cache[index] = request
        return request


class SyntheticRequests:
    """Requests over a synthetic (or any given) catalog of item ids; no data files needed."""

    def __init__(
        self, news_ids: Sequence[str], passage_ids: Sequence[str] = (), options: RequestOptions = RequestOptions()
    ) -> None:
        if not news_ids:
            raise ValueError("a synthetic workload needs at least one news id")
        self.news_ids, self.passage_ids, self.options = news_ids, passage_ids, options
        self._recommend_cache: dict[int, pb.RecommendRequest] = {}

    def make(self, rpc: Rpc, rng: random.Random) -> Message:
        options = self.options
        if rpc == "recommend":
            return self._recommend(rng.randrange(SYNTHETIC_USERS))
        if rpc == "search":
            return pb.SearchRequest(query=self._words(rng), k=options.k)
        if rpc == "answer":
            return answer_request(self._words(rng), options)
        kind: ItemKind = "passage" if self.passage_ids and rng.random() < 0.5 else "news"
        ids = self.news_ids if kind == "news" else self.passage_ids
        rows = rng.sample(range(len(ids)), min(options.upsert_batch, len(ids)))
        if kind == "news":
            items = [
                pb.NewsItem(id=ids[r], title=self._words(rng), category=synthetic_category(r), subcategory="synthetic")
                for r in rows
            ]
        else:
            items = [pb.PassageItem(id=ids[r], text=self._words(rng, 40), category=synthetic_category(r)) for r in rows]
        return upsert_request(kind, items)

    def _recommend(self, user: int) -> pb.RecommendRequest:
        """User `user`'s request: a history drawn from a generator seeded by the user alone, built once."""
        request = self._recommend_cache.get(user)
        if request is None:
            draw = random.Random(user)
            ids = [self.news_ids[draw.randrange(len(self.news_ids))] for _ in range(draw.randint(*SYNTHETIC_HISTORY))]
            history = [pb.HistoryItem(id=item_id) for item_id in ids]
            request = pb.RecommendRequest(user_id=f"su{user}", history=history, k=self.options.k)
            self._recommend_cache[user] = request
        return request

    @staticmethod
    def _words(rng: random.Random, scale: int = 1) -> str:
        low, high = SYNTHETIC_QUERY_WORDS
        return " ".join(rng.choices(COMMON_WORDS, k=rng.randint(low * scale, high * scale)))


class RequestStream:
    """An endless, seeded sequence of (rpc, request) following the weighted `mix`."""

    def __init__(self, factory: RequestFactory, mix: Mapping[Rpc, float], seed: int) -> None:
        if not mix:
            raise ValueError("rpc mix is empty")
        self.factory = factory
        self.rpcs = list(mix)
        self._cumulative = list(itertools.accumulate(mix[rpc] for rpc in self.rpcs))
        self._rng = random.Random(seed)

    def prime(self) -> None:
        """Build one request of each kind in the mix now (loads and checks data files before a run
        starts) without advancing the seeded sequence."""
        scratch = random.Random(0)
        for rpc in self.rpcs:
            self.factory.make(rpc, scratch)

    def __iter__(self) -> Iterator[tuple[Rpc, Message]]:
        return self

    def __next__(self) -> tuple[Rpc, Message]:
        rpc = self._pick()
        return rpc, self.factory.make(rpc, self._rng)

    def _pick(self) -> Rpc:
        if len(self.rpcs) == 1:
            return self.rpcs[0]
        point = self._rng.random() * self._cumulative[-1]
        return self.rpcs[bisect.bisect_right(self._cumulative, point)]
