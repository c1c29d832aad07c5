"""CPU accounting of process trees (benchmarks/cpu.py): /proc parsing, tree walks, windows, a real burn."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.alternation import Side
from benchmarks.cpu import (
    CLOCK_TICKS_PER_S,
    CpuAccount,
    CpuMeter,
    ProcessGroup,
    ProcFs,
    stat_cpu_seconds,
    tree_cpu_seconds,
)
from benchmarks.loadgen import OK, LoadConfig, Reply
from recstack.v1 import gateway_pb2 as pb


def stat_line(pid: int, comm: str, utime: int, stime: int, cutime: int = 0, cstime: int = 0) -> str:
    """A /proc/<pid>/stat line with these CPU ticks (fields 14-17) and plausible other fields."""
    before = ["S", "1", str(pid), str(pid), "0", "-1", "4194560", "100", "0", "0", "0"]  # fields 3-13
    after = ["20", "0", "4", "0", "12345", "1000000", "300"]  # fields 18-24
    return f"{pid} ({comm}) " + " ".join([*before, str(utime), str(stime), str(cutime), str(cstime), *after]) + "\n"


def fake_proc(root: Path, processes: dict[int, tuple[str, dict[int, list[int]]]]) -> ProcFs:
    """A /proc tree: pid -> (stat line, {thread id: children forked by that thread})."""
    for pid, (stat, threads) in processes.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "stat").write_text(stat)
        for tid, children in threads.items():
            (root / str(pid) / "task" / str(tid)).mkdir(parents=True)
            (root / str(pid) / "task" / str(tid) / "children").write_text(" ".join(map(str, children)) + " ")
    return ProcFs(root)


def ticks(seconds: float) -> int:
    return round(seconds * CLOCK_TICKS_PER_S)


def test_stat_line_cpu_is_user_system_and_reaped_children_even_with_parentheses_in_the_name() -> None:
    line = stat_line(42, "python (stub) x", ticks(1.0), ticks(0.5), ticks(0.25), ticks(0.25))
    assert stat_cpu_seconds(line) == pytest.approx(2.0)


def test_a_tree_sums_every_descendant_whichever_thread_forked_it(tmp_path: Path) -> None:
    proc = fake_proc(
        tmp_path,
        {
            10: (stat_line(10, "tritonserver", ticks(1), ticks(1)), {10: [11], 13: [12]}),
            11: (stat_line(11, "triton_python_backend_stub", ticks(3), 0), {11: [14]}),
            12: (stat_line(12, "triton_python_backend_stub", ticks(4), 0), {12: []}),
            14: (stat_line(14, "helper", 0, ticks(0.5)), {14: []}),
            99: (stat_line(99, "unrelated", ticks(100), 0), {99: []}),
        },
    )
    assert proc.children(10) == {11, 12}
    assert tree_cpu_seconds(10, proc) == pytest.approx(2 + 3 + 4 + 0.5)
    assert tree_cpu_seconds(10, proc, tree=False) == pytest.approx(2)
    (tmp_path / "12" / "stat").unlink()  # a child exiting while the tree is read counts as nothing
    assert tree_cpu_seconds(10, proc) == pytest.approx(2 + 3 + 0.5)
    with pytest.raises(ProcessLookupError):
        tree_cpu_seconds(404, proc)


class FakeReader:
    """CPU seconds and children set by the test; a pid missing from `seconds` is gone."""

    def __init__(self, seconds: dict[int, float], children: dict[int, set[int]] | None = None) -> None:
        self.seconds, self.tree = seconds, children or {}

    def cpu_seconds(self, pid: int) -> float:
        if pid not in self.seconds:
            raise ProcessLookupError(pid)
        return self.seconds[pid]

    def children(self, pid: int) -> set[int]:
        return self.tree.get(pid, set())


def test_the_meter_samples_every_group_and_leaves_out_one_whose_root_is_gone() -> None:
    reader = FakeReader({1: 1.0, 2: 2.0, 3: 5.0}, {1: {2}})
    groups = [ProcessGroup("gateway", 1), ProcessGroup("gateway-alone", 1, tree=False), ProcessGroup("gone", 7)]
    meter = CpuMeter(groups, reader)
    assert meter.sample() == {"gateway": 3.0, "gateway-alone": 1.0}
    with pytest.raises(ValueError, match="unique"):
        CpuMeter([ProcessGroup("a", 1), ProcessGroup("a", 2)], reader)


def test_an_account_divides_each_groups_cpu_by_the_requests_of_the_windows_it_was_sampled_in() -> None:
    account = CpuAccount()
    account.add_window({"gateway": 10.0, "milvus": 5.0}, {"gateway": 10.5, "milvus": 5.25}, requests=100)
    account.add_window({"gateway": 10.5, "milvus": 5.25}, {"gateway": 11.0}, requests=400)  # milvus gone at the end
    account.add_window({"naive": 3.0}, {"naive": 2.0}, requests=10)  # a clock going back counts 0, not negative
    assert account.ms_per_request() == {
        "gateway": pytest.approx(1000 * 1.0 / 500),
        "milvus": pytest.approx(1000 * 0.25 / 100),
        "naive": 0.0,
    }
    account.add_window({"echo": 1.0}, {"echo": 1.5}, requests=0)
    assert account.ms_per_request()["echo"] is None


class InstantClient:
    async def call(self, rpc: str, request: object, timeout_s: float) -> Reply:
        await asyncio.sleep(0.001)
        return Reply(OK, time.perf_counter())


class OneRequest:
    def make(self, rpc: str, rng: object) -> pb.RecommendRequest:
        return pb.RecommendRequest(user_id="u", k=10)


def test_a_metered_side_samples_after_the_warm_up_and_counts_only_measured_requests() -> None:
    """CPU "seconds" read from the wall clock: a window's reading is its measured part, not the warm-up."""

    class WallClock:
        def cpu_seconds(self, pid: int) -> float:
            return time.perf_counter()

        def children(self, pid: int) -> set[int]:
            return set()

    config = LoadConfig(target="fake", concurrency=2, duration_s=0.1, warmup_s=0.5)
    meter = CpuMeter([ProcessGroup("clock", 1)], WallClock())
    side = Side.create("fake", "gateway", config, InstantClient(), OneRequest(), meter)

    async def two_windows() -> None:
        for _ in range(2):
            await side.measure_window()

    asyncio.run(two_windows())
    assert side.cpu.requests == {"clock": side.run.result.overall.requests}
    assert side.run.result.overall.requests > 0
    assert 0.1 <= side.cpu.seconds["clock"] < 2 * 0.1 + 0.5  # each window: ~0.1 s measured, 0.5 s warm-up not


