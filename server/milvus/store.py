"""`MilvusStore`: the gateway's one façade over Milvus: two collections, a few async calls.

`MilvusStore(settings.milvus)`: the URI picks the engine, with the same code for both: a path ending in
`.db` opens Milvus Lite in this process (tests, small catalogs; one store per file, `close` stops its
in-process server), `http(s)://host:port` a Milvus server or cluster. Create the store in the event loop
that uses it and call `ensure_collections` before serving (it also loads the collections, which Lite
does not do when a file is reopened). Calls go through pymilvus's `AsyncMilvusClient` (it beat the sync
client in a thread pool, shared PLAYBOOK); only `ensure_collections` uses the sync `MilvusClient`, in a
worker thread, because the async client's index creation calls `AllocTimestamp`, which Lite lacks.

Every call has a deadline (`timeout=`, default from settings) over all the RPCs it makes; pymilvus's own
retry loop (75 tries by default) is bounded by the same deadline, and when the server is down its
reconnect attempt fails at once, so such a call fails in milliseconds. Errors map in
`server.milvus.errors`, arguments are checked in `server.milvus.arguments`, filters are compiled in
`server.milvus.expressions`, schemas come from `server.milvus.schema`. On a server URI, `search` (the
request path's call) goes over pymilvus's generated stubs instead (`server.milvus.raw_search`): same
request, no per-hit objects; Lite has no gRPC server and keeps the client's search.

Read-your-writes, designed for Milvus 2.3.5 (shared PLAYBOOK): writes wait, reads don't.
  `upsert` and `delete` return once the write is visible: after the mutation they run one
  Strong-consistency query, which waits until the query nodes have consumed everything written before
  it. Reads (search, get, query, count, iterate) use Bounded consistency, which waits only when the
  query nodes lag more than 5 s (e.g. just after a restart) and reads their current state, so an
  acknowledged write is visible to the next request from this gateway or any other client.
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
  (acknowledged writes survived a stop, and a SIGKILL right after the acknowledgement, then a restart:
  tests/test_reliability_stack.py; a flush cost ~1 s per collection). Not claimed: a machine crash.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np
from numpy.typing import NDArray
from pymilvus import AsyncMilvusClient, MilvusClient

from contract.schemas import ID, NEWS_FIELDS, PASSAGE_FIELDS, VECTOR
from server.circuit import Circuit
from server.config import MilvusSettings
from server.domain import Filters, Hit, Hits
from server.errors import DependencyUnavailable
from server.milvus import lite
from server.milvus.arguments import check_fields, check_limit, check_rows, query_vectors, unique_ids
from server.milvus.errors import guarded
from server.milvus.expressions import EVERY_ROW, after_id_expression, filter_expression, ids_expression
from server.milvus.raw_search import RawSearch
from server.milvus.schema import METRIC, CollectionSpec, HnswParams, Layout, ensure_collection

T = TypeVar("T")

DEFAULT_PORT = 19530  # Milvus's gRPC port when a URI names none
REFUSED_RECHECK_S = 0.25  # how often calls re-check a Milvus port found refusing connections
# The query parameter of pymilvus's query_iterator: a limited query then returns the first rows in id order.
PK_ORDER = {"iterator": "True"}


@dataclass
class MilvusStore:
    """Async access to the news and passage collections; create it inside the event loop that uses it."""

    settings: MilvusSettings
    _client: AsyncMilvusClient = field(init=False, repr=False)
    _layouts: dict[str, Layout] = field(default_factory=dict, init=False, repr=False)
    _ensured: tuple[str, ...] = field(default=(), init=False, repr=False)
    _raw: RawSearch | None = field(default=None, init=False, repr=False)
    _refused_since: float | None = field(default=None, init=False, repr=False)
    _refused_checked_at: float = field(default=0.0, init=False, repr=False)
    circuit: Circuit = field(init=False, repr=False)

    def __post_init__(self) -> None:
        lite.prepare(self.settings.uri)
        self.circuit = Circuit("milvus", self.settings.stall_after_s)
        # dedicated: this store owns its channel, so close() really closes it.
        self._client = AsyncMilvusClient(**self.connection, timeout=self.settings.timeout_s, dedicated=True)

    @property
    def connection(self) -> dict[str, str]:
        """Where and as whom to connect: an `https://` URI means TLS, pymilvus's own rule."""
        s = self.settings
        return {"uri": s.uri, "token": s.token, "user": s.user, "password": s.password}

    @property
    def is_lite(self) -> bool:
        """True when the URI is a Milvus Lite file."""
        return lite.is_lite(self.settings.uri)

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
        await self._call(
            "ensure_collections", asyncio.to_thread(self._ensure_all, specs, budget), budget, "dims", watched=False
        )
        self._layouts.clear()
        self._ensured = tuple(spec.name for spec in specs)

    def _ensure_all(self, specs: Sequence[CollectionSpec], timeout: float) -> None:
        hnsw = HnswParams(self.settings.hnsw_m, self.settings.hnsw_ef_construction)
        client = MilvusClient(**self.connection, timeout=timeout, dedicated=True)
        try:
            for spec in specs:
                ensure_collection(client, spec, hnsw, timeout)
        finally:
            client.close()

    # ---- writes ------------------------------------------------------------------------------------

    async def upsert(self, collection: str, rows: Sequence[Mapping[str, Any]], timeout: float | None = None) -> int:
        """Insert or replace rows (all schema fields; vectors as float arrays); visible to reads on return.

        Returns the number of rows written. Never `insert`: on the server a repeated id would duplicate.
        """
        last_id = check_rows(rows)
        if last_id is None:
            return 0
        budget = timeout or self.settings.write_timeout_s
        return await self._call(
            "upsert", self._upsert(collection, rows, last_id, budget), budget, "rows", watched=False
        )

    async def _upsert(self, collection: str, rows: Sequence[Mapping[str, Any]], last_id: str, timeout: float) -> int:
        for start in range(0, len(rows), self.settings.write_batch_rows):
            batch = [dict(row) for row in rows[start : start + self.settings.write_batch_rows]]
            await self._client.upsert(collection, batch, timeout=timeout)
        await self._wait_visible(collection, last_id, timeout)
        return len(rows)

    async def delete(self, collection: str, ids: Sequence[str], timeout: float | None = None) -> int:
        """Delete rows by id; returns how many of them existed. Invisible to reads on return."""
        unique = unique_ids(ids)
        if not unique:
            return 0
        budget = timeout or self.settings.write_timeout_s
        return await self._call("delete", self._delete(collection, unique, budget), budget, "ids", watched=False)

    async def _delete(self, collection: str, ids: list[str], timeout: float) -> int:
        existed = 0
        for chunk in _chunks(ids, self.settings.read_batch_ids):
            expression = ids_expression(chunk)
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
            filter=ids_expression([any_id]),
            output_fields=[ID],
            limit=1,
            consistency_level="Strong",
            timeout=timeout,
        )

    # ---- reads -------------------------------------------------------------------------------------

    async def search(
        self,
        collection: str,
        vectors: NDArray[np.float32],
        limit: int,
        filters: Filters | None = None,
        output_fields: Sequence[str] = (),
        timeout: float | None = None,
    ) -> list[Hits]:
        """Top-`limit` hits by inner product for each row of `vectors` [nq, dim], best first."""
        expression = filter_expression(filters or Filters())
        check_limit(limit, "limit")
        budget = timeout or self.settings.timeout_s
        # Vectors and output fields are checked against the collection first, so what the server can
        # still reject is the filter expression.
        search = self._search(collection, vectors, limit, expression, list(output_fields), budget)
        return await self._call("search", search, budget, "filters")

    async def _search(
        self,
        collection: str,
        vectors: NDArray[np.float32],
        limit: int,
        expression: str,
        fields: list[str],
        timeout: float,
    ) -> list[Hits]:
        layout = await self._layout(collection, timeout)
        queries = query_vectors(vectors, layout.dim)
        check_fields(fields, layout.fields, collection, "output_fields")
        params = {"ef": max(self.settings.search_ef, limit)}
        if not self.is_lite:
            raw = self._raw or self._open_raw_search()
            return await raw.search(collection, queries, limit, expression, fields, params, METRIC, timeout)
        result = await self._client.search(
            collection,
            data=queries,
            filter=expression,
            limit=limit,
            output_fields=fields,
            search_params={"metric_type": METRIC, "params": params},
            consistency_level="Bounded",
            timeout=timeout,
        )
        return [
            Hits.of((Hit(str(hit[ID]), float(hit["distance"]), dict(hit.get("entity", {}))) for hit in hits), fields)
            for hits in result
        ]

    async def get(
        self, collection: str, ids: Sequence[str], fields: Sequence[str] = (), timeout: float | None = None
    ) -> dict[str, dict[str, Any]]:
        """Rows by id (missing ids are absent), each with `id` and `fields`; vectors as float32 arrays."""
        unique = unique_ids(ids)
        if not unique:
            return {}
        budget = timeout or self.settings.timeout_s
        return await self._call("get", self._get(collection, unique, [ID, *fields], budget), budget, "ids")

    async def _get(
        self, collection: str, ids: list[str], fields: list[str], timeout: float
    ) -> dict[str, dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(ids, self.settings.read_batch_ids):
            found = await self._read(collection, ids_expression(chunk), fields, timeout, "fields")
            rows.update((row[ID], row) for row in found)
        return rows

    async def iterate(
        self, collection: str, fields: Sequence[str] = (), batch_size: int | None = None, timeout: float | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Every row (as `get` returns them) in id order, in pages of `batch_size` rows.

        Each page is one query for the first `batch_size` rows after the previous page's last id, `timeout`
        applying to each; rows written or deleted meanwhile may or may not be seen. The query carries
        pymilvus's iterator flag (as its `query_iterator` does), under which Lite and the 2.3.5 server return
        the rows in primary-key order; without it Lite returns any `batch_size` matching rows (tests check both).
        """
        page_size = check_limit(self.settings.read_batch_ids if batch_size is None else batch_size, "batch_size")
        budget = timeout or self.settings.timeout_s
        wanted = [ID, *fields]
        last_id: str | None = None
        while True:
            expression = after_id_expression(last_id)
            page = self._read(collection, expression, wanted, budget, "fields", limit=page_size, **PK_ORDER)
            rows = await self._call("iterate", page, budget, "collection", watched=False)
            for row in rows:
                yield row
            if len(rows) < page_size:
                return
            last_id = rows[-1][ID]

    async def query(
        self,
        collection: str,
        filters: Filters | None,
        output_fields: Sequence[str],
        limit: int,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        """Up to `limit` rows matching `filters` (in no particular order), as `get` returns them."""
        expression = filter_expression(filters or Filters()) or EVERY_ROW
        check_limit(limit, "limit")
        budget = timeout or self.settings.timeout_s
        rows = self._read(collection, expression, [ID, *output_fields], budget, "output_fields", limit=limit)
        return await self._call("query", rows, budget, "filters")

    async def _read(
        self, collection: str, expression: str, fields: list[str], timeout: float, argument: str, **options: Any
    ) -> list[dict[str, Any]]:
        """Rows matching `expression` with `fields` (checked against the collection; named `argument`);
        `options` are further query parameters (limit, ...)."""
        check_fields(fields, (await self._layout(collection, timeout)).fields, collection, argument)
        found = await self._client.query(
            collection,
            filter=expression,
            output_fields=fields,
            consistency_level="Bounded",
            timeout=timeout,
            **options,
        )
        return [{name: _row_value(name, row[name]) for name in fields} for row in found]

    async def count(self, collection: str, timeout: float | None = None) -> int:
        """Number of rows in the collection."""
        budget = timeout or self.settings.timeout_s
        result = await self._call("count", self._count(collection, budget), budget, "collection")
        return int(result[0]["count(*)"])

    def _count(self, collection: str, timeout: float) -> Awaitable[list[dict[str, Any]]]:
        query: Awaitable[list[dict[str, Any]]] = self._client.query(
            collection, filter="", output_fields=["count(*)"], consistency_level="Bounded", timeout=timeout
        )
        return query

    async def collection_names(self, timeout: float | None = None) -> list[str]:
        """Every collection's name."""
        budget = timeout or self.settings.timeout_s
        names: list[str] = await self._call(
            "list_collections", self._client.list_collections(timeout=budget), budget, "timeout"
        )
        return names

    async def aliases(self, collections: Sequence[str] | None = None, timeout: float | None = None) -> dict[str, str]:
        """Alias -> collection, for the aliases of `collections` (default: every collection that exists)."""
        budget = timeout or self.settings.timeout_s
        return await self._call("aliases", self._aliases(collections, budget), budget, "collections")

    async def _aliases(self, collections: Sequence[str] | None, timeout: float) -> dict[str, str]:
        found: dict[str, str] = {}
        for name in collections if collections is not None else await self._client.list_collections(timeout=timeout):
            found.update(dict.fromkeys(await self._client.list_aliases(name, timeout=timeout), name))
        return found

    # ---- lifecycle ---------------------------------------------------------------------------------

    async def ready(self) -> bool:
        """True when Milvus serves reads of the collections ensured by this store (or, before
        ensure_collections, answers at all); never raises.

        Searches use their own channel (`RawSearch`); once it exists, the probe also waits for it to be
        connected, so that SERVING after a Milvus restart means searches reach Milvus too, not only pymilvus.

        A failed probe also checks whether Milvus's port refuses connections (the process is gone): until a
        later probe succeeds, calls then fail at once with UNAVAILABLE instead of waiting out their deadline
        in pymilvus's retries, which would hold admission slots and teach admission control an outage's
        latency. A slow or starting Milvus still accepts connections and is not failed fast.
        """
        budget = self.settings.health_timeout_s
        try:
            async with asyncio.timeout(budget):
                if not self._ensured:
                    await self._client.list_collections(timeout=budget)
                for name in self._ensured:
                    await self._count(name, budget)
                if self._raw is not None:
                    await self._raw.connected()
        except Exception:  # a health probe reports, it does not raise
            refused = await connection_refused(self.settings.uri, budget)
            self._refused_checked_at = time.monotonic()
            self._refused_since = (self._refused_since or self._refused_checked_at) if refused else None
            return False
        self._refused_since = None
        return True

    async def close(self) -> None:
        """Close the connection; for Milvus Lite also stop its in-process server so the file is released."""
        await self._client.close()
        if self._raw is not None:
            await self._raw.close()
        lite.release(self.settings.uri)

    async def __aenter__(self) -> MilvusStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- helpers -----------------------------------------------------------------------------------

    def _open_raw_search(self) -> RawSearch:
        """The stub-based search's channel, opened on first use (in the event loop that uses it)."""
        self._raw = RawSearch(**self.connection)
        return self._raw

    async def _layout(self, collection: str, timeout: float) -> Layout:
        if collection not in self._layouts:
            described = await self._client.describe_collection(collection, timeout=timeout)
            self._layouts[collection] = Layout.described(described["fields"])
        return self._layouts[collection]

    async def _call(self, what: str, call: Awaitable[T], timeout: float, argument: str, watched: bool = True) -> T:
        """`call` under `timeout`, its failures mapped; failing fast while Milvus refuses connections or, for the
        request path's reads (`watched`), while its circuit is open. Writes, setup and a full scan's pages are
        not watched: one may take seconds without Milvus hanging."""
        try:
            if self._refused_since is not None and await self._still_refused():
                down_s = time.monotonic() - self._refused_since
                raise DependencyUnavailable("milvus", f"{self.settings.uri} refuses connections (for {down_s:.1f} s)")
            if watched:
                self.circuit.check()
        except DependencyUnavailable:
            if inspect.iscoroutine(call):
                call.close()  # never awaited: close it so Python does not warn
            raise
        with self.circuit.watching(watched):
            return await guarded(f"{what} ({self.settings.uri})", call, timeout, argument)

    async def _still_refused(self) -> bool:
        """Whether Milvus's port, found refusing connections by a health probe, still does: re-checked at most every
        REFUSED_RECHECK_S (a loopback or LAN connect attempt takes well under a millisecond), so a store whose
        probes stopped (or that has none) serves again as soon as Milvus listens."""
        now = time.monotonic()
        if now - self._refused_checked_at >= REFUSED_RECHECK_S:
            self._refused_checked_at = now
            if not await connection_refused(self.settings.uri, self.settings.health_timeout_s):
                self._refused_since = None
        return self._refused_since is not None


async def connection_refused(uri: str, timeout: float) -> bool:
    """True when nothing listens at a server URI's host and port (a Milvus Lite file: never)."""
    if lite.is_lite(uri):
        return False
    address = urlsplit(uri if "://" in uri else f"http://{uri}")
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(address.hostname, address.port or DEFAULT_PORT)
    except ConnectionRefusedError:
        return True
    except (OSError, TimeoutError):
        return False  # unreachable for another reason (slow, filtered): not known to be down
    writer.close()
    return False


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _row_value(name: str, value: Any) -> Any:
    """Vectors as float32 arrays, the rest as Milvus returned them."""
    return np.asarray(value, dtype=np.float32) if name == VECTOR else value
