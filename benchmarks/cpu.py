"""CPU seconds of the processes under test, sampled around measured windows: CPU milliseconds per request.

Wall-clock figures on a shared machine move ±25 % between runs; the CPU one request costs each process is
steadier. A `ProcessGroup` is one part of the system (the gateway, tritonserver with its python-backend
stubs, Milvus, ...): a root pid, with its descendants (`tree`) or alone. `CpuMeter.sample()` reads each
group's user + system CPU seconds; a `CpuAccount` adds up, per group, the CPU spent between the samples
at the start and the end of each measured window and the requests completed in it.

Read from /proc (psutil is not a dependency): /proc/<pid>/stat's utime, stime, cutime and cstime (the
last two: children that exited and were reaped, so a child ending mid-window keeps its CPU in the
tree), descendants from /proc/<pid>/task/*/children.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from devstack.process import child_pids

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
# /proc/<pid>/stat after the ")" closing the command name: field 3 (state) first, so fields 14-17
# (utime, stime, cutime, cstime) are at these offsets.
CPU_FIELDS = slice(11, 15)


class ProcessReader(Protocol):
    """Where CPU times and children come from (/proc, or a fake in tests)."""

    def cpu_seconds(self, pid: int) -> float:
        """User + system CPU seconds of `pid` and its reaped children; ProcessLookupError once it is gone."""
        ...

    def children(self, pid: int) -> set[int]: ...


def stat_cpu_seconds(stat: str) -> float:
    """utime + stime + cutime + cstime of one /proc/<pid>/stat line, in seconds."""
    fields = stat.rpartition(")")[2].split()
    return sum(int(ticks) for ticks in fields[CPU_FIELDS]) / CLOCK_TICKS_PER_S


@dataclass(frozen=True)
class ProcFs:
    """The kernel's process table under `root` (/proc)."""

    root: Path = Path("/proc")

    def cpu_seconds(self, pid: int) -> float:
        try:
            stat = (self.root / str(pid) / "stat").read_text()
        except OSError as error:  # FileNotFoundError, or ESRCH while the process is being torn down
            raise ProcessLookupError(pid) from error
        return stat_cpu_seconds(stat)

    def children(self, pid: int) -> set[int]:
        return child_pids(pid, self.root)


def tree_cpu_seconds(root: int, reader: ProcessReader, tree: bool = True) -> float:
    """CPU seconds of `root` (and with `tree`, of every descendant); ProcessLookupError when `root` is gone.
    A descendant that exits while it is read counts as nothing (its parent's cutime has it once reaped)."""
    total = reader.cpu_seconds(root)
    pending = sorted(reader.children(root)) if tree else []
    seen = {root}
    while pending:
        pid = pending.pop()
        if pid in seen:
            continue
        seen.add(pid)
        with contextlib.suppress(ProcessLookupError):
            total += reader.cpu_seconds(pid)
            pending.extend(reader.children(pid))
    return total


@dataclass(frozen=True)
class ProcessGroup:
    """One measured part of the system: `pid` and, with `tree`, everything it started."""

    name: str
    pid: int
    tree: bool = True


@dataclass(frozen=True)
class CpuMeter:
    """Samples the CPU seconds of every group at once."""

    groups: Sequence[ProcessGroup]
    reader: ProcessReader = field(default_factory=ProcFs)

    def __post_init__(self) -> None:
        names = [group.name for group in self.groups]
        if len(set(names)) != len(names):
            raise ValueError(f"process group names must be unique, got {names}")

    def sample(self) -> dict[str, float]:
        """CPU seconds by group name; a group whose root process is gone is left out."""
        readings = {}
        for group in self.groups:
            with contextlib.suppress(ProcessLookupError):
                readings[group.name] = tree_cpu_seconds(group.pid, self.reader, group.tree)
        return readings


@dataclass
class CpuAccount:
    """CPU seconds spent and requests completed per group over the measured windows of one side."""

    seconds: dict[str, float] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)

    def add_window(self, before: Mapping[str, float], after: Mapping[str, float], requests: int) -> None:
        """One window: the groups sampled at both ends (a clock going back, e.g. a lost child, counts 0)."""
        for name in before.keys() & after.keys():
            self.seconds[name] = self.seconds.get(name, 0.0) + max(0.0, after[name] - before[name])
            self.requests[name] = self.requests.get(name, 0) + requests

    def ms_per_request(self) -> dict[str, float | None]:
        """CPU milliseconds per completed request by group name (None: no request completed)."""
        return {
            name: round(1000.0 * seconds / self.requests[name], 3) if self.requests[name] else None
            for name, seconds in sorted(self.seconds.items())
        }
