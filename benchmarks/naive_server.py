"""The naive baseline: the same `recstack.v1.Gateway` proto, served the way a team would write it first.

One process; the PyTorch models run eagerly inside the request handler; item vectors live in NumPy and
every query is a brute-force scan:

- startup: load the NRMS and two-tower checkpoints (eval mode, `torch.set_num_threads(1)`), then fill the
  catalog through the UpsertItems code path from the demo data files (news titles -> NRMS news encoder,
  passage texts -> doc tower), or with `synthetic_items` random vectors per table (ids from
  `benchmarks.workload.synthetic_ids`, categories `cat0..cat7`, synthetic titles and times);
- Recommend: history ids -> stored news vectors (an unknown id with a title: its title is encoded), the
  most recent `max_history` of them -> NRMS user encoder -> dot product with ALL news vectors -> filters and
  already-seen items masked -> top k. No usable history: the model's learned cold-start user vector
  (`cold_start` is set). `diversity > 0` is UNIMPLEMENTED;
- Search: tokenize, query tower -> dot product (= cosine, the towers output unit vectors) with ALL passage
  vectors -> filters masked -> top k;
- UpsertItems: encode, then overwrite the row of a known id or append one; DeleteItems, Answer: UNIMPLEMENTED.

Requests are validated by the gateway's own `server.requests.RequestValidator` (same limits, same
INVALID_ARGUMENT messages) and errors become status codes in `server.rpc`. Compute runs on the event loop,
so one request computes at a time: that is the naive design. Responses carry `timings` for the stages
`lookup.history`, `torch.news_encoder`, `torch.user_encoder`, `torch.query_encoder`, `torch.doc_encoder`
and `numpy.brute_force`. NumPy's thread count is whatever OPENBLAS_NUM_THREADS says (the subprocess
launcher defaults it to 1, as the Makefile does).

    python -m benchmarks.naive_server --nrms CKPT --two-tower CKPT --data artifacts/data --port 50052
    python -m benchmarks.naive_server --nrms CKPT --two-tower CKPT --synthetic-items 100000 --port 50052
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import torch

from benchmarks.serving import serve_until_signalled, start_server
from benchmarks.workload import ItemKind, load_catalog, synthetic_category, synthetic_ids
from contract import layout
from contract.tokenizer import TextTokenizer
from devstack.process import ManagedProcess, port_open
from recstack.v1 import gateway_pb2 as pb
from recstack.v1 import gateway_pb2_grpc as pb_grpc
from server.config import GatewaySettings
from server.domain import Filters, HistoryEntry, NewsRecord, PassageRecord
from server.observability import StageTimer
from server.pipeline.common import Item
from server.requests import RequestValidator
from server.rpc import unary
from server.service import add_news_results, passage_results
from training.checkpoint import Checkpoint
from training.text import text_tokenizer

ENCODE_BATCH = 256
INITIAL_CAPACITY = 1024
SYNTHETIC_EPOCH = 1_700_000_000  # synthetic item i is published at this unix time + i seconds
DEFAULT_PORT = 50052


class ItemTable:
    """Item vectors in one preallocated float32 matrix (capacity doubles when full) and the fields results
    need, one row per id; writing a known id overwrites its row."""

    def __init__(self, dim: int, capacity: int = INITIAL_CAPACITY) -> None:
        self.dim = dim
        self.ids: list[str] = []
        self._row: dict[str, int] = {}
        self._vectors = np.zeros((capacity, dim), dtype=np.float32)
        self._published = np.zeros(capacity, dtype=np.int64)
        self._category = np.zeros(capacity, dtype=np.int32)
        self._category_code: dict[str, int] = {}
        self._categories: list[str] = []
        self._titles: list[str] = []
        self._texts: list[str] = []
        self._doc_ids: list[str] = []

    def __len__(self) -> int:
        return len(self.ids)

    def row(self, item_id: str) -> int | None:
        return self._row.get(item_id)

    def vector(self, row: int) -> np.ndarray:
        return self._vectors[row]

    def upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        titles: Sequence[str],
        categories: Sequence[str],
        published: Sequence[int],
        texts: Sequence[str] | None = None,
        doc_ids: Sequence[str] | None = None,
    ) -> int:
        """Write rows keyed by id (ids must be distinct within one call); returns the number written."""
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(f"vectors {vectors.shape} for {len(ids)} ids of dimension {self.dim}")
        texts = texts if texts is not None else [""] * len(ids)
        doc_ids = doc_ids if doc_ids is not None else [""] * len(ids)
        rows = np.array([self._row_for(item_id) for item_id in ids], dtype=np.int64)
        self._vectors[rows] = vectors
        self._published[rows] = published
        self._category[rows] = [self._code(category) for category in categories]
        for row, title, text, doc_id in zip(rows.tolist(), titles, texts, doc_ids, strict=True):
            self._titles[row], self._texts[row], self._doc_ids[row] = title, text, doc_id
        return len(ids)

    def top_k(self, query: np.ndarray, k: int, filters: Filters, exclude: Iterable[int] = ()) -> list[Item]:
        """The k highest inner products over ALL rows, filtered rows and `exclude` left out."""
        size = len(self)
        scores = self._vectors[:size] @ query.astype(np.float32)
        allowed = self._allowed(filters, size)
        if allowed is not None:
            scores[~allowed] = -np.inf
        scores[list(exclude)] = -np.inf
        k = min(k, size)
        if k == 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [self.item(int(row), float(scores[row])) for row in top if np.isfinite(scores[row])]

    def item(self, row: int, score: float) -> Item:
        return Item(
            item_id=self.ids[row],
            score=score,
            title=self._titles[row],
            category=self._categories[self._category[row]],
            published=int(self._published[row]),
            text=self._texts[row],
            doc_id=self._doc_ids[row],
        )

    def _allowed(self, filters: Filters, size: int) -> np.ndarray | None:
        allowed = None
        if filters.categories:
            codes = [self._category_code[c] for c in filters.categories if c in self._category_code]
            allowed = np.isin(self._category[:size], codes)
        if filters.published_after is not None:
            recent = self._published[:size] > filters.published_after
            allowed = recent if allowed is None else allowed & recent
        return allowed

    def _row_for(self, item_id: str) -> int:
        row = self._row.get(item_id)
        if row is None:
            row = len(self.ids)
            if row == self._vectors.shape[0]:
                self._grow()
            self._row[item_id] = row
            self.ids.append(item_id)
            self._titles.append("")
            self._texts.append("")
            self._doc_ids.append("")
        return row

    def _grow(self) -> None:
        self._vectors, self._published, self._category = (
            doubled(array) for array in (self._vectors, self._published, self._category)
        )

    def _code(self, category: str) -> int:
        code = self._category_code.get(category)
        if code is None:
            code = self._category_code[category] = len(self._categories)
            self._categories.append(category)
        return code


def doubled(array: np.ndarray) -> np.ndarray:
    """A zero-filled copy of `array` with twice the rows."""
    grown = np.zeros((2 * array.shape[0], *array.shape[1:]), dtype=array.dtype)
    grown[: array.shape[0]] = array
    return grown


class NaiveModels:
    """The two checkpoints' models in eval mode with their tokenizers; every call runs eagerly, no gradients."""

    def __init__(self, nrms: Checkpoint, two_tower: Checkpoint) -> None:
        for checkpoint, kind, fields in ((nrms, "nrms", ("title",)), (two_tower, "two_tower", ("query", "passage"))):
            if checkpoint.kind != kind:
                raise ValueError(f"expected a {kind} checkpoint, got {checkpoint.kind} ({checkpoint.run.name})")
            missing = [f for f in fields if f not in checkpoint.tokenizers]
            if missing:
                raise ValueError(f"{kind} checkpoint has no tokenizer for {missing}")
        torch.set_num_threads(1)
        self.nrms = nrms.build_model()
        self.two_tower = two_tower.build_model()
        self.max_history = nrms.run.model.max_history
        self.news_dim = nrms.run.model.news_dim
        self.passage_dim = two_tower.run.model.word_dim
        self.title_tokenizer = text_tokenizer(nrms.tokenizers["title"])
        self.query_tokenizer = text_tokenizer(two_tower.tokenizers["query"])
        self.passage_tokenizer = text_tokenizer(two_tower.tokenizers["passage"])

    @classmethod
    def load(cls, nrms_path: Path, two_tower_path: Path) -> NaiveModels:
        return cls(Checkpoint.load(nrms_path), Checkpoint.load(two_tower_path))

    def encode_titles(self, titles: Sequence[str]) -> np.ndarray:
        return self._encode(self.nrms.news_encoder, self.title_tokenizer, titles, self.news_dim)

    def encode_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(self.two_tower.doc_tower, self.passage_tokenizer, texts, self.passage_dim)

    def encode_query(self, text: str) -> np.ndarray:
        return self._encode(self.two_tower.query_tower, self.query_tokenizer, [text], self.passage_dim)[0]

    def encode_user(self, history: np.ndarray) -> np.ndarray:
        """history [H, news_dim], oldest first -> user vector; H = 0 gives the learned cold-start vector."""
        mask = torch.ones(1, history.shape[0], dtype=torch.long)
        if history.shape[0] == 0:
            history, mask = np.zeros((1, self.news_dim), np.float32), torch.zeros(1, 1, dtype=torch.long)
        with torch.inference_mode():
            return self.nrms.user_encoder(torch.from_numpy(history)[None], mask)[0].numpy()

    @staticmethod
    def _encode(encoder: torch.nn.Module, tokenizer: TextTokenizer, texts: Sequence[str], dim: int) -> np.ndarray:
        chunks = [np.zeros((0, dim), np.float32)]
        with torch.inference_mode():
            for start in range(0, len(texts), ENCODE_BATCH):
                ids, mask = tokenizer.encode(list(texts[start : start + ENCODE_BATCH]))
                chunks.append(encoder(torch.from_numpy(ids), torch.from_numpy(mask)).numpy())
        return np.concatenate(chunks)


