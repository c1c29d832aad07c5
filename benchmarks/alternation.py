"""Same-run comparisons: several sides measured in alternating short windows, histograms merged per side.

A `Side` is one thing being measured (the gateway, the naive server, one direct component call), driven
by the load generator's own `LoadRun`, so every side has the same closed or open loop and the same
recording. `alternate` runs `rounds` rounds; in each round every side gets one window (`duration_s` of
its LoadConfig, after an unrecorded `warmup_s`) while the other sides are idle. Odd rounds run the
sides in reverse order (A B C, C B A, A B C, ...), so slow drift of the shared machine (other load,
caches, background work) hits every side alike and cancels in their ratios.

A side's recorder accumulates over its windows: its percentiles are those of all its measured
requests together (one HdrHistogram), and its throughput is OK requests / (windows × window length).
A side given a `CpuMeter` also samples the processes' CPU seconds when the measured part of each window
starts (after its warm-up) and when its last request has answered, into its `CpuAccount`
(benchmarks/cpu.py): CPU milliseconds per request of every process group while this side ran.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from benchmarks.cpu import CpuAccount, CpuMeter
from benchmarks.loadgen import LoadConfig, LoadRun, Reply
from benchmarks.stats import ScenarioResult
from benchmarks.workload import RequestFactory, RequestStream, Rpc


class Client(Protocol):
    """What a LoadRun calls: the load generator's GatewayClient, or a direct component call."""

    async def call(self, rpc: Rpc, request: Any, timeout_s: float) -> Reply: ...


@dataclass
class Side:
    """One measured side of a comparison; `server` says what answered ("gateway", "naive", "direct")."""

    name: str
    server: str
    config: LoadConfig
    run: LoadRun
    cpu_meter: CpuMeter | None = None
    windows: int = field(default=0, init=False)
    cpu: CpuAccount = field(default_factory=CpuAccount, init=False)

    @classmethod
    def create(
        cls,
        name: str,
        server: str,
        config: LoadConfig,
        client: Client,
        factory: RequestFactory,
        cpu_meter: CpuMeter | None = None,
    ) -> Side:
        """A side whose requests come from `factory` in `config.seed`'s order (the same for every side)."""
        stream = RequestStream(factory, config.mix, config.seed)
        stream.prime()
        return cls(name, server, config, LoadRun(config, client, stream), cpu_meter)

    async def measure_window(self) -> None:
        if self.cpu_meter is None:
            await self.run.execute()
        else:
            await self._metered_window(self.cpu_meter)
        self.windows += 1

    async def _metered_window(self, meter: CpuMeter) -> None:
        """One window, CPU sampled when its measured part starts and once its last request has answered."""
        completed = self.run.result.overall.requests
        async with asyncio.TaskGroup() as group:
            execution = group.create_task(self.run.execute())
            await asyncio.sleep(0)  # the run sets `measure_from` (its warm-up's end) before its first await
            await asyncio.sleep(max(0.0, self.run.measure_from - time.perf_counter()))
            before = await asyncio.to_thread(meter.sample)  # off the loop: the workers keep sending
            await execution
        self.cpu.add_window(before, meter.sample(), self.run.result.overall.requests - completed)

    def result(self) -> ScenarioResult:
        """Everything recorded so far; `duration_s` is the measured time of all windows together."""
        return dataclasses.replace(self.run.result, duration_s=self.windows * self.config.duration_s)


def window_order(sides: Sequence[Side], round_index: int) -> list[Side]:
    """The sides in the given order on even rounds, reversed on odd rounds."""
    return list(sides) if round_index % 2 == 0 else list(reversed(sides))


async def alternate(
    sides: Sequence[Side], rounds: int, on_window: Callable[[Side], None] | None = None
) -> dict[str, ScenarioResult]:
    """Measure every side in `rounds` alternating rounds; returns each side's merged result by name."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    names = [side.name for side in sides]
    if len(set(names)) != len(names):
        raise ValueError(f"side names must be unique, got {names}")
    for round_index in range(rounds):
        for side in window_order(sides, round_index):
            await side.measure_window()
            if on_window is not None:
                on_window(side)
    return {side.name: side.result() for side in sides}
