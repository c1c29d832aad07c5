"""Generated input against the real gateway: every RPC, hostile and near-valid requests (issue: reliability §5).

A second gateway runs over the session stack's Triton, Milvus and LLM with collections of its own
(`fuzz_news`, `fuzz_passages`, seeded with a small catalog), so the writes generated here cannot disturb
other tests. Every method of `recstack.v1.Gateway` is found through the descriptor and called with
requests from `tests/proto_strategies.py` (any field, any value) mixed with near-valid ones that get past
validation into Triton, Milvus and the LLM. For each call: the status is one a client can act on (never
INTERNAL or UNKNOWN, never DEADLINE_EXCEEDED: the gateway answers well before the deadline), an OK answer
keeps its contract, and after each method the gateway is still SERVING and answers a plain request.

`make fuzz` runs the same tests longer (`RECSTACK_FUZZ_EXAMPLES`, default 40 per method here) and writes
the counts as the "fuzz" section of the reliability results named by `RECSTACK_FUZZ_REPORT`.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proto_strategies import hostile_text, messages

from benchmarks.reliability import write_section
from devstack.local import gateway_serving
from devstack.process import free_port
from recstack.v1 import gateway_pb2 as pb
from recstack.v1 import gateway_pb2_grpc

pytestmark = pytest.mark.stack

EXAMPLES = int(os.environ.get("RECSTACK_FUZZ_EXAMPLES", "40"))
REPORT = os.environ.get("RECSTACK_FUZZ_REPORT")
DEADLINE_S = 20.0  # generous: a call that reaches it means the gateway hung
ACTIONABLE = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
METHODS: list[MethodDescriptor] = list(pb.DESCRIPTOR.services_by_name["Gateway"].methods)
CATEGORIES = ("sports", "finance", "ünïcode")
SEED_NEWS = [
    pb.NewsItem(
        id=f"fz-n{i}",
        title=f"Seed story {i} about {CATEGORIES[i % 3]}",
        category=CATEGORIES[i % 3],
        published=Timestamp(seconds=1_700_000_000 + 3600 * i),
        popularity=float(i),
    )
    for i in range(12)
]
SEED_PASSAGES = [
    pb.PassageItem(
        id=f"fz-p{i}", text=f"Seed passage {i} on {CATEGORIES[i % 3]} and markets", category=CATEGORIES[i % 3]
    )
    for i in range(12)
]
CODES: Counter[str] = Counter()


class FuzzGateway(NamedTuple):
    address: str
    channel: grpc.Channel


@pytest.fixture(scope="module")
def fuzz_gateway(stack, tmp_path_factory) -> Iterator[FuzzGateway]:
    """A second gateway with collections of its own and a short generation limit (Answer stays quick)."""
    port = free_port()
    settings_env = {
        "RECSTACK_MILVUS__NEWS_COLLECTION": "fuzz_news",
        "RECSTACK_MILVUS__PASSAGE_COLLECTION": "fuzz_passages",
        "RECSTACK_RAG__MAX_TOKENS_LIMIT": "8",
        "RECSTACK_LLM__DEFAULT_MAX_TOKENS": "8",
        "RECSTACK_RAG__MIN_SCORE": "-1",
    }
    process = stack.gateway_process("gateway-fuzz", port, tmp_path_factory.mktemp("fuzz") / "gateway.log", settings_env)
    address = f"127.0.0.1:{port}"
    with process, grpc.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        stub.UpsertItems(pb.UpsertItemsRequest(news=SEED_NEWS, passages=SEED_PASSAGES), timeout=60)
        yield FuzzGateway(address, channel)
    if REPORT:
        failures = sum(n for key, n in CODES.items() if key.endswith((":INTERNAL", ":UNKNOWN")))
        summary = {"examples": sum(CODES.values()), "internal_errors": failures, "codes": dict(sorted(CODES.items()))}
        write_section("fuzz", summary, Path(REPORT))


def near_valid(method: str) -> st.SearchStrategy[Message]:
    """Requests that pass validation (mostly), so generated text reaches Triton, Milvus and the LLM."""
    ids = st.sampled_from([item.id for item in SEED_NEWS]) | st.text(min_size=1, max_size=8)
    text = st.sampled_from(["markets", "Seed story 3"]) | hostile_text()
    filters = st.builds(
        pb.Filters,
        categories=st.lists(st.sampled_from(CATEGORIES) | hostile_text(), max_size=3),
        published_after=st.builds(Timestamp, seconds=st.integers(0, 2**40)),
    )
    strategies: dict[str, st.SearchStrategy[Message]] = {
        "Recommend": st.builds(
            pb.RecommendRequest,
            user_id=ids,
            history=st.lists(st.builds(pb.HistoryItem, id=ids, title=text), max_size=6),
            k=st.integers(1, 20),
            filters=st.none() | filters,
            diversity=st.floats(0, 1),
        ),
        "Search": st.builds(pb.SearchRequest, query=text, k=st.integers(1, 20), filters=st.none() | filters),
        "Answer": st.builds(
            pb.AnswerRequest,
            question=text,
            k=st.integers(0, 5),
            max_tokens=st.integers(1, 8),
            temperature=st.floats(0, 2),
        ),
        "UpsertItems": st.builds(
            pb.UpsertItemsRequest,
            news=st.lists(
                st.builds(
                    pb.NewsItem,
                    id=ids.map(lambda v: f"fz-new-{v}"),
                    title=text,
                    category=text,
                    popularity=st.floats(0, 1e30),
                ),
                max_size=3,
                unique_by=lambda item: item.id,
            ),
            passages=st.lists(
                st.builds(pb.PassageItem, id=ids.map(lambda v: f"fz-new-{v}"), text=text, title=text),
                max_size=3,
                unique_by=lambda item: item.id,
            ),
        ),
        "DeleteItems": st.builds(
            pb.DeleteItemsRequest, news_ids=st.lists(ids.map(lambda v: f"fz-new-{v}"), max_size=3)
        ),
    }
    return strategies.get(method, st.nothing())


def call(channel: grpc.Channel, method: MethodDescriptor, request: Message) -> tuple[grpc.StatusCode, list[Message]]:
    """Send `request`; the status and the response message(s). Unary and server-streaming methods alike."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    reply = GetMessageClass(method.output_type)
    kind = channel.unary_stream if method.server_streaming else channel.unary_unary
    callable_ = kind(path, request_serializer=type(request).SerializeToString, response_deserializer=reply.FromString)
    try:
        result = callable_(request, timeout=DEADLINE_S)
        responses = list(result) if method.server_streaming else [result]
    except grpc.RpcError as error:
        return error.code(), []
    return grpc.StatusCode.OK, responses


