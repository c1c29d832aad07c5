"""The gateway's dependencies called directly, doing the same work one gateway request makes them do.

Gateway overhead per RPC = the gateway's latency minus the latencies of the same dependency calls made
directly, measured side by side in the same run (benchmarks/alternation.py). The work is prepared once
from real demo data, outside any measured window:

- `RecommendCase`: a dev impression with a non-empty history (cold start is another path): the
  RecommendRequest the gateway gets; the history vectors its user encoder gets ([1, H, D]: the most
  recent `max_history` clicks the catalog knows, read from Milvus, as the gateway's cache holds them);
  the user vector (computed once by the served user encoder); the ANN limit (what the gateway asks Milvus
  for, `server.pipeline.recommend.ann_limit`: k, or the re-ranked pool when the gateway re-ranks, plus the
  distinct history ids it may drop as seen).
- `SearchCase`: a dev query: the SearchRequest, its tokens (the served tokenizer file) and its vector.

Direct calls (each a `DirectClient` the load generator drives like a gateway):
  triton.user_encoder   tritonclient.grpc.aio infer of nrms_user_encoder with the case's history
  triton.query_encoder  tritonclient.grpc.aio infer of query_encoder with the case's tokens
  milvus.search         the MilvusStore façade's search with the case's vector and limit, and the output
                        fields the gateway asks for (none for news: its item cache has them; a Search's passage fields)
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import np_to_triton_dtype

import contract
from benchmarks.loadgen import OK, Reply
from benchmarks.workload import DemoRequests, Rpc
from contract.tokenizer import TextTokenizer
from recstack.v1 import gateway_pb2 as pb
from server.config import RecommendSettings
from server.domain import Hits
from server.milvus import MilvusStore
from server.pipeline.recommend import ann_limit
from server.pipeline.search import PASSAGE_FIELDS

PREPARE_TIMEOUT_S = 30.0
# The direct calls, named as the gateway names the same work in its StageTimings.
TRITON_USER_ENCODER = "triton.user_encoder"
TRITON_QUERY_ENCODER = "triton.query_encoder"
MILVUS_SEARCH = "milvus.search"
DIRECT_CALLS = {"recommend": (TRITON_USER_ENCODER, MILVUS_SEARCH), "search": (TRITON_QUERY_ENCODER, MILVUS_SEARCH)}


@dataclass(frozen=True)
class RecommendCase:
    request: pb.RecommendRequest
    history: np.ndarray  # [1, H, D] float32, oldest first
    user: np.ndarray  # [D] float32
    limit: int


@dataclass(frozen=True)
class SearchCase:
    request: pb.SearchRequest
    input_ids: np.ndarray  # [1, L] int64
    attention_mask: np.ndarray  # [1, L] int64
    vector: np.ndarray  # [E] float32


@dataclass(frozen=True)
class CatalogVectors:
    """Every stored vector of one collection: ids[i] has vectors[i]."""

    ids: list[str]
    vectors: np.ndarray  # [N, D] float32

    def index(self) -> dict[str, int]:
        return {item_id: row for row, item_id in enumerate(self.ids)}


class CaseRequests:
    """A RequestFactory over prepared cases: the gateway's request message, or the case itself (direct)."""

    def __init__(self, cases: Sequence[RecommendCase] | Sequence[SearchCase], direct: bool) -> None:
        if not cases:
            raise ValueError("no cases to draw requests from")
        self.cases, self.direct = cases, direct

    def make(self, rpc: Rpc, rng: random.Random) -> Any:
        case = rng.choice(self.cases)
        return case if self.direct else case.request


@dataclass
class DirectClient:
    """Runs `operation(case, timeout_s)` per request and reports it as the load generator's Reply."""

    operation: Callable[[Any, float], Awaitable[object]]

    async def call(self, rpc: Rpc, case: Any, timeout_s: float) -> Reply:
        try:
            await self.operation(case, timeout_s)
        except Exception as error:  # a failed direct call counts, visibly, by its type
            return Reply(f"CLIENT_{type(error).__name__}", time.perf_counter(), detail=str(error))
        return Reply(OK, time.perf_counter())


async def triton_infer(
    client: triton_aio.InferenceServerClient, model: str, inputs: dict[str, np.ndarray], timeout_s: float
) -> np.ndarray:
    """One plain KServe v2 inference: named numpy inputs in, the `embedding` output out."""
    tensors = []
    for name, array in inputs.items():
        tensor = InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    result = await client.infer(
        model, tensors, outputs=[InferRequestedOutput(contract.EMBEDDING)], client_timeout=timeout_s
    )
    return result.as_numpy(contract.EMBEDDING)


