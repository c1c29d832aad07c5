"""The gateway process: wire components from `Settings`, serve gRPC (+ health, reflection, metrics).

Start-up waits (up to `gateway.startup_timeout_s`) for Triton and Milvus, learns embedding sizes
from Triton's model metadata, makes sure the Milvus collections exist, then serves. Afterwards a
dependency outage fails requests fast with UNAVAILABLE, turns health NOT_SERVING, and the gateway
recovers by itself when the dependency returns (gRPC channels and Milvus reconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import asdict

import grpc
import structlog
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from contract.ranking import RankingWeights
from recstack.v1 import gateway_pb2, gateway_pb2_grpc
from server.admission import Admission
from server.auth import interceptors
from server.batching import BatchedEncoders, BatchedSearch
from server.config import Settings
from server.errors import DependencyUnavailable
from server.feedback import FeedbackRecorder
from server.health import HealthMonitor
from server.item_cache import FIELDS as CACHED_FIELDS
from server.item_cache import CachedNews, ItemCache
from server.llm import make_llm_client
from server.milvus import MilvusStore
from server.observability import record_cache_warmup
from server.pipeline.answer import Answerer
from server.pipeline.common import CatalogClock
from server.pipeline.ingest import Ingest, NewsTarget
from server.pipeline.recommend import (
    AnnCandidates,
    CatalogView,
    ColdStart,
    HistoryVectors,
    PopularityAwareOrder,
    Recommender,
    UserVector,
    personal_stages,
)
from server.pipeline.search import PassageSearch, QueryVector
from server.requests import RequestValidator
from server.service import GatewayService
from server.transport import DRAIN_GRACE_S, READY_LINE, bind, check_exposure, server_credentials
from server.triton import TritonEncoders
from server.versions import UNVERSIONED, ModelVersion, ServingVersions, VersionedEncoders, VersionRouter

log = structlog.get_logger("recstack.gateway")


class GatewayApp:
    """Owns every component and the gRPC server; `start()` then `stop()`."""

    def __init__(self, settings: Settings, worker: int | None = None) -> None:
        """Raises InsecureExposure before anything else when a non-loopback address lacks TLS and tokens.

        `worker` is this process's index under a `server.workers` supervisor (None: a lone gateway): a worker
        shares its port with the others (SO_REUSEPORT) and leaves /metrics to the supervisor.
        """
        check_exposure(settings.gateway, settings.security)
        self.settings = settings
        self.worker = worker
        self.encoders = TritonEncoders.from_settings(settings.triton)
        self.store = MilvusStore(settings.milvus)
        rec = settings.recommend
        self.cache = ItemCache(rec.item_cache_capacity, rec.item_cache_ttl_s)
        self.clock = CatalogClock()  # fed by the warm-up and by ingest, read by ColdStart
        self.versions = ServingVersions(self.store, settings.milvus, settings.rollout)
        self._news: dict[ModelVersion, NewsTarget] = {}
        self.llm = make_llm_client(settings.llm)
        self.health = HealthMonitor(
            {"triton": self.encoders.ready, "milvus": self.store.ready, "llm": self.llm.health},
            settings.gateway.health_interval_s,
            circuits=(self.encoders.circuit, self.store.circuit),
        )
        self.servers: list[grpc.aio.Server] = []
        self.port = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> int:
        """Serve on the configured address; returns the bound port (useful with port 0).

        Token and certificate files are read before waiting for the dependencies, so a bad one fails at once.
        """
        gw, security = self.settings.gateway, self.settings.security
        auth, credentials = interceptors(security), server_credentials(security)
        await self._wait_for_dependencies()
        dims = await self.encoders.embedding_dims()
        await self.store.ensure_collections(
            news_dim=dims[self.settings.triton.news_encoder], passage_dim=dims[self.settings.triton.doc_encoder]
        )
        await self.versions.refresh()
        shared_port = [("grpc.so_reuseport", 1)] if self.worker is not None or gw.listeners > 1 else []
        self.servers = [
            grpc.aio.server(interceptors=auth, maximum_concurrent_rpcs=gw.max_concurrent_rpcs, options=shared_port)
            for _ in range(gw.listeners)
        ]
        service = self._service()
        names = [gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name, reflection.SERVICE_NAME]
        for server in self.servers:
            gateway_pb2_grpc.add_GatewayServicer_to_server(service, server)
            health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, server)
            reflection.enable_server_reflection([*names, "grpc.health.v1.Health"], server)
        self.port = bind(self.servers, f"{gw.host}:{gw.port}", credentials, security.loopback_port)
        await self.health.check()
        for server in self.servers:
            await server.start()
        if gw.metrics_port and self.worker is None:
            start_http_server(gw.metrics_port, addr=gw.host)
        self._tasks = [
            asyncio.create_task(self.health.run()),
            asyncio.create_task(self._warm_cache()),
            asyncio.create_task(self.versions.run()),
        ]
        log.info(
            "serving",
            address=f"{gw.host}:{self.port}",
            metrics_port=gw.metrics_port,
            tls="mutual" if security.tls_client_ca_file else "on" if security.tls else "off",
            tokens=security.authentication,
            **({} if self.worker is None else {"worker": self.worker, "pid": os.getpid()}),
        )
        return self.port

    def news_target(self, version: ModelVersion) -> NewsTarget:
        """`version`'s news collection, encoders and item vectors (the unversioned catalog's are the app's)."""
        if version not in self._news:
            if version.triton_version == UNVERSIONED:
                self._news[version] = NewsTarget(version.collection, self.encoders, self.cache)
            else:
                rec = self.settings.recommend
                encoders = VersionedEncoders(self.encoders, version.triton_version)
                cache = ItemCache(rec.item_cache_capacity, rec.item_cache_ttl_s)
                self._news[version] = NewsTarget(version.collection, encoders, cache)
        return self._news[version]

    def _recommender(
        self, version: ModelVersion, searcher: BatchedSearch, ranking: PopularityAwareOrder | None
    ) -> Recommender:
        """The Recommend pipeline of one model version (`ranking`: the re-ranking stage, None for NRMS order)."""
        s, news = self.settings, self.news_target(version)
        # One-row calls of the request path are coalesced; ingestion sends its own full batches.
        user_encoders = BatchedEncoders(news.encoders, s.triton.coalesce_rows, s.triton.coalesce_in_flight)
        rec = s.recommend
        cold_start = ColdStart(
            self.store,
            news.collection,
            self.clock,
            rec.cold_start_window_days,
            rec.cold_start_pool,
            rec.cold_start_reuse_s,
        )
        catalog = CatalogView(
            news.cache,
            self.store,
            news.collection,
            self.clock,
            rec.absent_id_ttl_s,
            refresh_timeout_s=s.milvus.timeout_s,
        )
        return Recommender(
            HistoryVectors(catalog, news.encoders, rec.max_history),
            UserVector(user_encoders),
            personal_stages(
                AnnCandidates(searcher, catalog, min_pool=rec.ranking_candidates if ranking else 0), ranking
            ),
            [cold_start],
        )

    def _service(self) -> GatewayService:
        s = self.settings
        searcher = BatchedSearch(self.store, s.milvus.search_batch, s.milvus.search_in_flight)
        request_encoders = BatchedEncoders(self.encoders, s.triton.coalesce_rows, s.triton.coalesce_in_flight)
        ranking = self._ranking_stage()
        search = PassageSearch(QueryVector(request_encoders), searcher, s.milvus.passage_collection)
        ingest = Ingest(
            self.encoders,
            self.store,
            self.cache,
            self.clock,
            s.milvus.news_collection,
            s.milvus.passage_collection,
            s.gateway.encode_batch,
            news_targets=lambda: [self.news_target(version) for version in self.versions.current.written],
        )
        return GatewayService(
            RequestValidator(s.gateway),
            VersionRouter(self.versions, lambda version: self._recommender(version, searcher, ranking)),
            search,
            ingest,
            Answerer(search, self.llm, s.rag),
            s.rag,
            request_timeout_s=s.gateway.request_timeout_s,
            answer_timeout_s=s.llm.timeout_s,
            admission=Admission.from_settings(s.gateway.admission, outage=self.health.outage),
            feedback=FeedbackRecorder.from_settings(s.feedback, self.worker),
        )

    async def _wait_for_dependencies(self) -> None:
        deadline = time.monotonic() + self.settings.gateway.startup_timeout_s
        while True:
            state = {"triton": await self.encoders.ready(), "milvus": await self.store.ready()}
            if all(state.values()):
                return
            if time.monotonic() > deadline:
                down = ", ".join(name for name, ok in state.items() if not ok)
                raise DependencyUnavailable(down, f"not ready after {self.settings.gateway.startup_timeout_s:.0f}s")
            log.info("waiting_for_dependencies", **state)
            await asyncio.sleep(1.0)

    def _ranking_stage(self) -> PopularityAwareOrder | None:
        """The popularity-aware re-ranking when configured and its exported weights exist, else None (NRMS order)."""
        rec = self.settings.recommend
        if not rec.serves_ranking:
            if rec.ranking != "content":
                log.warning("ranking_weights_missing", path=str(rec.ranking_weights), serving="content order")
            return None
        weights = RankingWeights.from_json(rec.ranking_weights)
        log.info("ranking", kind=rec.ranking, **asdict(weights))
        return PopularityAwareOrder(weights, self.clock)

    async def _warm_cache(self) -> None:
        """Fill the item cache and the catalog clock from Milvus, in the background, page by page.

        Each page has the normal Milvus call deadline, the whole warm-up `recommend.cache_warmup_timeout_s`.
        The outcome is published as metrics (`recstack_item_cache_warm*`) and as the `recstack.v1.Gateway.Cache` health
        status, and logged.
        """
        started = time.perf_counter()
        limit_s = self.settings.recommend.cache_warmup_timeout_s
        try:
            async with asyncio.timeout(limit_s):
                await self._load_catalog()
        except Exception as error:  # warm-up is an optimisation: requests fall back to Milvus
            reason = f"not finished within {limit_s:g} s" if isinstance(error, TimeoutError) else str(error)
            record_cache_warmup(len(self.cache), time.perf_counter() - started, failed=True)
            log.warning("cache_warmup_failed", error=reason, vectors=len(self.cache))
            return
        seconds = time.perf_counter() - started
        record_cache_warmup(len(self.cache), seconds, failed=False)
        await self.health.set_cache_warm()
        log.info("cache_warm", vectors=len(self.cache), seconds=round(seconds, 2))

    async def _load_catalog(self) -> None:
        news = self.news_target(self.versions.current.control)
        async for row in self.store.iterate(news.collection, CACHED_FIELDS):
            self.clock.observe(int(row["published"]))
            if news.cache.has_room():
                news.cache.store({row["id"]: CachedNews.from_row(row)})

    async def stop(self, grace_s: float = DRAIN_GRACE_S) -> None:
        await self.health.shutdown()
        await asyncio.gather(*(server.stop(grace_s) for server in self.servers))
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.encoders.close()
        await self.store.close()
        await self.llm.close()


async def serve(settings: Settings, worker: int | None = None) -> None:
    """Run until SIGINT/SIGTERM (a worker: also until its supervisor is gone), then drain in-flight RPCs and stop."""
    app = GatewayApp(settings, worker)
    await app.start()
    print(f"{READY_LINE}{settings.gateway.host}:{app.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    orphan_watch = asyncio.create_task(_stop_when_orphaned(stop)) if worker is not None else None
    await stop.wait()
    log.info("stopping")
    await app.stop()
    if orphan_watch is not None:
        orphan_watch.cancel()


async def _stop_when_orphaned(stop: asyncio.Event, interval_s: float = 1.0) -> None:
    """Set `stop` once the parent (the supervisor) has gone, so no worker outlives it holding the port."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(interval_s)
    log.warning("supervisor_gone", parent=parent)
    stop.set()
