"""The one place pymilvus failures become `GatewayError`s, and the deadline every call runs under.

refused / down / internal error -> DependencyUnavailable("milvus"), deadline -> DependencyTimeout,
missing collection -> NotFound, bad argument -> InvalidArgument naming it (a filter the server cannot
evaluate -> "filters"). pymilvus opens a new channel on the next call after UNAVAILABLE, so a store
works again as soon as Milvus serves again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import TypeVar

import grpc
from pymilvus.exceptions import (
    DataNotMatchException,
    DataTypeNotMatchException,
    MilvusException,
    ParamError,
    PrimaryKeyException,
)
from pymilvus.grpc_gen import common_pb2

from server.errors import DependencyTimeout, DependencyUnavailable, GatewayError, InvalidArgument, NotFound

# pymilvus logs every failed RPC and reconnect attempt with a traceback; each failure is raised here
# as a mapped GatewayError instead, for the caller to report once.
logging.getLogger("pymilvus").setLevel(logging.CRITICAL)

T = TypeVar("T")

# Milvus status codes meaning "the request is invalid": Lite's illegal argument, 2.3+ ErrParameterInvalid.
INVALID_CODES = {6, 1100}
COLLECTION_NOT_FOUND = 100
CLIENT_SIDE_INVALID = (ParamError, DataNotMatchException, DataTypeNotMatchException, PrimaryKeyException)


async def guarded(what: str, call: Awaitable[T], timeout: float, argument: str) -> T:
    """Await `call` under `timeout` seconds (all its RPCs and pymilvus's retries together) and map every
    pymilvus failure; `argument` is the request field an invalid-argument error names."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            return await call
    except (TimeoutError, MilvusException, grpc.RpcError) as error:
        expired = time.monotonic() - started >= timeout
        raise gateway_error(error, what, argument, expired) from error


def gateway_error(error: Exception, what: str, argument: str, expired: bool) -> GatewayError:
    """The GatewayError for a failed call `what` (`expired`: its deadline had passed)."""
    if expired or isinstance(error, TimeoutError) or _grpc_code(error) == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DependencyTimeout("milvus", f"{what}: no answer within the deadline")
    if isinstance(error, CLIENT_SIDE_INVALID):
        return InvalidArgument(argument, error.message)
    if isinstance(error, MilvusException):
        if error.code == COLLECTION_NOT_FOUND or error.compatible_code == common_pb2.CollectionNotExists:
            return NotFound(f"milvus: {error.message}")
        if (
            error.code in INVALID_CODES
            or error.compatible_code == common_pb2.IllegalArgument
            or "cannot parse expression" in error.message  # 2.3.5 reports filter errors with code 65535
        ):
            return InvalidArgument(argument, error.message)
        return DependencyUnavailable("milvus", f"{what}: {error.message}")
    return DependencyUnavailable("milvus", f"{what}: {_grpc_code(error)} {error}")


def _grpc_code(error: Exception) -> grpc.StatusCode | None:
    return error.code() if isinstance(error, grpc.RpcError) else None
