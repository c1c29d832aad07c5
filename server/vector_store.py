"""The gateway's one façade over Milvus: two collections, a few async calls, errors mapped in one place.

`VectorStore(settings.milvus)`: the URI picks the engine, with the same code for both: a path ending in
`.db` opens Milvus Lite in this process (tests, small catalogs; one store per file, `close` stops its
in-process server), `http(s)://host:port` a Milvus server or cluster. Create the store in the event loop
that uses it and call `ensure_collections` before serving (it also loads the collections, which Lite
does not do when a file is reopened). Calls go through pymilvus's `AsyncMilvusClient` (it beat the sync
client in a thread pool, shared PLAYBOOK); only `ensure_collections` uses the sync `MilvusClient`, in a
worker thread, because the async client's index creation calls `AllocTimestamp`, which Lite lacks.

Collections (primary key `id` VARCHAR(64), `vector` FLOAT_VECTOR(dim), HNSW index, metric IP):
  news:     title, category, subcategory, published INT64 (unix s, 0 = unknown), popularity FLOAT;
            NRMS scores are dot products of unnormalised vectors.
  passages: text, title, category, doc_id, published; vectors are L2-normalised (IP = cosine).
VARCHAR limits count UTF-8 bytes (title 8 KiB, text 32 KiB, category 128 B): see NEWS_FIELDS.

Every call has a deadline (`timeout=`, default from settings) enforced here over all the RPCs it makes;
pymilvus's own retry loop (75 tries by default) is bounded by the same deadline, and when the server
is down its reconnect attempt fails at once, so such a call fails in milliseconds. Errors map in
`_gateway_error`: refused / down / internal error -> DependencyUnavailable("milvus"), deadline ->
DependencyTimeout, missing collection -> NotFound, bad argument -> InvalidArgument naming it (a filter
the server cannot evaluate -> "filters"). pymilvus opens a new channel on the next call after
UNAVAILABLE, so the same store works again as soon as Milvus serves again.

Read-your-writes, designed for Milvus 2.3.5 (shared PLAYBOOK): writes wait, reads don't.
  `upsert` and `delete` return once the write is visible: after the mutation they run one
  Strong-consistency query, which waits until the query nodes have consumed everything written before
  it. Reads (search, get, count, iterate) use Bounded consistency, which waits only when the query
  nodes lag more than 5 s (e.g. just after a restart) and reads their current state, so an acknowledged
  write is visible to the next request from this gateway or any other client.
  Measured on the local 2.3.5 server (default 200 ms time tick, 5k rows, dim 256, busy 2-core machine):
  one-row upsert p50 201 ms / p90 400 ms (3 ms without the wait); the search right after it p50 4.3 ms
  and saw the write 20/20; 20/20 deletes gone from the next search; steady search p50 4.8 ms.
  A Bounded search without the wait saw 0/20 fresh upserts.
  Rejected: pymilvus "Session" consistency (this process's last write timestamp as the guarantee). It
  moves the wait onto the first read after each write (search p50 197 ms right after an upsert, 6.1 ms
  steady), holds per process only, and misses deletes on 2.3.5, whose Delete reply carries no
  timestamp (1/20 deletes gone from the next read).
  Cost and limits: one time-tick wait per upsert/delete call, however many rows (bulk: 5.5k rows/s);
  with several in-memory replicas of a collection a read may reach a replica that has not caught up,
  so such deployments need Strong reads or a shared guarantee timestamp. Durability needs no `flush`
  (acknowledged writes survived a stop and restart; a flush cost ~1 s per collection).

Filters are built as expressions from validated values (`Filters`); strings are quoted and escaped
here, never interpolated raw (pymilvus's own id quoting does not escape, so ids go through it too).
"""

from __future__ import annotations

import asyncio
import logging
import time
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
from pymilvus import AsyncMilvusClient, CollectionSchema, DataType, FieldSchema, MilvusClient
from pymilvus.exceptions import (
    DataNotMatchException,
    DataTypeNotMatchException,
    MilvusException,
    ParamError,
    PrimaryKeyException,
)
from pymilvus.grpc_gen import common_pb2

from server.config import MilvusSettings
from server.errors import (
    DependencyTimeout,
    DependencyUnavailable,
    GatewayError,
    InvalidArgument,
    NotFound,
)

