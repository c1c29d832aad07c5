"""Errors the gateway's components raise; `server.grpc_errors` maps each to one gRPC status code.

Components (Triton and Milvus façades, the LLM client, pipeline stages) raise these and nothing
else for expected failures, so error mapping lives in one place instead of at every call site.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base class: an expected failure with a message fit for the caller."""


class InvalidArgument(GatewayError):
    """The request is malformed; `field` names the offending request field (e.g. 'k', 'filters.categories')."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class NotFound(GatewayError):
    """A named thing (model, collection, item) does not exist."""


class DependencyUnavailable(GatewayError):
    """A dependency (triton, milvus, llm) refused the connection, is not ready, or failed internally."""

    def __init__(self, dependency: str, detail: str) -> None:
        super().__init__(f"{dependency} unavailable: {detail}")
        self.dependency = dependency


class DependencyTimeout(GatewayError):
    """A dependency did not answer within the call's deadline."""

    def __init__(self, dependency: str, detail: str) -> None:
        super().__init__(f"{dependency} timed out: {detail}")
        self.dependency = dependency


class Overloaded(GatewayError):
    """A bounded queue or concurrency limit is full; the caller may retry later.

    `retry_pushback_ms`, when given, is sent as gRPC's retry pushback hint (`grpc-retry-pushback-ms`):
    how long to wait before retrying, or negative for "do not retry".
    """

    def __init__(self, message: str, retry_pushback_ms: int | None = None) -> None:
        super().__init__(message)
        self.retry_pushback_ms = retry_pushback_ms
