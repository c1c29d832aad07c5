"""The gateway's health monitor: statuses from probes, and what admission control is told of outages."""

from __future__ import annotations

import pytest
from grpc_health.v1 import health_pb2
from test_admission import FakeClock

from server.circuit import Circuit
from server.health import ANSWER_SERVICE, SERVICE, HealthMonitor

pytestmark = pytest.mark.anyio


def probes(state: dict[str, bool]):
    async def probe(name: str) -> bool:
        return state[name]

    return {name: (lambda name=name: probe(name)) for name in state}


async def status(monitor: HealthMonitor, service: str) -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    return (await monitor.servicer.Check(request, None)).status


async def test_an_outage_is_triton_or_milvus_down_and_the_llm_alone_is_not() -> None:
    state = {"triton": True, "milvus": True, "llm": True}
    monitor = HealthMonitor(probes(state), interval_s=1.0)
    await monitor.check()
    assert not monitor.outage() and await status(monitor, SERVICE) == health_pb2.HealthCheckResponse.SERVING
    state["llm"] = False
    await monitor.check()
    assert not monitor.outage() and await status(monitor, ANSWER_SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
    state["milvus"] = False
    await monitor.check()
    assert monitor.outage() == "milvus" and await status(monitor, SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
    state["milvus"] = True
    await monitor.check()
    assert monitor.outage() is None


async def test_an_open_circuit_is_an_outage_before_any_probe_fails() -> None:
    clock = FakeClock()
    circuit = Circuit("triton", stall_after_s=1.0, clock=clock)
    monitor = HealthMonitor(probes({"triton": True, "milvus": True}), interval_s=1.0, circuits=[circuit])
    await monitor.check()
    with circuit.watch():
        clock.now += 1.5  # a call in flight, unanswered
        assert monitor.outage() == "triton"