# pymilvus logs every failed RPC and reconnect attempt with a traceback; this module raises each failure
# as a mapped GatewayError instead, for the caller to report once.
logging.getLogger("pymilvus").setLevel(logging.CRITICAL)

T = TypeVar("T")

ID = "id"
VECTOR = "vector"
ID_MAX_BYTES = 64
MAX_LIMIT = 16384  # Milvus's largest topK
METRIC = "IP"
INDEX = "HNSW"
# Milvus status codes meaning "the request is invalid": Lite's illegal argument, 2.3+ ErrParameterInvalid.
INVALID_CODES = {6, 1100}
CLIENT_SIDE_INVALID = (ParamError, DataNotMatchException, DataTypeNotMatchException, PrimaryKeyException)


class SchemaMismatch(RuntimeError):
    """An existing collection differs from the schema this gateway expects (raised by ensure_collections)."""


@dataclass(frozen=True)
class ScalarField:
    name: str
    dtype: DataType
    max_bytes: int | None = None  # VARCHAR only


# VARCHAR limits are UTF-8 bytes: 4 per character at worst, so a 2000-character title or an
# 8000-character passage (the gateway's request limits) always fits.
TITLE_MAX_BYTES = 8192
TEXT_MAX_BYTES = 32768
NEWS_FIELDS = (
    ScalarField("title", DataType.VARCHAR, TITLE_MAX_BYTES),
    ScalarField("category", DataType.VARCHAR, 128),
    ScalarField("subcategory", DataType.VARCHAR, 128),
    ScalarField("published", DataType.INT64),
    ScalarField("popularity", DataType.FLOAT),
)
PASSAGE_FIELDS = (
    ScalarField("text", DataType.VARCHAR, TEXT_MAX_BYTES),
    ScalarField("title", DataType.VARCHAR, TITLE_MAX_BYTES),
    ScalarField("category", DataType.VARCHAR, 128),
    ScalarField("doc_id", DataType.VARCHAR, ID_MAX_BYTES),
    ScalarField("published", DataType.INT64),
)


@dataclass(frozen=True)
class CollectionSpec:
    """What one collection must look like: id, vector(dim) and `scalars`."""

    name: str
    dim: int
    scalars: tuple[ScalarField, ...]

    def schema(self) -> CollectionSchema:
        fields = [
            FieldSchema(ID, DataType.VARCHAR, is_primary=True, max_length=ID_MAX_BYTES),
            FieldSchema(VECTOR, DataType.FLOAT_VECTOR, dim=self.dim),
            *(
                FieldSchema(f.name, f.dtype, **({"max_length": f.max_bytes} if f.max_bytes else {}))
                for f in self.scalars
            ),
        ]
        return CollectionSchema(fields, enable_dynamic_field=False)

    def signature(self) -> dict[str, tuple[str, int | None, bool]]:
        """Field name -> (type, dim or max length, is primary): what ensure_collections compares."""
        return _signature(field.to_dict() for field in self.schema().fields)


def _signature(fields: Iterable[Mapping[str, Any]]) -> dict[str, tuple[str, int | None, bool]]:
    """The comparable form of describe_collection()['fields'] (or FieldSchema.to_dict()s)."""
    signature = {}
    for f in fields:
        params = f.get("params", {})
        size = params.get("dim", params.get("max_length"))
        signature[f["name"]] = (
            DataType(f["type"]).name,
            int(size) if size is not None else None,
            bool(f.get("is_primary")),
        )
    return signature


def _schema_problems(spec: CollectionSpec, fields: Iterable[Mapping[str, Any]]) -> list[str]:
    """How the described `fields` of an existing collection differ from `spec` (empty when they match)."""
    expected, found = spec.signature(), _signature(fields)
    return [
        f"{name}: expected {expected.get(name, 'no field')}, found {found.get(name, 'no field')}"
        for name in sorted(expected.keys() | found.keys())
        if expected.get(name) != found.get(name)
    ]


