"""The gateway process: wire components from `Settings`, serve gRPC (+ health, reflection, metrics).

Start-up waits (up to `gateway.startup_timeout_s`) for Triton and Milvus, learns embedding sizes
from Triton's model metadata, makes sure the Milvus collections exist, then serves. Afterwards a
dependency outage fails requests fast with UNAVAILABLE, turns health NOT_SERVING, and the gateway
recovers by itself when the dependency returns (gRPC channels and Milvus reconnect).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from dataclasses import asdict
from pathlib import Path

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
from server.config import Settings, load_settings
from server.errors import DependencyUnavailable
from server.health import HealthMonitor
from server.item_cache import FIELDS as CACHED_FIELDS
from server.item_cache import CachedNews, ItemCache
from server.llm import make_llm_client
from server.milvus import MilvusStore
from server.observability import configure_logging, record_cache_warmup
from server.pipeline.answer import Answerer
from server.pipeline.common import CatalogClock
from server.pipeline.ingest import Ingest
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
from server.transport import InsecureExposure, bind, check_exposure, server_credentials
from server.triton import TritonEncoders

log = structlog.get_logger("recstack.gateway")


class GatewayApp:
    """Owns every component and the gRPC server; `start()` then `stop()`."""

    def __init__(self, settings: Settings) -> None:
        """Raises InsecureExposure before anything else when a non-loopback address lacks TLS and tokens."""
        check_exposure(settings.gateway, settings.security)
        self.settings = settings
        self.encoders = TritonEncoders.from_settings(settings.triton)
        self.store = MilvusStore(settings.milvus)
        rec = settings.recommend
        self.cache = ItemCache(rec.item_cache_capacity, rec.item_cache_ttl_s)
        self.clock = CatalogClock()  # fed by the warm-up and by ingest, read by ColdStart
        self.llm = make_llm_client(settings.llm)
        self.health = HealthMonitor(
            {"triton": self.encoders.ready, "milvus": self.store.ready, "llm": self.llm.health},
            settings.gateway.health_interval_s,
        )
        self.server: grpc.aio.Server | None = None
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
        self.server = grpc.aio.server(interceptors=auth, maximum_concurrent_rpcs=gw.max_concurrent_rpcs)
        gateway_pb2_grpc.add_GatewayServicer_to_server(self._service(), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, self.server)
        names = [gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name, reflection.SERVICE_NAME]
        reflection.enable_server_reflection([*names, "grpc.health.v1.Health"], self.server)
        self.port = bind(self.server, f"{gw.host}:{gw.port}", credentials, security.loopback_port)
        await self.health.check()
        await self.server.start()
        if gw.metrics_port:
            start_http_server(gw.metrics_port, addr=gw.host)
        self._tasks = [asyncio.create_task(self.health.run()), asyncio.create_task(self._warm_cache())]
        log.info(
            "serving",
            address=f"{gw.host}:{self.port}",
            metrics_port=gw.metrics_port,
            tls="mutual" if security.tls_client_ca_file else "on" if security.tls else "off",
            tokens=security.authentication,
        )
        return self.port

    def _service(self) -> GatewayService:
        s = self.settings
        searcher = BatchedSearch(self.store, s.milvus.search_batch, s.milvus.search_in_flight)
        # One-row calls of the request path are coalesced; ingestion sends its own full batches.
        request_encoders = BatchedEncoders(self.encoders, s.triton.coalesce_rows, s.triton.coalesce_in_flight)
        cold_start = ColdStart(
            self.store,
            s.milvus.news_collection,
            self.clock,
            s.recommend.cold_start_window_days,
            s.recommend.cold_start_pool,
        )
        catalog = CatalogView(self.cache, self.store, s.milvus.news_collection)
        ranking = self._ranking_stage()
        recommender = Recommender(
            HistoryVectors(catalog, self.encoders, s.recommend.max_history),
            UserVector(request_encoders),
            personal_stages(
                AnnCandidates(searcher, catalog, min_pool=s.recommend.ranking_candidates if ranking else 0), ranking
            ),
            [cold_start],
        )
        search = PassageSearch(QueryVector(request_encoders), searcher, s.milvus.passage_collection)
        ingest = Ingest(
            self.encoders,
            self.store,
            self.cache,
            self.clock,
            s.milvus.news_collection,
            s.milvus.passage_collection,
            s.gateway.encode_batch,
        )
        return GatewayService(
            RequestValidator(s.gateway),
            recommender,
            search,
            ingest,
            Answerer(search, self.llm, s.rag),
            s.rag,
            request_timeout_s=s.gateway.request_timeout_s,
            answer_timeout_s=s.llm.timeout_s,
            admission=Admission.from_settings(s.gateway.admission),
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
        if rec.ranking == "content":
            return None
        if not rec.ranking_weights.is_file():
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
        async for row in self.store.iterate(self.settings.milvus.news_collection, CACHED_FIELDS):
            self.clock.observe(int(row["published"]))
            if self.cache.has_room():
                self.cache.store({row["id"]: CachedNews.from_row(row)})

    async def stop(self, grace_s: float = 5.0) -> None:
        await self.health.shutdown()
        if self.server is not None:
            await self.server.stop(grace_s)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.encoders.close()
        await self.store.close()
        await self.llm.close()


async def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM, then drain in-flight RPCs and stop."""
    app = GatewayApp(settings)
    await app.start()
    print(f"gateway ready on {settings.gateway.host}:{app.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await app.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="The recstack gRPC gateway. Settings: YAML file < RECSTACK_* environment variables.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="YAML settings file, e.g. configs/production.yaml (default: none, built-in defaults)",
    )
    parser.add_argument("--port", type=int, help="override gateway.port (0 = any free port)")
    parser.add_argument(
        "--log-format",
        choices=["json", "console"],
        default="json",
        help="log lines as JSON or for a terminal (%(default)s)",
    )
    args = parser.parse_args(argv)
    port_override = {"gateway": {"port": args.port}} if args.port is not None else {}
    settings = load_settings(args.config, **port_override)
    configure_logging(json=args.log_format == "json")
    import uvloop

    try:
        uvloop.run(serve(settings))
    except InsecureExposure as error:
        raise SystemExit(f"gateway refused to start: {error}") from None
