"""A per-dependency circuit: fail fast while a dependency that accepts calls stops answering them.

A dependency can be down in two ways. Refusing connections is quick to see (and fails calls fast by
itself). Hanging is not: a Milvus or Triton that is restarting, or stuck, accepts connections and
answers nothing, so every call waits out its deadline, holds an admission slot meanwhile, and the
requests behind it are shed as RESOURCE_EXHAUSTED when the truth is UNAVAILABLE.

`Circuit` watches the calls themselves: when calls have been outstanding for `stall_after_s` with
none answered (success or error, anything but a timeout or a cancellation), it opens: new calls
fail at once with UNAVAILABLE, except one trial call every `stall_after_s`. The first answer closes
it; a call that times out with nothing answered for `stall_after_s` opens it too (calls too sparse to
overlap). Under load, a slow dependency still answers something every few milliseconds, so only a stall
opens the circuit, not a queue.

Counters only, no locks: the gateway calls it from one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator

from server.errors import DependencyTimeout, DependencyUnavailable

NO_ANSWER = (DependencyTimeout, TimeoutError, asyncio.CancelledError)


class Circuit:
    """Open/closed state of one dependency, fed by the calls made to it. `stall_after_s` 0: never opens."""

    def __init__(self, dependency: str, stall_after_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.dependency = dependency
        self.stall_after_s = stall_after_s
        self.clock = clock
        self.outstanding = 0
        self._waiting_since = clock()  # since the last answer, or since calls became outstanding
        self._open = False
        self._trial_at = float("-inf")

    @property
    def is_open(self) -> bool:
        """Whether calls are failing fast now (opening it first if the calls in flight have stalled)."""
        if not self._open and self.stall_after_s > 0 and self.outstanding:
            now = self.clock()
            if now - self._waiting_since > self.stall_after_s:
                self._open, self._trial_at = True, now  # the stalled calls were the first trial
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
        """Wrap one call (after `check`): whether it was answered is what opens and closes the circuit."""
        if not self.outstanding:
            self._waiting_since = self.clock()
        self.outstanding += 1
        answered = True
        try:
            yield
        except NO_ANSWER:
            answered = False
            raise
        finally:
            self._ended(answered)

    def _ended(self, answered: bool) -> None:
        self.outstanding -= 1
        now = self.clock()
        if answered:
            self._waiting_since = now
            self._open = False
        elif self.stall_after_s > 0 and now - self._waiting_since > self.stall_after_s and not self._open:
            # it timed out with nothing answered meanwhile (calls may come too sparsely to see a stall); it was
            # the first trial
            self._open, self._trial_at = True, now