@dataclass(frozen=True)
class Filters:
    """Restrictions on search results; empty means none.

    `categories`: keep items whose category is one of these. `published_after`: keep items published
    strictly after this instant (unix seconds); items with unknown date (published 0) are then excluded.
    """

    categories: Sequence[str] = ()
    published_after: int | None = None

    def expression(self) -> str:
        """The Milvus boolean expression ('' for no restriction); InvalidArgument names a bad field."""
        clauses = []
        if isinstance(self.categories, str) or not isinstance(self.categories, Sequence):
            raise InvalidArgument("filters.categories", "must be a list of strings")
        if self.categories:
            literals = [_string_literal(c, f"filters.categories[{i}]") for i, c in enumerate(self.categories)]
            clauses.append(f"category in [{', '.join(literals)}]")
        if self.published_after is not None:
            after = self.published_after
            if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after < 2**63:
                raise InvalidArgument("filters.published_after", f"must be unix seconds >= 0, got {after!r}")
            clauses.append(f"published > {after}")
        return " and ".join(clauses)


def _string_literal(value: object, field_name: str) -> str:
    """`value` as a double-quoted Milvus string literal.

    Backslash and double quote are escaped (Milvus Lite's and the server's parsers both read `\\\\` and
    `\\"`); control characters, which the two parsers treat differently, and unpaired surrogates (not
    encodable) are rejected.
    """
    if not isinstance(value, str):
        raise InvalidArgument(field_name, f"must be a string, got {type(value).__name__}")
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
        raise InvalidArgument(field_name, "must not contain control characters or unpaired surrogates")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ids_expression(ids: Sequence[str]) -> str:
    return f"{ID} in [{', '.join(_string_literal(i, f'ids[{n}]') for n, i in enumerate(ids))}]"


@dataclass(frozen=True)
class Hit:
    """One search result: `score` is the inner product (higher is closer); `fields` the requested outputs."""

    id: str
    score: float
    fields: dict[str, Any]


@dataclass(frozen=True)
class _Layout:
    """What calls need to know about a collection, read once from the server."""

    dim: int
    fields: frozenset[str]


