"""A per-dependency circuit: fail fast while a dependency that accepts calls stops answering them.

A dependency can be down in two ways. Refusing connections is quick to see (and fails calls fast by
itself). Hanging is not: a Milvus or Triton that is restarting, or stuck, accepts connections and
answers nothing, so every call waits out its deadline, holds an admission slot meanwhile, and the
requests behind it are shed as RESOURCE_EXHAUSTED when the truth is UNAVAILABLE.

`Circuit` watches the calls themselves: when a call has been outstanding for `stall_after_s` with
none answered since it started (success or error, anything but a timeout), it opens: new calls fail
at once with UNAVAILABLE, except one trial call every `stall_after_s`. The first answer closes it; a
call that times out after `stall_after_s` with nothing answered meanwhile opens it too (calls too
sparse to overlap). Under load, a slow dependency still answers something every few milliseconds, and
calls that end early on their request's deadline (DEADLINE_EXCEEDED, or cancelled by their caller) are
never that old, so only a stall opens the circuit, not a queue or an overload.

Counters only, no locks: the gateway calls it from one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator

from server.errors import DependencyTimeout, DependencyUnavailable

NO_ANSWER = (DependencyTimeout, TimeoutError)


class Circuit:
    """Open/closed state of one dependency, fed by the calls made to it. `stall_after_s` 0: never opens."""

    def __init__(self, dependency: str, stall_after_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.dependency = dependency
        self.stall_after_s = stall_after_s
        self.clock = clock
        self._started: OrderedDict[int, float] = OrderedDict()  # outstanding calls' start times, oldest first
        self._calls = itertools.count()
        self._answered_at = float("-inf")
        self._open = False
        self._trial_at = float("-inf")

    @property
    def outstanding(self) -> int:
        return len(self._started)

    @property
    def is_open(self) -> bool:
        """Whether calls are failing fast now (opening it first if the oldest call in flight has stalled)."""
        if not self._open and self._started:
            oldest = next(iter(self._started.values()))
            self._stalled_since(oldest)
        return self._open

    def check(self) -> None:
        """Raise DependencyUnavailable while the circuit is open, unless this call may be the periodic trial."""
        if not self.is_open:
            return
        now = self.clock()
        if now - self._trial_at < self.stall_after_s:
            raise DependencyUnavailable(
                self.dependency,
                f"calls stalled (none answered for {self.stall_after_s:g} s); failing fast until one is",
            )
        self._trial_at = now

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        """Wrap one call (after `check`): whether it was answered is what opens and closes the circuit. A call
        cancelled by its caller says nothing about the dependency and changes nothing."""
        call, started = next(self._calls), self.clock()
        self._started[call] = started
        try:
            yield
        except asyncio.CancelledError:
            raise
        except NO_ANSWER:
            self._stalled_since(started)  # it timed out: calls may come too sparsely to see a stall otherwise
            raise
        except BaseException:
            self._answered()  # an error answer is an answer
            raise
        else:
            self._answered()
        finally:
            del self._started[call]

    def watching(self, watched: bool) -> contextlib.AbstractContextManager[None]:
        """`watch()` for a request-path call; nothing for one that is not `watched` (bulk work: writes,
        setup, a full scan's pages, ingest batches), which may take seconds without the dependency hanging."""
        return self.watch() if watched else contextlib.nullcontext()

    def _answered(self) -> None:
        self._answered_at = self.clock()
        self._open = False

    def _stalled_since(self, started: float) -> None:
        """Open when the call started at `started` has waited over `stall_after_s` with nothing answered since."""
        now = self.clock()
        stalled = self.stall_after_s > 0 and now - started > self.stall_after_s and self._answered_at < started
        if stalled and not self._open:
            self._open, self._trial_at = True, now  # the stalled call was the first trial