@dataclass
class Dependencies:
    """Direct handles on the gateway's Triton and Milvus, with the collections it serves."""

    triton: triton_aio.InferenceServerClient
    store: MilvusStore
    news_collection: str
    passage_collection: str

    async def encode_user(self, history: np.ndarray, timeout_s: float) -> np.ndarray:
        """[1, H, D] clicked-news vectors -> [1, D] user vector."""
        mask = np.ones(history.shape[:2], dtype=np.int64)
        inputs = {contract.HISTORY: history, contract.HISTORY_MASK: mask}
        return await triton_infer(self.triton, contract.USER_ENCODER, inputs, timeout_s)

    async def encode_query(self, input_ids: np.ndarray, attention_mask: np.ndarray, timeout_s: float) -> np.ndarray:
        inputs = {contract.INPUT_IDS: input_ids, contract.ATTENTION_MASK: attention_mask}
        return await triton_infer(self.triton, contract.QUERY_ENCODER, inputs, timeout_s)

    async def search_news(self, vector: np.ndarray, limit: int, timeout_s: float) -> list[Hits]:
        return await self.store.search(self.news_collection, vector[None], limit, None, (), timeout_s)

    async def search_passages(self, vector: np.ndarray, limit: int, timeout_s: float) -> list[Hits]:
        return await self.store.search(self.passage_collection, vector[None], limit, None, PASSAGE_FIELDS, timeout_s)

    def recommend_calls(self) -> dict[str, DirectClient]:
        """The dependency calls of one Recommend (over RecommendCases)."""
        return {
            TRITON_USER_ENCODER: DirectClient(lambda case, t: self.encode_user(case.history, t)),
            MILVUS_SEARCH: DirectClient(lambda case, t: self.search_news(case.user, case.limit, t)),
        }

    def search_calls(self) -> dict[str, DirectClient]:
        """The dependency calls of one Search (over SearchCases)."""
        return {
            TRITON_QUERY_ENCODER: DirectClient(
                lambda case, t: self.encode_query(case.input_ids, case.attention_mask, t)
            ),
            MILVUS_SEARCH: DirectClient(lambda case, t: self.search_passages(case.vector, case.request.k, t)),
        }

    async def catalog_vectors(self, collection: str) -> CatalogVectors:
        """Every row's vector, read through the façade (as the gateway's cache warm-up reads them)."""
        ids, vectors = [], []
        async for row in self.store.iterate(collection, ["vector"], timeout=PREPARE_TIMEOUT_S):
            ids.append(row["id"])
            vectors.append(row["vector"])
        if not ids:
            raise ValueError(f"milvus collection '{collection}' is empty: index the catalog first")
        return CatalogVectors(ids, np.stack(vectors).astype(np.float32))


async def recommend_cases(
    deps: Dependencies,
    data_dir: Path,
    news: CatalogVectors,
    k: int,
    settings: RecommendSettings,
    count: int,
    seed: int = 0,
) -> list[RecommendCase]:
    """Up to `count` dev impressions (seeded sample) whose history the catalog knows, prepared as cases for a
    gateway with these Recommend `settings`."""
    max_history, min_pool = settings.max_history, settings.min_candidates()
    histories = [(user, history) for user, history in DemoRequests(data_dir).histories if history]
    random.Random(seed).shuffle(histories)
    rows = news.index()
    cases = []
    for user_id, history in histories:
        used = [rows[item_id] for item_id in history[-max_history:] if item_id in rows]
        if not used:
            continue
        request = pb.RecommendRequest(user_id=user_id, history=[pb.HistoryItem(id=i) for i in history], k=k)
        vectors = news.vectors[used][None]
        (user,) = await deps.encode_user(vectors, PREPARE_TIMEOUT_S)
        cases.append(RecommendCase(request, vectors, user, limit=ann_limit(k, min_pool, len(set(history)))))
        if len(cases) == count:
            break
    if not cases:
        raise ValueError(f"no dev impression under {data_dir} has a history the catalog knows")
    return cases


async def search_cases(deps: Dependencies, data_dir: Path, tokenizer_dir: Path, k: int) -> list[SearchCase]:
    """Every dev query, tokenized by the served tokenizer file and encoded once."""
    tokenizer = TextTokenizer.from_file(tokenizer_dir / "query.json")
    cases = []
    for text in DemoRequests(data_dir).queries:
        ids, mask = tokenizer.encode([text])
        (vector,) = await deps.encode_query(ids, mask, PREPARE_TIMEOUT_S)
        cases.append(SearchCase(pb.SearchRequest(query=text, k=k), ids, mask, vector))
    return cases