@dataclass
class VectorStore:
    """Async access to the news and passage collections; create it inside the event loop that uses it."""

    settings: MilvusSettings
    _client: AsyncMilvusClient = field(init=False, repr=False)
    _layouts: dict[str, _Layout] = field(default_factory=dict, init=False, repr=False)
    _ensured: tuple[str, ...] = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        if self.is_lite:
            Path(self.settings.uri).parent.mkdir(parents=True, exist_ok=True)
        # dedicated: this store owns its channel, so close() really closes it.
        self._client = AsyncMilvusClient(
            self.settings.uri, token=self.settings.token, timeout=self.settings.timeout_s, dedicated=True
        )

    @property
    def is_lite(self) -> bool:
        """True when the URI is a Milvus Lite file (pymilvus's rule: a path ending in .db)."""
        return self.settings.uri.endswith(".db")

    # ---- setup -------------------------------------------------------------------------------------

    async def ensure_collections(self, news_dim: int, passage_dim: int, timeout: float | None = None) -> None:
        """Create the two collections (schema, HNSW index, loaded) if missing; check them if present.

        Idempotent. Raises SchemaMismatch when an existing collection differs (fields, dim, lengths, metric).
        """
        specs = (
            CollectionSpec(self.settings.news_collection, news_dim, NEWS_FIELDS),
            CollectionSpec(self.settings.passage_collection, passage_dim, PASSAGE_FIELDS),
        )
        budget = timeout or self.settings.setup_timeout_s
        await self._call("ensure_collections", asyncio.to_thread(self._ensure_all, specs, budget), budget, "dims")
        self._layouts.clear()
        self._ensured = tuple(spec.name for spec in specs)

    def _ensure_all(self, specs: Sequence[CollectionSpec], timeout: float) -> None:
        client = MilvusClient(self.settings.uri, token=self.settings.token, timeout=timeout, dedicated=True)
        try:
            for spec in specs:
                self._ensure(client, spec, timeout)
        finally:
            client.close()

    def _ensure(self, client: MilvusClient, spec: CollectionSpec, timeout: float) -> None:
        index = client.prepare_index_params()
        index.add_index(
            VECTOR,
            index_type=INDEX,
            metric_type=METRIC,
            params={"M": self.settings.hnsw_m, "efConstruction": self.settings.hnsw_ef_construction},
        )
        if not client.has_collection(spec.name, timeout=timeout):
            # Creates, indexes and loads. Bounded is the default for other clients; this store sets levels per call.
            client.create_collection(
                spec.name, schema=spec.schema(), index_params=index, consistency_level="Bounded", timeout=timeout
            )
            return
        problems = _schema_problems(spec, client.describe_collection(spec.name, timeout=timeout)["fields"])
        if not problems:
            if not client.list_indexes(spec.name, field_name=VECTOR, timeout=timeout):
                client.create_index(spec.name, index, timeout=timeout)  # an earlier setup stopped half-way
            metrics = {
                client.describe_index(spec.name, name, timeout=timeout).get("metric_type")
                for name in client.list_indexes(spec.name, field_name=VECTOR, timeout=timeout)
            }
            problems = [f"{VECTOR} index metric: expected {METRIC}, found {metric}" for metric in metrics - {METRIC}]
        if problems:
            raise SchemaMismatch(
                f"milvus collection '{spec.name}' does not match this gateway ({'; '.join(problems)}); "
                "drop it or configure another collection name"
            )
        client.load_collection(spec.name, timeout=timeout)

    # ---- writes ------------------------------------------------------------------------------------

    async def upsert(self, collection: str, rows: Sequence[Mapping[str, Any]], timeout: float | None = None) -> int:
        """Insert or replace rows (all schema fields; vectors as float arrays); visible to reads on return.

        Returns the number of rows written. Never `insert`: on the server a repeated id would duplicate.
        """
        last_id = _check_rows(rows)
        if last_id is None:
            return 0
        budget = timeout or self.settings.write_timeout_s
        return await self._call("upsert", self._upsert(collection, rows, last_id, budget), budget, "rows")

    async def _upsert(self, collection: str, rows: Sequence[Mapping[str, Any]], last_id: str, timeout: float) -> int:
        for start in range(0, len(rows), self.settings.write_batch_rows):
            batch = [dict(row) for row in rows[start : start + self.settings.write_batch_rows]]
            await self._client.upsert(collection, batch, timeout=timeout)
        await self._wait_visible(collection, last_id, timeout)
        return len(rows)

    async def delete(self, collection: str, ids: Sequence[str], timeout: float | None = None) -> int:
        """Delete rows by id; returns how many of them existed. Invisible to reads on return."""
        ids = _unique_ids(ids)
        if not ids:
            return 0
        budget = timeout or self.settings.write_timeout_s
        return await self._call("delete", self._delete(collection, ids, budget), budget, "ids")

    async def _delete(self, collection: str, ids: list[str], timeout: float) -> int:
        existed = 0
        for chunk in _chunks(ids, self.settings.read_batch_ids):
            expression = _ids_expression(chunk)
            found = await self._client.query(
                collection, filter=expression, output_fields=[ID], consistency_level="Bounded", timeout=timeout
            )
            existed += len(found)
            # Delete every requested id, not only those found: a concurrent upsert may have added one.
            await self._client.delete(collection, filter=expression, timeout=timeout)
        await self._wait_visible(collection, ids[-1], timeout)
        return existed

    async def _wait_visible(self, collection: str, any_id: str, timeout: float) -> None:
        """Return once every write acknowledged so far is visible: a Strong read waits for the query nodes."""
        await self._client.query(
            collection,
            filter=_ids_expression([any_id]),
            output_fields=[ID],
            limit=1,
            consistency_level="Strong",
            timeout=timeout,
        )

    # ---- reads -------------------------------------------------------------------------------------

    async def search(
        self,
        collection: str,
        vectors: np.ndarray,
        limit: int,
        filters: Filters | None = None,
        output_fields: Sequence[str] = (),
        timeout: float | None = None,
    ) -> list[list[Hit]]:
        """Top-`limit` hits by inner product for each row of `vectors` [nq, dim], best first."""
        expression = (filters or Filters()).expression()
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise InvalidArgument("limit", f"must be an integer in [1, {MAX_LIMIT}], got {limit!r}")
        budget = timeout or self.settings.timeout_s
        # Vectors and output fields are checked against the collection first, so what the server can
        # still reject is the filter expression.
        search = self._search(collection, vectors, limit, expression, list(output_fields), budget)
        return await self._call("search", search, budget, "filters")

    async def _search(
        self, collection: str, vectors: np.ndarray, limit: int, expression: str, fields: list[str], timeout: float
    ) -> list[list[Hit]]:
        layout = await self._layout(collection, timeout)
        queries = _query_vectors(vectors, layout.dim)
        _check_fields(fields, layout, collection, "output_fields")
        result = await self._client.search(
            collection,
            data=queries,
            filter=expression,
            limit=limit,
            output_fields=fields,
            search_params={"metric_type": METRIC, "params": {"ef": max(self.settings.search_ef, limit)}},
            consistency_level="Bounded",
            timeout=timeout,
        )
        return [
            [Hit(str(hit[ID]), float(hit["distance"]), dict(hit.get("entity", {}))) for hit in hits] for hits in result
        ]

    async def get(
        self, collection: str, ids: Sequence[str], fields: Sequence[str] = (), timeout: float | None = None
    ) -> dict[str, dict[str, Any]]:
        """Rows by id (missing ids are absent), each with `id` and `fields`; vectors as float32 arrays."""
        ids = _unique_ids(ids)
        if not ids:
            return {}
        budget = timeout or self.settings.timeout_s
        return await self._call("get", self._get(collection, ids, [ID, *fields], budget), budget, "ids")

    async def _get(
        self, collection: str, ids: list[str], fields: list[str], timeout: float
    ) -> dict[str, dict[str, Any]]:
        _check_fields(fields, await self._layout(collection, timeout), collection, "fields")
        rows: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(ids, self.settings.read_batch_ids):
            found = await self._client.query(
                collection,
                filter=_ids_expression(chunk),
                output_fields=fields,
                consistency_level="Bounded",
                timeout=timeout,
            )
            for row in found:
                rows[row[ID]] = {name: _value(name, row[name]) for name in fields}
        return rows

    async def iterate(
        self, collection: str, fields: Sequence[str] = (), batch_size: int | None = None, timeout: float | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Every row (as `get` returns them) in id order, fetched `batch_size` ids at a time.

        Lists all ids first (one query, a few MB per million rows), then fetches them in batches: this
        works the same on Lite and the server without relying on result order. Rows deleted meanwhile
        are skipped; `timeout` applies to each query.
        """
        batch = self.settings.read_batch_ids if batch_size is None else batch_size
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise InvalidArgument("batch_size", f"must be a positive integer, got {batch_size!r}")
        budget = timeout or self.settings.timeout_s
        found = await self._call(
            "iterate",
            self._client.query(
                collection, filter=f'{ID} != ""', output_fields=[ID], consistency_level="Bounded", timeout=budget
            ),
            budget,
            "collection",
        )
        ids = sorted(row[ID] for row in found)
        for chunk in _chunks(ids, batch):
            rows = await self.get(collection, chunk, fields, timeout=budget)
            for row_id in chunk:
                if row_id in rows:
                    yield rows[row_id]

    async def query(
        self,
        collection: str,
        filters: Filters | None,
        output_fields: Sequence[str],
        limit: int,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        """Up to `limit` rows matching `filters` (in no particular order), as `get` returns them."""
        expression = (filters or Filters()).expression() or f'{ID} != ""'
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise InvalidArgument("limit", f"must be an integer in [1, {MAX_LIMIT}], got {limit!r}")
        budget = timeout or self.settings.timeout_s
        rows = self._query(collection, expression, [ID, *output_fields], limit, budget)
        return await self._call("query", rows, budget, "filters")

    async def _query(
        self, collection: str, expression: str, fields: list[str], limit: int, timeout: float
    ) -> list[dict[str, Any]]:
        _check_fields(fields, await self._layout(collection, timeout), collection, "output_fields")
        found = await self._client.query(
            collection,
            filter=expression,
            output_fields=fields,
            limit=limit,
            consistency_level="Bounded",
            timeout=timeout,
        )
        return [{name: _value(name, row[name]) for name in fields} for row in found]

    async def count(self, collection: str, timeout: float | None = None) -> int:
        """Number of rows in the collection."""
        budget = timeout or self.settings.timeout_s
        result = await self._call(
            "count",
            self._client.query(
                collection, filter="", output_fields=["count(*)"], consistency_level="Bounded", timeout=budget
            ),
            budget,
            "collection",
        )
        return int(result[0]["count(*)"])

    # ---- lifecycle ---------------------------------------------------------------------------------

    async def ready(self) -> bool:
        """True when Milvus serves reads of the collections ensured by this store (or, before
        ensure_collections, answers at all); never raises."""
        budget = self.settings.health_timeout_s
        try:
            async with asyncio.timeout(budget):
                if not self._ensured:
                    await self._client.list_collections(timeout=budget)
                for name in self._ensured:
                    await self._client.query(
                        name, filter="", output_fields=["count(*)"], consistency_level="Bounded", timeout=budget
                    )
                return True
        except Exception:  # a health probe reports, it does not raise
            return False

    async def close(self) -> None:
        """Close the connection; for Milvus Lite also stop its in-process server so the file is released."""
        await self._client.close()
        if self.is_lite:
            from milvus_lite.server_manager import server_manager_instance  # only installed where Lite is used

            server_manager_instance.release_server(self.settings.uri)

    async def __aenter__(self) -> VectorStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- helpers: the collection layout and the one place that maps pymilvus's errors -------------

    async def _layout(self, collection: str, timeout: float) -> _Layout:
        if collection not in self._layouts:
            fields = (await self._client.describe_collection(collection, timeout=timeout))["fields"]
            dim = next(int(f["params"]["dim"]) for f in fields if f["type"] == DataType.FLOAT_VECTOR)
            self._layouts[collection] = _Layout(dim, frozenset(f["name"] for f in fields))
        return self._layouts[collection]

    async def _call(self, what: str, call: Awaitable[T], timeout: float, argument: str) -> T:
        """Await one operation under its deadline and map every pymilvus failure to a GatewayError."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                return await call
        except (TimeoutError, MilvusException, grpc.RpcError) as error:
            expired = time.monotonic() - started >= timeout
            raise _gateway_error(error, f"{what} ({self.settings.uri})", argument, expired) from error


def _gateway_error(error: Exception, what: str, argument: str, expired: bool) -> GatewayError:
    if expired or isinstance(error, TimeoutError) or _grpc_code(error) == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DependencyTimeout("milvus", f"{what}: no answer within the deadline")
    if isinstance(error, CLIENT_SIDE_INVALID):
        return InvalidArgument(argument, error.message)
    if isinstance(error, MilvusException):
        if error.code == 100 or error.compatible_code == common_pb2.CollectionNotExists:
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


def _check_rows(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """Each row is a mapping with a valid string id; returns the last id (None when there are no rows)."""
    if isinstance(rows, str | Mapping) or not isinstance(rows, Sequence):
        raise InvalidArgument("rows", "must be a list of mappings")
    for n, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise InvalidArgument(f"rows[{n}]", f"must be a mapping, got {type(row).__name__}")
        _string_literal(row.get(ID), f"rows[{n}].{ID}")
        if not row[ID]:
            raise InvalidArgument(f"rows[{n}].{ID}", "must not be empty")
    return rows[-1][ID] if rows else None


def _unique_ids(ids: Sequence[str]) -> list[str]:
    if isinstance(ids, str) or not isinstance(ids, Sequence):
        raise InvalidArgument("ids", "must be a list of strings")
    for n, value in enumerate(ids):
        _string_literal(value, f"ids[{n}]")
    return list(dict.fromkeys(ids))


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _query_vectors(vectors: np.ndarray, dim: int) -> np.ndarray:
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] != dim:
        raise InvalidArgument("vectors", f"must have shape [nq >= 1, {dim}], got {list(array.shape)}")
    if not np.isfinite(array).all():
        raise InvalidArgument("vectors", "must be finite")
    return array


def _check_fields(names: Sequence[str], layout: _Layout, collection: str, argument: str) -> None:
    if isinstance(names, str):
        raise InvalidArgument(argument, "must be a list of field names")
    unknown = [name for name in names if name not in layout.fields]
    if unknown:
        raise InvalidArgument(argument, f"collection '{collection}' has no field {', '.join(map(repr, unknown))}")


def _value(name: str, value: Any) -> Any:
    return np.asarray(value, dtype=np.float32) if name == VECTOR else value
