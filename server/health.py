"""Standard gRPC health checking, driven by periodic probes of the gateway's dependencies.

Service names and what each needs to be SERVING:
- `recstack.v1.Gateway`: Triton and Milvus (Recommend, Search, UpsertItems, DeleteItems work);
  point load balancers and readiness probes for recommendation/search traffic here;
- `recstack.v1.Gateway.Answer`: Triton, Milvus and the LLM;
- `recstack.v1.Gateway.Cache`: what `recstack.v1.Gateway` needs, and the item cache warm-up finished
  (Recommend then reads history vectors from memory); it stays NOT_SERVING when the warm-up failed;
- `""` (the whole server): every dependency.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import structlog
from grpc_health.v1 import health, health_pb2

from server.circuit import Circuit

SERVICE = "recstack.v1.Gateway"
ANSWER_SERVICE = f"{SERVICE}.Answer"
CACHE_SERVICE = f"{SERVICE}.Cache"

Probe = Callable[[], Awaitable[bool]]
log = structlog.get_logger("recstack.health")


class HealthMonitor:
    def __init__(self, probes: dict[str, Probe], interval_s: float, circuits: Sequence[Circuit] = ()) -> None:
        """`probes` by dependency name, run every `interval_s`; `circuits`: the dependencies' call circuits,
        which see a hanging dependency before a probe does (`outage`)."""
        self.servicer = health.aio.HealthServicer()
        self.probes = probes
        self.circuits = circuits
        self.interval_s = interval_s
        serving: list[str] = [d for d in ("triton", "milvus") if d in probes]
        self.groups: dict[str, list[str]] = {
            SERVICE: serving,
            CACHE_SERVICE: serving,
            ANSWER_SERVICE: list(probes),
            "": list(probes),
        }
        self.state: dict[str, bool] = {}
        self.cache_warm = False

    async def check(self) -> dict[str, bool]:
        """Probe every dependency once (concurrently) and publish the statuses."""
        results = await asyncio.gather(*(probe() for probe in self.probes.values()))
        state = dict(zip(self.probes, results, strict=True))
        if state != self.state:
            log.info("dependencies", **state)
        self.state = state
        await self._publish()
        return state

    def outage(self) -> str | None:
        """The dependency Recommend and Search need (Triton, Milvus) that is known down now: its last probe
        failed or its circuit is open. None while both are up."""
        for circuit in self.circuits:
            if circuit.is_open:
                return circuit.dependency
        return next((d for d in self.groups[SERVICE] if not self.state.get(d, True)), None)

    async def set_cache_warm(self) -> None:
        """The item cache warm-up has finished: `CACHE_SERVICE` follows the dependencies from now on."""
        self.cache_warm = True
        await self._publish()

    async def _publish(self) -> None:
        for service, needed in self.groups.items():
            serving = all(self.state.get(d, False) for d in needed) and (service != CACHE_SERVICE or self.cache_warm)
            status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
            await self.servicer.set(service, status)

    async def run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.interval_s)

    async def shutdown(self) -> None:
        await self.servicer.enter_graceful_shutdown()