def check_contract(method: str, request: Message, responses: list[Message]) -> None:
    """What an OK answer promises, whatever the input."""
    if method == "Recommend":
        assert len(responses[0].items) <= request.k
    elif method == "Search":
        assert len(responses[0].passages) <= request.k
    elif method == "Answer":
        kinds = [chunk.WhichOneof("chunk") for chunk in responses]
        assert kinds[0] == "sources" and kinds[-1] == "done", kinds


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_generated_requests_get_actionable_statuses(fuzz_gateway: FuzzGateway, method: MethodDescriptor) -> None:
    @settings(max_examples=EXAMPLES, suppress_health_check=list(HealthCheck), database=None)
    @given(request=messages(method.input_type) | near_valid(method.name))
    def one_call(request: Message) -> None:
        started = time.monotonic()
        code, responses = call(fuzz_gateway.channel, method, request)
        elapsed = time.monotonic() - started
        CODES[f"{method.name}:{code.name}"] += 1
        assert code in ACTIONABLE, f"{method.name} -> {code.name} for {request!r:.500}"
        assert elapsed < DEADLINE_S
        if code == grpc.StatusCode.OK:
            check_contract(method.name, request, responses)

    one_call()
    assert gateway_serving(fuzz_gateway.address, timeout_s=5.0)
    plain = gateway_pb2_grpc.GatewayStub(fuzz_gateway.channel).Search(
        pb.SearchRequest(query="markets", k=3), timeout=10
    )
    assert plain.passages
