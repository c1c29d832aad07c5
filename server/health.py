"""Standard gRPC health checking, driven by periodic probes of the gateway's dependencies.

Service names and what each needs to be SERVING:
- `recstack.v1.Gateway`: Triton and Milvus (Recommend, Search, UpsertItems, DeleteItems work);
  point load balancers and readiness probes for recommendation/search traffic here;
- `recstack.v1.Gateway.Answer`: Triton, Milvus and the LLM;
- `""` (the whole server): every dependency.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from grpc_health.v1 import health, health_pb2

SERVICE = "recstack.v1.Gateway"
ANSWER_SERVICE = f"{SERVICE}.Answer"

Probe = Callable[[], Awaitable[bool]]
log = structlog.get_logger("recstack.health")


class HealthMonitor:
    def __init__(self, probes: dict[str, Probe], interval_s: float) -> None:
        self.servicer = health.aio.HealthServicer()
        self.probes = probes
        self.interval_s = interval_s
        self.groups: dict[str, list[str]] = {
            SERVICE: [d for d in ("triton", "milvus") if d in probes],
            ANSWER_SERVICE: list(probes),
            "": list(probes),
        }
        self.state: dict[str, bool] = {}

    async def check(self) -> dict[str, bool]:
        """Probe every dependency once (concurrently) and publish the statuses."""
        results = await asyncio.gather(*(probe() for probe in self.probes.values()))
        state = dict(zip(self.probes, results, strict=True))
        if state != self.state:
            log.info("dependencies", **state)
        self.state = state
        for service, needed in self.groups.items():
            serving = all(state[d] for d in needed)
            status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
            await self.servicer.set(service, status)
        return state

    async def run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.interval_s)

    async def shutdown(self) -> None:
        await self.servicer.enter_graceful_shutdown()