BURNER = """
import sys, time
print("ready", flush=True)
sys.stdin.readline()
start = time.process_time()
while time.process_time() - start < float(sys.argv[1]):
    pass
print("done", flush=True)
sys.stdin.readline()
"""
# The root only starts the burner (sharing its stdin/stdout), waits for it, then waits for a line.
ROOT = """
import subprocess, sys
subprocess.run([sys.executable, "-c", sys.argv[1], sys.argv[2]])
print("reaped", flush=True)
sys.stdin.readline()
"""


def test_a_child_burning_known_cpu_shows_in_its_parents_tree_also_once_reaped() -> None:
    burn_s = 0.5
    root = subprocess.Popen(
        [sys.executable, "-c", ROOT, BURNER, str(burn_s)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert root.stdout.readline() == "ready\n"
        meter = CpuMeter([ProcessGroup("tree", root.pid), ProcessGroup("root", root.pid, tree=False)])
        before = meter.sample()
        root.stdin.write("burn\n")
        root.stdin.flush()
        assert root.stdout.readline() == "done\n"
        burning = meter.sample()
        root.stdin.write("exit\n")
        root.stdin.flush()
        assert root.stdout.readline() == "reaped\n"
        reaped = meter.sample()
    finally:
        root.kill()
        root.wait()
    assert burn_s * 0.9 <= burning["tree"] - before["tree"] <= burn_s + 0.4
    assert burning["root"] - before["root"] < 0.1  # the burn is the child's, found through the tree
    assert burn_s * 0.9 <= reaped["tree"] - before["tree"] <= burn_s + 0.4  # now in the root's cutime
