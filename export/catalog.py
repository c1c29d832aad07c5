"""Load a MIND-format news catalog and an MS MARCO-format passage collection into a running gateway.

Everything goes through the gateway's public `UpsertItems` RPC (which encodes on Triton and writes
Milvus), in batches, with a progress bar: the same path any producer of new items uses. Idempotent:
re-running re-writes the same rows.

News popularity (read by the popularity-aware ranking and the cold-start ranking) is the item's smoothed
click-through rate (`contract.ranking.smoothed_ctr`) in the labelled impressions of the behaviour logs
available at indexing time (every split's).
The benchmarks' upsert workload sends the same items (`benchmarks.workload.load_catalog`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp
from rich.progress import Progress

from contract.channel import ClientSecurity
from recstack.v1 import gateway_pb2 as pb
from recstack.v1 import gateway_pb2_grpc as pb_grpc
from training.data.mind import BEHAVIORS_FILE, NEWS_FILE, load_behaviors, load_news
from training.data.msmarco import load_collection, load_passage_meta
from training.ranking import ClickStats

BATCH = 256
SPLITS = ("train", "dev")


@dataclass(frozen=True)
class CatalogCounts:
    news: int
    passages: int


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    return Timestamp(seconds=int(value.replace(tzinfo=value.tzinfo or UTC).timestamp()))


def news_items(mind_dir: Path) -> list[pb.NewsItem]:
    """Every article of the train/dev splits present, popularity (smoothed CTR) counted from their behaviour logs."""
    splits = [mind_dir / name for name in SPLITS if (mind_dir / name / NEWS_FILE).is_file()]
    if not splits:
        raise FileNotFoundError(f"no {NEWS_FILE} under {mind_dir}/train or {mind_dir}/dev (run `make data`)")
    articles = {news_id: article for split in splits for news_id, article in load_news(split / NEWS_FILE).items()}
    logs = [split / BEHAVIORS_FILE for split in splits if (split / BEHAVIORS_FILE).is_file()]
    stats = ClickStats.from_impressions(imp for path in logs for imp in load_behaviors(path) if imp.labels is not None)
    popularity = dict(zip(articles, stats.popularity(list(articles)), strict=True))
    return [
        pb.NewsItem(
            id=a.news_id,
            title=a.title,
            category=a.category,
            subcategory=a.subcategory,
            abstract=a.abstract,
            published=timestamp(a.published),
            popularity=float(popularity[a.news_id]),
        )
        for a in (articles[k] for k in sorted(articles))
    ]


def passage_items(msmarco_dir: Path) -> list[pb.PassageItem]:
    """collection.tsv, with title/category/doc_id/published from passage_meta.tsv when it exists."""
    path = msmarco_dir / "collection.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (run `make data`)")
    collection = load_collection(path)
    meta_path = msmarco_dir / "passage_meta.tsv"
    meta = load_passage_meta(meta_path) if meta_path.exists() else {}
    items = []
    for pid in sorted(collection):
        info = meta.get(pid)
        items.append(
            pb.PassageItem(
                id=pid,
                text=collection[pid],
                title=info.title if info else "",
                category=info.category if info else "",
                doc_id=info.doc_id if info else "",
                published=timestamp(info.published) if info else None,
            )
        )
    return items


def batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def index_catalog(
    target: str,
    data_dir: Path,
    batch: int = BATCH,
    timeout_s: float = 120.0,
    security: ClientSecurity | None = None,
) -> CatalogCounts:
    """Upsert every news article and passage of `data_dir` (mind/, msmarco/) through the gateway.

    `security`: TLS and the (write-scoped) token when the gateway asks for them (default: plaintext, no token).
    """
    news, passages = news_items(data_dir / "mind"), passage_items(data_dir / "msmarco")
    written = CatalogCounts(0, 0)
    with (security or ClientSecurity()).channel(target) as channel, Progress() as progress:
        stub = pb_grpc.GatewayStub(channel)
        news_task = progress.add_task("indexing news", total=len(news))
        passage_task = progress.add_task("indexing passages", total=len(passages))
        for chunk in batches(news, batch):
            response = stub.UpsertItems(pb.UpsertItemsRequest(news=chunk), timeout=timeout_s)
            written = CatalogCounts(written.news + response.news_upserted, written.passages)
            progress.advance(news_task, len(chunk))
        for chunk in batches(passages, batch):
            response = stub.UpsertItems(pb.UpsertItemsRequest(passages=chunk), timeout=timeout_s)
            written = CatalogCounts(written.news, written.passages + response.passages_upserted)
            progress.advance(passage_task, len(chunk))
    return written