class NaiveGateway(pb_grpc.GatewayServicer):
    """Recommend, Search and UpsertItems over `ItemTable`s (see the module docstring)."""

    def __init__(self, models: NaiveModels, validator: RequestValidator | None = None) -> None:
        self.models = models
        self.validator = validator or RequestValidator(GatewaySettings())
        self.news = ItemTable(models.news_dim)
        self.passages = ItemTable(models.passage_dim)

    @unary("Recommend")
    async def Recommend(self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext) -> pb.RecommendResponse:
        query = self.validator.recommend(request)
        if query.diversity > 0:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "diversity > 0 is not supported by the naive server")
        timer = StageTimer()
        history = self._history_vectors(query.history, timer)
        with timer.stage("torch.user_encoder"):
            user = self.models.encode_user(history)
        with timer.stage("numpy.brute_force"):
            seen = {row for e in query.history if (row := self.news.row(e.item_id)) is not None}
            items = self.news.top_k(user, query.k, query.filters, seen if query.exclude_seen else ())
        response = pb.RecommendResponse(
            cold_start=len(history) == 0, history_used=len(history), timings=stage_timings_of(timer)
        )
        add_news_results(response.items, items)
        return response

    def _history_vectors(self, entries: Sequence[HistoryEntry], timer: StageTimer) -> np.ndarray:
        """[H, news_dim] for the most recent `max_history` usable clicks: stored vectors, or the encoded
        title of an id the catalog does not know; entries with neither are skipped."""
        with timer.stage("lookup.history"):
            recent = [e for e in entries if e.item_id or e.title][-self.models.max_history :]
            rows = [self.news.row(e.item_id) for e in recent]
            vectors = [None if row is None else self.news.vector(row) for row in rows]
        untitled = [i for i, e in enumerate(recent) if vectors[i] is None and e.title]
        if untitled:
            with timer.stage("torch.news_encoder"):
                encoded = self.models.encode_titles([recent[i].title for i in untitled])
            for i, vector in zip(untitled, encoded, strict=True):
                vectors[i] = vector
        used = [v for v in vectors if v is not None]
        return np.stack(used) if used else np.zeros((0, self.models.news_dim), np.float32)

    @unary("Search")
    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        query = self.validator.search(request)
        timer = StageTimer()
        with timer.stage("torch.query_encoder"):
            vector = self.models.encode_query(query.text)
        with timer.stage("numpy.brute_force"):
            items = self.passages.top_k(vector, query.k, query.filters)
        return pb.SearchResponse(passages=passage_results(items), timings=stage_timings_of(timer))

    @unary("UpsertItems")
    async def UpsertItems(
        self, request: pb.UpsertItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpsertItemsResponse:
        news, passages = self.validator.upsert(request)
        timer = StageTimer()
        return pb.UpsertItemsResponse(
            news_upserted=self.write_news(news, timer),
            passages_upserted=self.write_passages(passages, timer),
            timings=stage_timings_of(timer),
        )

    async def Answer(self, request: pb.AnswerRequest, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Answer is not served by the naive baseline")

    async def DeleteItems(self, request: pb.DeleteItemsRequest, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "DeleteItems is not served by the naive baseline")

    def write_news(self, records: Sequence[NewsRecord], timer: StageTimer) -> int:
        if not records:
            return 0
        with timer.stage("torch.news_encoder"):
            vectors = self.models.encode_titles([r.title for r in records])
        ids, titles = [r.item_id for r in records], [r.title for r in records]
        return self.news.upsert(ids, vectors, titles, [r.category for r in records], [r.published for r in records])

    def write_passages(self, records: Sequence[PassageRecord], timer: StageTimer) -> int:
        if not records:
            return 0
        with timer.stage("torch.doc_encoder"):
            vectors = self.models.encode_passages([r.text for r in records])
        return self.passages.upsert(
            [r.item_id for r in records],
            vectors,
            [r.title for r in records],
            [r.category for r in records],
            [r.published for r in records],
            texts=[r.text for r in records],
            doc_ids=[r.doc_id for r in records],
        )

    def load_catalog(self, data_dir: Path) -> None:
        """The demo catalog, written through UpsertItems' validation and encoding in batches."""
        catalog = load_catalog(data_dir)
        batch = self.validator.limits.max_upsert_batch
        for kind, items in (("news", catalog.news), ("passages", catalog.passages)):
            for start in range(0, len(items), batch):
                news, passages = self.validator.upsert(pb.UpsertItemsRequest(**{kind: items[start : start + batch]}))
                self.write_news(news, StageTimer())
                self.write_passages(passages, StageTimer())

    def fill_synthetic(self, count: int, seed: int = 0) -> None:
        """`count` random news vectors and `count` random unit passage vectors, with synthetic fields."""
        write_synthetic(self.news, "news", synthetic_vectors(count, self.news.dim, seed, unit=False))
        write_synthetic(self.passages, "passage", synthetic_vectors(count, self.passages.dim, seed + 1, unit=True))


def synthetic_vectors(count: int, dim: int, seed: int, unit: bool) -> np.ndarray:
    """[count, dim] standard normal float32 vectors (L2-normalised when `unit`), reproducible from `seed`."""
    vectors = np.random.default_rng(seed).standard_normal((count, dim), dtype=np.float32)
    if unit:
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def write_synthetic(table: ItemTable, kind: ItemKind, vectors: np.ndarray) -> None:
    """Rows `synthetic_ids(kind, ...)` with these vectors; item i is in `synthetic_category(i)`, published at
    SYNTHETIC_EPOCH + i."""
    rows = range(len(vectors))
    table.upsert(
        synthetic_ids(kind, len(vectors)),
        vectors,
        [f"synthetic {kind} {row}" for row in rows],
        [synthetic_category(row) for row in rows],
        np.arange(len(vectors), dtype=np.int64) + SYNTHETIC_EPOCH,
        texts=[f"synthetic passage text {row}" for row in rows] if kind == "passage" else None,
    )


def stage_timings_of(timer: StageTimer) -> list[pb.StageTiming]:
    return [pb.StageTiming(stage=name, ms=ms) for name, ms in timer.stages]


# ---------------------------------------------------------------------------------------- serving


@dataclass(frozen=True)
class NaiveServerConfig:
    """What to load and where to listen; `synthetic_items > 0` replaces the data files' catalog."""

    nrms: Path
    two_tower: Path
    data_dir: Path = layout.DATA
    synthetic_items: int = 0
    seed: int = 0
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT


def build_gateway(config: NaiveServerConfig) -> NaiveGateway:
    """Load the models and the catalog (CPU-heavy: seconds to minutes, before any port is opened)."""
    if config.synthetic_items < 0:
        raise ValueError(f"synthetic_items must be >= 0, got {config.synthetic_items}")
    gateway = NaiveGateway(NaiveModels.load(config.nrms, config.two_tower))
    if config.synthetic_items:
        gateway.fill_synthetic(config.synthetic_items, config.seed)
    else:
        gateway.load_catalog(config.data_dir)
    return gateway


def naive_server_process(config: NaiveServerConfig, log_path: Path, startup_timeout_s: float = 600.0) -> ManagedProcess:
    """The server as a child process (not started: use `with` or `.start()`); ready when its port accepts."""
    argv = [
        sys.executable,
        "-m",
        "benchmarks.naive_server",
        *("--nrms", str(Path(config.nrms).resolve()), "--two-tower", str(Path(config.two_tower).resolve())),
        *("--data", str(Path(config.data_dir).resolve()), "--synthetic-items", str(config.synthetic_items)),
        *("--seed", str(config.seed), "--host", config.host, "--port", str(config.port)),
    ]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1")}
    return ManagedProcess(
        name="naive-server",
        argv=argv,
        log_path=log_path,
        ready=lambda: port_open(config.host, config.port),
        env=env,
        startup_timeout_s=startup_timeout_s,
        stop_grace_s=5.0,
    )


async def serve(config: NaiveServerConfig) -> None:
    """Build, listen, print `ready HOST:PORT`, serve until SIGINT/SIGTERM."""
    gateway = build_gateway(config)
    server, port = await start_server(gateway, config.host, config.port)
    await serve_until_signalled(
        server, f"ready {config.host}:{port} ({len(gateway.news)} news, {len(gateway.passages)} passages)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.naive_server", description=__doc__.split("\n")[0])
    parser.add_argument("--nrms", type=Path, required=True, help="NRMS checkpoint (training output)")
    parser.add_argument("--two-tower", type=Path, required=True, help="two-tower checkpoint (training output)")
    parser.add_argument("--data", type=Path, default=layout.DATA, help="demo data (default %(default)s)")
    parser.add_argument("--synthetic-items", type=int, default=0, help="N random news and N random passages")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic vectors")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    if args.synthetic_items < 0:
        parser.error(f"--synthetic-items must be >= 0, got {args.synthetic_items}")
    for flag, path in (("--nrms", args.nrms), ("--two-tower", args.two_tower)):
        if not path.is_file():
            parser.error(f"{flag}: checkpoint {path} not found (run `make train`)")
    config = NaiveServerConfig(
        nrms=args.nrms,
        two_tower=args.two_tower,
        data_dir=args.data,
        synthetic_items=args.synthetic_items,
        seed=args.seed,
        host=args.host,
        port=args.port,
    )
    asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
