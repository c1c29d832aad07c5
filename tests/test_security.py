"""Gateway TLS (and mutual TLS) with certificates made at test time, bearer tokens with scopes, the refusal to
listen beyond loopback unprotected, and TLS/credentials towards Triton, Milvus and the LLM.

The gateway side is served in this process with the functions the gateway itself uses (`server.transport.bind`,
`server.auth.interceptors`) in front of a fake Gateway servicer; clients use `contract.channel`, as the CLI does.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import structlog
import trustme
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_serving import FakeTriton
from prometheus_client import REGISTRY, generate_latest
from tritonclient.grpc import service_pb2_grpc

import contract
from contract.channel import ClientSecurity
from devstack.process import free_port
from recstack.v1 import gateway_pb2 as pb
from recstack.v1 import gateway_pb2_grpc as pb_grpc
from server import auth
from server.auth import METHOD_SCOPES, TokenTable, bearer_token, interceptors, token_digest
from server.config import GatewaySettings, LLMSettings, MilvusSettings, SecuritySettings, TritonSettings, load_settings
from server.llm import ChatMessage, GenerationRequest, OllamaClient, OpenAIClient
from server.milvus import store as milvus_store
from server.transport import InsecureExposure, bind, check_exposure, server_credentials
from server.triton import TritonEncoders

pytestmark = pytest.mark.anyio

READER, WRITER = "reader-token-3f9a1c", "writer-token-b27e44"
TOKENS = [
    {"name": "reader", "sha256": token_digest(READER), "scopes": ["read"]},
    {"name": "writer", "sha256": token_digest(WRITER), "scopes": ["read", "write"]},
]
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Pki:
    """A CA, the gateway's certificate for 127.0.0.1/localhost and a client certificate, as PEM files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client@recstack.test")
    paths = Pki(*(folder / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")))
    ca.cert_pem.write_to_path(str(paths.ca))
    server.cert_chain_pems[0].write_to_path(str(paths.server_cert))
    server.private_key_pem.write_to_path(str(paths.server_key))
    client.cert_chain_pems[0].write_to_path(str(paths.client_cert))
    client.private_key_pem.write_to_path(str(paths.client_key))
    return paths


@dataclass
class FakeGateway(pb_grpc.GatewayServicer):
    """Answers every RPC it is reached with; records which ones were reached."""

    reached: list[str] = field(default_factory=list)

    async def Recommend(self, request: pb.RecommendRequest, context: Any) -> pb.RecommendResponse:
        self.reached.append("Recommend")
        return pb.RecommendResponse(history_used=len(request.history))

    async def DeleteItems(self, request: pb.DeleteItemsRequest, context: Any) -> pb.DeleteItemsResponse:
        self.reached.append("DeleteItems")
        return pb.DeleteItemsResponse()

    async def Answer(self, request: pb.AnswerRequest, context: Any) -> AsyncIterator[pb.AnswerChunk]:
        self.reached.append("Answer")
        yield pb.AnswerChunk(token="ok")


@contextlib.asynccontextmanager
async def serving(security: SecuritySettings) -> AsyncIterator[tuple[str, FakeGateway]]:
    """The fake gateway behind the gateway's own port binding and interceptors, on loopback."""
    service = FakeGateway()
    server = grpc.aio.server(interceptors=interceptors(security))
    pb_grpc.add_GatewayServicer_to_server(service, server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = bind([server], "127.0.0.1:0", server_credentials(security), security.loopback_port)
    await server.start()
    try:
        yield f"localhost:{port}", service
    finally:
        await server.stop(grace=None)


async def recommend(client: ClientSecurity, target: str) -> pb.RecommendResponse:
    async with client.aio_channel(target) as channel:
        request = pb.RecommendRequest(history=[pb.HistoryItem(id="n1")])
        return await pb_grpc.GatewayStub(channel).Recommend(request, timeout=5)


async def status_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value.code()


def tls_settings(pki: Pki, mutual: bool = False, **more: Any) -> SecuritySettings:
    client_ca = {"tls_client_ca_file": pki.ca} if mutual else {}
    return SecuritySettings(tls_cert_file=pki.server_cert, tls_key_file=pki.server_key, **client_ca, **more)


# ---- transport -------------------------------------------------------------------------------------------


async def test_a_tls_client_is_served_and_a_plaintext_client_is_not(pki: Pki) -> None:
    async with serving(tls_settings(pki)) as (target, service):
        response = await recommend(ClientSecurity(tls=True, ca_cert=pki.ca), target)
        assert response.history_used == 1
        assert await status_of(recommend(ClientSecurity(), target)) == grpc.StatusCode.UNAVAILABLE
    assert service.reached == ["Recommend"]


async def test_a_client_that_does_not_trust_the_gateways_ca_fails(pki: Pki) -> None:
    async with serving(tls_settings(pki)) as (target, _):
        assert await status_of(recommend(ClientSecurity(tls=True), target)) == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_serves_a_client_with_a_certificate_and_refuses_one_without(pki: Pki) -> None:
    with_cert = ClientSecurity(tls=True, ca_cert=pki.ca, client_cert=pki.client_cert, client_key=pki.client_key)
    async with serving(tls_settings(pki, mutual=True)) as (target, service):
        assert (await recommend(with_cert, target)).history_used == 1
        no_cert = ClientSecurity(tls=True, ca_cert=pki.ca)
        assert await status_of(recommend(no_cert, target)) == grpc.StatusCode.UNAVAILABLE
    assert service.reached == ["Recommend"]


def test_tls_settings_need_both_files_and_mutual_tls_needs_tls(pki: Pki) -> None:
    with pytest.raises(ValueError, match="tls_cert_file and tls_key_file"):
        SecuritySettings(tls_cert_file=pki.server_cert)
    with pytest.raises(ValueError, match="tls_client_ca_file"):
        SecuritySettings(tls_client_ca_file=pki.ca)


# ---- tokens and scopes -----------------------------------------------------------------------------------


async def test_calls_without_or_with_an_unknown_token_are_unauthenticated(pki: Pki) -> None:
    async with serving(tls_settings(pki, tokens=TOKENS)) as (target, service):
        anonymous = ClientSecurity(tls=True, ca_cert=pki.ca)
        assert await status_of(recommend(anonymous, target)) == grpc.StatusCode.UNAUTHENTICATED
        stranger = ClientSecurity(tls=True, ca_cert=pki.ca, token="not-a-token")
        assert await status_of(recommend(stranger, target)) == grpc.StatusCode.UNAUTHENTICATED
    assert service.reached == []


async def test_a_read_token_may_read_but_not_delete_and_a_write_token_may_delete(pki: Pki) -> None:
    reader = ClientSecurity(tls=True, ca_cert=pki.ca, token=READER)
    writer = ClientSecurity(tls=True, ca_cert=pki.ca, token=WRITER)
    delete = pb.DeleteItemsRequest(news_ids=["n1"])
    async with serving(tls_settings(pki, tokens=TOKENS)) as (target, service):
        assert (await recommend(reader, target)).history_used == 1
        async with reader.aio_channel(target) as channel:
            stub = pb_grpc.GatewayStub(channel)
            assert await status_of(stub.DeleteItems(delete, timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
            assert [chunk.token async for chunk in stub.Answer(pb.AnswerRequest(question="q"), timeout=5)] == ["ok"]
        async with writer.aio_channel(target) as channel:
            await pb_grpc.GatewayStub(channel).DeleteItems(delete, timeout=5)
    assert service.reached == ["Recommend", "Answer", "DeleteItems"]


async def test_a_streaming_rpc_is_rejected_as_a_stream(pki: Pki) -> None:
    anonymous = ClientSecurity(tls=True, ca_cert=pki.ca)
    async with serving(tls_settings(pki, tokens=TOKENS)) as (target, _), anonymous.aio_channel(target) as channel:
        call = pb_grpc.GatewayStub(channel).Answer(pb.AnswerRequest(question="q"), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            _ = [chunk async for chunk in call]
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_health_stays_open_and_can_be_closed(pki: Pki) -> None:
    check = health_pb2.HealthCheckRequest(service="")
    anonymous = ClientSecurity(tls=True, ca_cert=pki.ca)
    async with serving(tls_settings(pki, tokens=TOKENS)) as (target, _), anonymous.aio_channel(target) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(check, timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    closed = tls_settings(pki, tokens=TOKENS, open_services=[])
    async with serving(closed) as (target, _), anonymous.aio_channel(target) as channel:
        call = health_pb2_grpc.HealthStub(channel).Check(check, timeout=5)
        assert await status_of(call) == grpc.StatusCode.UNAUTHENTICATED


async def test_the_loopback_port_is_plaintext_for_probes_and_still_needs_tokens(pki: Pki) -> None:
    loopback_port = free_port("127.0.0.1")
    async with serving(tls_settings(pki, tokens=TOKENS, loopback_port=loopback_port)) as (_, service):
        target = f"127.0.0.1:{loopback_port}"
        async with ClientSecurity().aio_channel(target) as channel:
            check = health_pb2.HealthCheckRequest(service="")
            assert (await health_pb2_grpc.HealthStub(channel).Check(check, timeout=5)).status == 1
        assert await status_of(recommend(ClientSecurity(), target)) == grpc.StatusCode.UNAUTHENTICATED
        assert (await recommend(ClientSecurity(token=READER), target)).history_used == 1
    assert service.reached == ["Recommend"]


async def test_a_token_travels_over_plaintext_loopback(pki: Pki) -> None:
    async with serving(SecuritySettings(tokens=TOKENS)) as (target, _):
        loopback = target.replace("localhost", "127.0.0.1")
        assert (await recommend(ClientSecurity(token=READER), loopback)).history_used == 1
        assert await status_of(recommend(ClientSecurity(), loopback)) == grpc.StatusCode.UNAUTHENTICATED


async def test_tokens_never_appear_in_logs(pki: Pki) -> None:
    reader = ClientSecurity(tls=True, ca_cert=pki.ca, token=READER)
    with structlog.testing.capture_logs() as logs:
        async with serving(tls_settings(pki, tokens=TOKENS)) as (target, _):
            async with reader.aio_channel(target) as channel:
                call = pb_grpc.GatewayStub(channel).DeleteItems(pb.DeleteItemsRequest(news_ids=["n"]), timeout=5)
                assert await status_of(call) == grpc.StatusCode.PERMISSION_DENIED
            stranger = ClientSecurity(tls=True, ca_cert=pki.ca, token=WRITER + "x")
            assert await status_of(recommend(stranger, target)) == grpc.StatusCode.UNAUTHENTICATED
    assert [entry["event"] for entry in logs] == ["permission_denied", "unauthenticated"]
    assert logs[0]["token_name"] == "reader"
    assert READER not in repr(logs) and WRITER not in repr(logs)
    assert READER not in repr(reader)
    assert READER.encode() not in generate_latest(REGISTRY)


def test_every_rpc_of_the_gateway_service_has_a_scope() -> None:
    service = pb.DESCRIPTOR.services_by_name["Gateway"]
    methods = {f"/{service.full_name}/{method.name}" for method in service.methods}
    assert methods == set(METHOD_SCOPES)


def test_the_token_table_accepts_only_listed_tokens_and_refuses_duplicates() -> None:
    table = TokenTable(SecuritySettings(tokens=TOKENS).tokens)
    caller = table.caller(WRITER)
    assert caller is not None and (caller.name, caller.scopes) == ("writer", frozenset({"read", "write"}))
    assert table.caller(WRITER[:-1]) is None
    with pytest.raises(ValueError, match="listed twice"):
        TokenTable(SecuritySettings(tokens=[TOKENS[0], {**TOKENS[0], "name": "again"}]).tokens)


def test_the_bearer_token_is_read_from_the_authorization_entry_only() -> None:
    assert bearer_token([("x-other", "Bearer no"), ("authorization", "Bearer abc")]) == "abc"
    assert bearer_token([("authorization", "Basic abc")]) is None
    assert bearer_token(None) is None


def test_tokens_load_from_a_file_and_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tokens_file = tmp_path / "tokens.yaml"
    tokens_file.write_text(f"- {{name: writer, sha256: {token_digest(WRITER)}, scopes: [read, write]}}\n")
    reader = {"name": "reader", "sha256": token_digest(READER), "scopes": ["read"]}
    monkeypatch.setenv("RECSTACK_SECURITY__TOKENS", json.dumps([reader]))
    monkeypatch.setenv("RECSTACK_SECURITY__TOKENS_FILE", str(tokens_file))
    security = load_settings().security
    assert [token.name for token in auth.load_tokens(security)] == ["reader", "writer"]
    tokens_file.write_text("[]\n")
    with pytest.raises(ValueError, match="holds no tokens"):
        auth.load_tokens(security)


def test_the_token_helper_prints_a_token_whose_hash_it_prints() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "server", "token", "ci", "read", "write"], capture_output=True, text=True, check=True
    )
    lines = done.stdout.splitlines()
    token = lines[1]
    assert token_digest(token) in done.stdout and '"scopes": ["read", "write"]' in done.stdout


# ---- exposure --------------------------------------------------------------------------------------------


def test_a_non_loopback_gateway_without_tls_and_tokens_is_refused_naming_the_override(pki: Pki) -> None:
    exposed = GatewaySettings(host="0.0.0.0")
    with pytest.raises(InsecureExposure, match=r"security\.allow_insecure") as raised:
        check_exposure(exposed, SecuritySettings())
    assert "TLS" in str(raised.value) and "tokens" in str(raised.value)
    with pytest.raises(InsecureExposure, match="tokens"):
        check_exposure(exposed, tls_settings(pki))
    check_exposure(exposed, SecuritySettings(allow_insecure=True))
    check_exposure(exposed, tls_settings(pki, tokens=TOKENS))
    for loopback in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_exposure(GatewaySettings(host=loopback), SecuritySettings())


def test_the_gateway_process_refuses_to_start_exposed_and_says_why() -> None:
    env = {"RECSTACK_GATEWAY__HOST": "0.0.0.0", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "proto")}
    done = subprocess.run([sys.executable, "-m", "server"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode != 0
    assert "security.allow_insecure" in done.stderr and "gateway.host 0.0.0.0" in done.stderr


# ---- outbound --------------------------------------------------------------------------------------------


async def test_the_triton_client_speaks_tls_when_configured(pki: Pki) -> None:
    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(FakeTriton(dim=4), server)
    port = bind([server], "127.0.0.1:0", server_credentials(tls_settings(pki)))
    await server.start()
    tokenizers: Any = dict.fromkeys(contract.TEXT_FIELDS)
    url = f"localhost:{port}"
    try:
        secure = TritonEncoders(TritonSettings(url=url, ssl=True, ssl_root_certificates=pki.ca), tokenizers)
        plain = TritonEncoders(TritonSettings(url=url, timeout_s=1.0), tokenizers)
        assert await secure.ready() is True
        assert await plain.ready() is False
        await secure.close()
        await plain.close()
    finally:
        await server.stop(grace=None)


def test_milvus_gets_the_https_uri_and_the_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(milvus_store, "AsyncMilvusClient", lambda **kwargs: seen.append(kwargs))
    settings = MilvusSettings(uri="https://milvus.example:443", token="user:secret")
    milvus_store.MilvusStore(settings)
    assert {k: seen[0][k] for k in ("uri", "token")} == {"uri": "https://milvus.example:443", "token": "user:secret"}
    milvus_store.MilvusStore(MilvusSettings(uri="https://milvus.example:443", user="u", password="p"))
    assert (seen[1]["user"], seen[1]["password"]) == ("u", "p")


@pytest.mark.parametrize("protocol", ["ollama", "openai"])
async def test_the_llm_client_sends_its_api_key_over_https(protocol: str) -> None:
    requests: list[httpx.Request] = []

    def reply(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(500, json={"error": "stop here"})

    settings = LLMSettings(protocol=protocol, url="https://llm.example", api_key="sk-test")
    client_class = {"ollama": OllamaClient, "openai": OpenAIClient}[protocol]
    client = client_class(settings, transport=httpx.MockTransport(reply))
    request = GenerationRequest((ChatMessage("user", "hi"),))
    with contextlib.suppress(Exception):
        async for _ in client.stream(request, timeout_s=5):
            pass
    await client.close()
    assert requests[0].url.scheme == "https"
    assert requests[0].headers["authorization"] == "Bearer sk-test"


def test_production_settings_name_tls_and_token_files() -> None:
    security = load_settings(ROOT / "configs" / "production.yaml").security
    assert security.tls and security.authentication and not security.allow_insecure
