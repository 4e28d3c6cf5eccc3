"""The engine's Ray-free half: what work asks for (:class:`Resources`), what came of it
(:class:`Outcome`), and the book of one ``map_items`` call (:class:`Ledger`): which item
runs next, retries, time limits, outcomes.

Why a module of its own: task mode and actor mode (curate/core/engine.py) differ only in how
an attempt is started and what a failed one costs (a task is cancelled; an actor is killed
and replaced); the failure policy is one, and lives here once so the two cannot drift:
every item is attempted up to ``max_retries + 1`` times, an attempt older than
``timeout_s`` counts as failed, and each item ends as exactly one :class:`Outcome`, handed
to ``on_done`` and counted on the progress bar as it ends.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

#: the engine's logger: these lines are its retries and failures, filtered as before
log = logging.getLogger("curate.core.engine")


@dataclass
class Resources:
    """What one task or actor holds (Ray's resource names; read by ``engine.task_options``)."""

    num_cpus: float = 1
    num_gpus: float = 0
    memory: int | None = None
    extra: dict[str, float] = field(default_factory=dict)
    #: this share of a GPU per task, only when the cluster has GPUs (decided at map time,
    #: after Ray is up): work that runs on either device (k-means) asks for a GPU where
    #: there is one and still runs on a CPU-only cluster. Ignored when ``num_gpus`` is set.
    gpus_if_any: float = 0


@dataclass
class Outcome:
    """What happened to one work item."""

    item: Any
    ok: bool
    value: Any = None
    error: str | None = None
    attempts: int = 1
    seconds: float = 0.0


class Pool(Protocol):
    """How attempts run (the engine's task and actor pools): at most ``limit`` at once."""

    limit: int

    def submit(self, item: Any) -> Any:
        """Start an attempt at ``item``; its handle."""

    def wait(self, handles: list[Any], timeout_s: float) -> list[Any]:
        """Those of ``handles`` that ended, waiting at most ``timeout_s`` for one."""

    def result(self, handle: Any) -> tuple[bool, Any]:
        """(True, value) or (False, an error line); raises what must stop the map."""

    def stuck(self, handle: Any) -> None:
        """Stop an attempt that ran out of time."""


class Ledger:
    """Items, their attempts and outcomes; ``running`` maps an attempt's handle (a Ray
    object ref, opaque here) to its item's index and start time."""

    def __init__(self, items: list[Any], *, max_retries: int, timeout_s: float | None,
                 on_done: Callable[[Outcome], None] | None, advance: Callable[[int], None],
                 desc: str):
        self.items, self.max_retries, self.timeout_s = items, max_retries, timeout_s
        self.on_done, self.advance, self.desc = on_done, advance, desc
        self.outcomes: list[Outcome | None] = [None] * len(items)
        self.attempts = [0] * len(items)
        self.pending = list(range(len(items)))[::-1]  # pop() takes the lowest index first
        self.running: dict[Any, tuple[int, float]] = {}
        # (start, seq, handle) per attempt, oldest first: finding the next deadline or the
        # overdue attempts costs no scan of ``running`` (thousands in flight at many shards).
        # Ended attempts stay until they reach the top and are dropped there (lazily).
        self._starts: list[tuple[float, int, Any]] = []
        self._seq = itertools.count()

    @property
    def busy(self) -> bool:
        return bool(self.pending or self.running)

    def next_item(self, limit: int) -> int | None:
        """The index to attempt now (counted as an attempt), or None: nothing waits, or
        ``limit`` attempts already run."""
        if not self.pending or len(self.running) >= limit:
            return None
        i = self.pending.pop()
        self.attempts[i] += 1
        return i

    def started(self, i: int, handle: Any) -> None:
        now = time.monotonic()
        self.running[handle] = (i, now)
        if self.timeout_s:
            heapq.heappush(self._starts, (now, next(self._seq), handle))

    def _oldest(self) -> tuple[float, Any] | None:
        """(start, handle) of the oldest attempt still running, dropping ended ones."""
        while self._starts:
            start, _, handle = self._starts[0]
            if handle in self.running and self.running[handle][1] == start:
                return start, handle
            heapq.heappop(self._starts)
        return None

    def wait_s(self) -> float:
        """How long to wait for a result: at most 1 s, and no later than the oldest
        running attempt's deadline."""
        if not self.timeout_s or (oldest := self._oldest()) is None:
            return 1.0
        return max(0.05, min(1.0, oldest[0] + self.timeout_s - time.monotonic()))

    def overdue(self) -> list[Any]:
        """Handles of the attempts past their time limit, oldest first (taken off the heap:
        the caller ends each of them)."""
        if not self.timeout_s:
            return []
        now, out = time.monotonic(), []
        while (oldest := self._oldest()) is not None and now - oldest[0] > self.timeout_s:
            out.append(oldest[1])
            heapq.heappop(self._starts)
        return out

    def succeeded(self, handle: Any, value: Any) -> None:
        i, started = self.running.pop(handle)
        self._finish(i, Outcome(self.items[i], True, value=value, attempts=self.attempts[i],
                                seconds=time.monotonic() - started))

    def failed(self, handle: Any, message: str) -> None:
        """Queue the item again while it has retries left, else record it as failed."""
        i, started = self.running.pop(handle)
        if self.attempts[i] <= self.max_retries:
            log.warning("%s: %r failed (attempt %d/%d): %s — retrying", self.desc,
                        self.items[i], self.attempts[i], self.max_retries + 1, message)
            self.pending.append(i)
            return
        log.error("%s: %r failed after %d attempts: %s", self.desc, self.items[i],
                  self.attempts[i], message)
        self._finish(i, Outcome(self.items[i], False, error=message, attempts=self.attempts[i],
                                seconds=time.monotonic() - started))

    def _finish(self, i: int, outcome: Outcome) -> None:
        self.outcomes[i] = outcome
        if self.on_done is not None:
            self.on_done(outcome)
        self.advance(1)

    def run(self, pool: Pool) -> None:
        """Until every item has its outcome: start what ``pool.limit`` allows, wait for a
        result or the oldest deadline, record what ended, fail what ran out of time."""
        while self.busy:
            while (i := self.next_item(pool.limit)) is not None:
                self.started(i, pool.submit(self.items[i]))
            for handle in pool.wait(list(self.running), self.wait_s()):
                ok, value = pool.result(handle)
                (self.succeeded if ok else self.failed)(handle, value)
            for handle in self.overdue():
                pool.stuck(handle)
                self.failed(handle, f"timed out after {self.timeout_s:g} s")

    def results(self) -> list[Outcome]:
        return [o for o in self.outcomes if o is not None]
