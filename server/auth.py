"""Bearer-token authentication with scopes, as a grpc.aio server interceptor.

A call carries `authorization: Bearer <token>`. Tokens are stored as their SHA-256 (`security.tokens`,
`security.tokens_file`): tokens are random 256-bit strings (`python -m server token` mints one), so a
plain hash cannot be brute-forced and a slow KDF would only add per-call cost. Per call the gateway
hashes the presented token once, looks its first bytes up in a dict and compares the whole digest with
`hmac.compare_digest`. Missing or unknown token: UNAUTHENTICATED; a token without the method's scope:
PERMISSION_DENIED; `security.open_services` (health, reflection) need none. Scopes: `read` (Recommend,
Search, Answer), `write` (UpsertItems, DeleteItems) and `feedback` (LogFeedback): feedback is not `read`,
because what LogFeedback writes becomes training data, and not `write`, because the serving frontends
that report impressions and clicks must not be able to change the catalog. Tokens are never logged:
rejections log the method and, when known, the token's name.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import grpc
import structlog
import yaml
from pydantic import TypeAdapter

from recstack.v1 import gateway_pb2
from server.config import Scope, SecuritySettings, TokenSpec

log = structlog.get_logger("recstack.auth")

GATEWAY_SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name
# The one place that says what each RPC needs; tests check every RPC of the service is here.
METHOD_SCOPES: Mapping[str, Scope] = {
    f"/{GATEWAY_SERVICE}/{method}": scope
    for method, scope in dict[str, Scope](
        Recommend="read",
        Search="read",
        Answer="read",
        UpsertItems="write",
        DeleteItems="write",
        LogFeedback="feedback",
    ).items()
}
BEARER = "bearer "
KEY_BYTES = 8  # digest prefix the table is keyed by; the whole digest is then compared in constant time

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


def token_digest(token: str) -> str:
    """The hex SHA-256 stored for `token`."""
    return hashlib.sha256(token.encode()).hexdigest()


def mint_token() -> tuple[str, str]:
    """A new random token and its SHA-256 hex digest."""
    token = secrets.token_urlsafe(32)
    return token, token_digest(token)


def load_tokens(security: SecuritySettings) -> list[TokenSpec]:
    """`security.tokens` plus those of `security.tokens_file` (a YAML list, or a mapping with a `tokens` list)."""
    tokens = list(security.tokens)
    if security.tokens_file is not None:
        tokens += read_tokens_file(security.tokens_file)
    return tokens


def read_tokens_file(path: Path) -> list[TokenSpec]:
    """The tokens of a YAML file; raises ValueError naming the file when it has none or a bad entry."""
    loaded = yaml.safe_load(Path(path).read_text())
    entries = loaded.get("tokens") if isinstance(loaded, dict) else loaded
    try:
        tokens = TypeAdapter(list[TokenSpec]).validate_python(entries or [])
    except ValueError as error:
        raise ValueError(f"security.tokens_file {path}: {error}") from None
    if not tokens:
        raise ValueError(f"security.tokens_file {path} holds no tokens")
    return tokens


@dataclass(frozen=True)
class Caller:
    """Who a token belongs to and what it may do."""

    name: str
    digest: bytes
    scopes: frozenset[Scope]


class TokenTable:
    """The accepted tokens, keyed by a prefix of their digest."""

    def __init__(self, tokens: Iterable[TokenSpec]) -> None:
        self._callers: dict[bytes, Caller] = {}
        for spec in tokens:
            digest = bytes.fromhex(spec.sha256)
            if digest[:KEY_BYTES] in self._callers:
                raise ValueError(f"security.tokens: token {spec.name!r} is listed twice")
            self._callers[digest[:KEY_BYTES]] = Caller(spec.name, digest, spec.scopes)

    def __len__(self) -> int:
        return len(self._callers)

    def caller(self, token: str) -> Caller | None:
        """The token's caller, or None when it is not accepted."""
        digest = hashlib.sha256(token.encode()).digest()
        found = self._callers.get(digest[:KEY_BYTES])
        if found is None or not hmac.compare_digest(found.digest, digest):
            return None
        return found


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of the call's `authorization: Bearer <token>` entry, if any."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value[: len(BEARER)].lower() == BEARER:
            return value[len(BEARER) :].strip()
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no type information
    """Rejects calls without an accepted token (UNAUTHENTICATED) or without the method's scope (PERMISSION_DENIED)."""

    def __init__(self, tokens: TokenTable, open_services: Iterable[str]) -> None:
        self._tokens = tokens
        self._open = frozenset(open_services)

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        if method.split("/")[1] in self._open:
            return await continuation(handler_call_details)
        token = bearer_token(handler_call_details.invocation_metadata)
        caller = self._tokens.caller(token) if token else None
        if caller is None:
            reason = "missing bearer token" if token is None else "unknown bearer token"
            log.warning("unauthenticated", method=method, reason=reason)
            return _rejection(await continuation(handler_call_details), grpc.StatusCode.UNAUTHENTICATED, reason)
        scope = METHOD_SCOPES.get(method)
        if scope is None or scope not in caller.scopes:
            log.warning("permission_denied", method=method, token_name=caller.name, needs=scope)
            detail = f"token {caller.name!r} lacks the {scope or 'required'} scope"
            return _rejection(await continuation(handler_call_details), grpc.StatusCode.PERMISSION_DENIED, detail)
        return await continuation(handler_call_details)


def _rejection(handler: grpc.RpcMethodHandler | None, code: grpc.StatusCode, detail: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that only aborts with `code`."""

    async def abort(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(code, detail)

    if handler is not None and handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)


def interceptors(security: SecuritySettings) -> list[grpc.aio.ServerInterceptor]:
    """The auth interceptor when tokens are configured, else none."""
    if not security.authentication:
        return []
    return [AuthInterceptor(TokenTable(load_tokens(security)), security.open_services)]


def main(argv: list[str] | None = None) -> None:
    """`python -m server token NAME [SCOPE ...]`: print a new token and its settings entry."""
    parser = argparse.ArgumentParser(prog="python -m server token", description=main.__doc__)
    parser.add_argument("name", help="who the token is for (logged instead of the token)")
    parser.add_argument("scopes", nargs="*", help="read, write and/or feedback (default: read)")
    args = parser.parse_args(argv)
    if unknown := set(args.scopes) - set(get_args(Scope)):
        parser.error(f"unknown scopes {sorted(unknown)}: use read, write and/or feedback")
    token, digest = mint_token()
    entry = {"name": args.name, "sha256": digest, "scopes": sorted(set(args.scopes or ["read"]))}
    print(f"token (give it to clients as RECSTACK_TOKEN; shown only now):\n{token}\n")
    print(f"security.tokens_file entry:\n- {json.dumps(entry)}\n")
    print(f"or, for the environment:\nRECSTACK_SECURITY__TOKENS='{json.dumps([entry])}'")
