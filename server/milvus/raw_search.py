"""Milvus search over pymilvus's generated gRPC stubs (`pymilvus.grpc_gen`), for a Milvus server's URI.

Why: the request path's searches are the gateway's most frequent Milvus call, and pymilvus builds a
Python object per hit (`SearchResult`, `Hit`) after a generic request preparation; profiled at c8, that
was ~2 ms of gateway CPU per Recommend. Here the request carries the query vectors' bytes straight from
NumPy and the answer's ids, scores and output columns are read from the reply's repeated fields into columns (`Hits`).

Same request as pymilvus sends (anns field, topk, metric, HNSW `ef`, Bounded consistency), same errors:
a non-success status is raised as pymilvus's `MilvusException`, a transport failure as `grpc.RpcError`, so
`server.milvus.errors` maps both as before. Milvus Lite has no gRPC server: `MilvusStore` keeps pymilvus
for it (and for every call that is not a search).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

import grpc
import numpy as np
from numpy.typing import NDArray
from pymilvus.client.constants import BOUNDED_TS
from pymilvus.exceptions import MilvusException
from pymilvus.grpc_gen import common_pb2, milvus_pb2, milvus_pb2_grpc, schema_pb2

from contract.schemas import VECTOR
from server.domain import Hits

DEFAULT_PORT = 19530
QUERY_TAG = "$0"  # the placeholder Milvus binds the query vectors to
# Reconnect within a second once a restarted server listens again (gRPC's default backoff grows to 120 s).
CHANNEL_OPTIONS = [("grpc.max_reconnect_backoff_ms", 1000)]


class RawSearch:
    """Searches on one Milvus server over its own gRPC channel; create it inside the event loop that uses it."""

    def __init__(self, uri: str, token: str = "", user: str = "", password: str = "") -> None:
        parts = urlsplit(uri)
        address = f"{parts.hostname}:{parts.port or DEFAULT_PORT}"
        if parts.scheme == "https":
            self._channel = grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(), CHANNEL_OPTIONS)
        else:
            self._channel = grpc.aio.insecure_channel(address, CHANNEL_OPTIONS)
        self._stub = milvus_pb2_grpc.MilvusServiceStub(self._channel)
        self._metadata = _authorization(token, user, password)

    async def search(
        self,
        collection: str,
        queries: NDArray[np.float32],
        limit: int,
        expression: str,
        output_fields: Sequence[str],
        params: Mapping[str, object],
        metric: str,
        timeout: float,
    ) -> list[Hits]:
        """Top-`limit` hits for each row of `queries` [nq, dim] (float32), best first."""
        request = milvus_pb2.SearchRequest(
            collection_name=collection,
            dsl=expression,
            dsl_type=common_pb2.BoolExprV1,
            output_fields=output_fields,
            placeholder_group=_placeholder_group(queries),
            nq=len(queries),
            search_params=_key_values(
                anns_field=VECTOR,
                topk=str(limit),
                metric_type=metric,
                params=json.dumps(dict(params)),
                round_decimal="-1",
                ignore_growing="False",
            ),
            guarantee_timestamp=BOUNDED_TS,
            consistency_level=common_pb2.Bounded,
            use_default_consistency=False,
        )
        reply = await self._stub.Search(request, timeout=timeout, metadata=self._metadata)
        status = reply.status
        if status.code != 0 or status.error_code != 0:
            raise MilvusException(status.code, status.reason, status.error_code)
        return _hits(reply.results)

    async def connected(self) -> None:
        """Return once the channel is connected, connecting it now if it is idle (it may be waiting out its
        reconnect backoff after Milvus was away: up to a second, CHANNEL_OPTIONS)."""
        await self._channel.channel_ready()

    async def close(self) -> None:
        await self._channel.close()


def _authorization(token: str, user: str, password: str) -> tuple[tuple[str, str], ...]:
    """pymilvus's authorization header: base64 of the token, or of user:password."""
    secret = token or (f"{user}:{password}" if user else "")
    return (("authorization", base64.b64encode(secret.encode()).decode()),) if secret else ()


def _placeholder_group(queries: NDArray[np.float32]) -> bytes:
    rows = np.ascontiguousarray(queries, dtype="<f4")
    placeholder = common_pb2.PlaceholderValue(
        tag=QUERY_TAG, type=common_pb2.FloatVector, values=[row.tobytes() for row in rows]
    )
    group: bytes = common_pb2.PlaceholderGroup(placeholders=[placeholder]).SerializeToString()
    return group


def _key_values(**values: str) -> list[common_pb2.KeyValuePair]:
    return [common_pb2.KeyValuePair(key=key, value=value) for key, value in values.items()]


def _hits(results: schema_pb2.SearchResultData) -> list[Hits]:
    """Per query, its hits: the reply holds every query's ids and scores back to back, `topks[i]` each."""
    ids = results.ids
    id_values = list(ids.str_id.data) if ids.WhichOneof("id_field") == "str_id" else list(map(str, ids.int_id.data))
    scores = np.array(results.scores, dtype=np.float32)
    columns = {data.field_name: _column(data) for data in results.fields_data}
    hits: list[Hits] = []
    start = 0
    for count in results.topks:
        end = start + count
        fields = {name: values[start:end] for name, values in columns.items()}
        hits.append(Hits(id_values[start:end], scores[start:end], fields))
        start = end
    return hits


def _column(data: schema_pb2.FieldData) -> list[object]:
    """A scalar output field's values (one per hit, in hit order; none when there are no hits, where
    Milvus sends the field without data)."""
    kind = data.scalars.WhichOneof("data")
    return list(getattr(data.scalars, kind).data) if kind is not None else []
