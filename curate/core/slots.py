"""Counting slots per key, shared by many processes: the bookkeeping behind a cluster-wide
cap (download's per-host cap), without Ray.

:func:`split` comes first: a cap over a known number of tasks at once is mostly split
between them (each holds its share, no calls), and only the remainder is a shared table.

:class:`SlotTable` is the one place that decides: at most ``capacity`` slots per key are
leased at a time, each to a *holder* (one process's :class:`Leases`). A holder that stops
syncing (its worker died, or was killed for a time limit) loses its slots after
``lease_s``, so a crash never shrinks the cap for good. The engine serves the table from
one Ray actor per session (:class:`GateActor`, started by ``curate.core.engine``); tests
drive the table directly.

:class:`Leases` is a process's side, and why it *batches*: one remote call per request
(take, then give) cost ~1.5 ms each inside a Ray worker, serialised across the worker's
threads, and cut download's rate to a third on two cores (measured, bench_download). So
a process talks to the table through one background thread, one call at a time, each call
carrying every key its threads now want and every slot it gives back (``sync``); a slot a
thread is done with stays in the process while the caller says more requests for that key
are coming (``keep``: download knows how many of a shard's URLs each host has left) and no
other holder is waiting for the key (the table says which keys are *contended*). Remote
calls then scale with the number of hosts a task touches, not with its requests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def split(capacity: int, holders: int) -> tuple[int, int]:
    """A cap of ``capacity`` per key over at most ``holders`` tasks at once: (``reserved``
    slots per key each task holds alone, ``shared`` slots per key left to a gate).
    ``holders * reserved + shared == capacity``, so the cap holds whatever the tasks do;
    where ``holders`` divides ``capacity`` nothing is shared and no task ever makes a
    remote call for it (the gate's calls cost a download ~10% on two cores, measured)."""
    if capacity < 1 or holders < 1:
        raise ValueError(f"capacity and holders must be >= 1, got {capacity}, {holders}")
    reserved = capacity // holders
    return reserved, capacity - reserved * holders


class SlotTable:
    """Slots per key, leased to holders; pure bookkeeping (the caller supplies ``now``)."""

    def __init__(self, capacity: int, lease_s: float = 30.0):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.lease_s = lease_s
        self.used: dict[str, int] = {}                  # key -> slots leased
        self.held: dict[str, dict[str, int]] = {}       # holder -> key -> slots
        self.seen: dict[str, float] = {}                # holder -> last call
        self.wanting: dict[str, set[str]] = {}          # key -> holders refused last sync
        self.waiting_for: dict[str, set[str]] = {}      # holder -> its keys in ``wanting``
        self.peak = 0                                    # most slots of one key at once
        self.cap_hits = 0                                # times a key reached capacity
        self.waits = 0                                   # slots asked for and refused
        self.calls = 0                                   # syncs served

    def sync(self, holder: str, want: dict[str, int], give: dict[str, int], now: float
             ) -> tuple[dict[str, int], list[str]]:
        """Take back ``give``, grant what is free of ``want``; returns (granted per key,
        the keys this holder holds that another holder is waiting for)."""
        self.expire(now)
        self.calls += 1
        self.seen[holder] = now
        for key, n in give.items():
            self.release(holder, key, n)
        granted: dict[str, int] = {}
        short: set[str] = set()  # keys this holder still waits for after this call
        for key, n in want.items():
            got = 0
            while got < n and self.try_acquire(holder, key):
                got += 1
            if got:
                granted[key] = got
            if got < n:
                short.add(key)
                self.waits += n - got
        self._waiting(holder, short)
        mine = self.held.get(holder, {})
        contended = [k for k in mine if self.wanting.get(k, set()) - {holder}]
        return granted, contended

    def try_acquire(self, holder: str, key: str) -> bool:
        n = self.used.get(key, 0)
        if n >= self.capacity:
            return False
        self.used[key] = n + 1
        self.peak = max(self.peak, n + 1)
        self.cap_hits += n + 1 == self.capacity
        mine = self.held.setdefault(holder, {})
        mine[key] = mine.get(key, 0) + 1
        return True

    def release(self, holder: str, key: str, n: int = 1) -> int:
        """Give back up to ``n`` of ``holder``'s slots of ``key``; returns how many."""
        mine = self.held.get(holder, {})
        n = min(n, mine.get(key, 0))
        if n <= 0:
            return 0
        mine[key] -= n
        if not mine[key]:
            del mine[key]
        self.used[key] -= n
        if not self.used[key]:
            del self.used[key]
        return n

    def expire(self, now: float) -> list[str]:
        """Free the slots of holders not heard from for ``lease_s``; the keys freed."""
        freed: list[str] = []
        for holder, last in list(self.seen.items()):
            if now - last <= self.lease_s:
                continue
            for key, n in list(self.held.get(holder, {}).items()):
                self.release(holder, key, n)
                freed.append(key)
            self.held.pop(holder, None)
            del self.seen[holder]
            self._waiting(holder, set())
        return freed

    def _waiting(self, holder: str, keys: set[str]) -> None:
        """Record that ``holder`` now waits for exactly ``keys`` (O(its keys), not O(all
        keys anyone waits for): this runs on every call the gate actor serves)."""
        before = self.waiting_for.pop(holder, set())
        for key in before - keys:
            self.wanting[key].discard(holder)
            if not self.wanting[key]:
                del self.wanting[key]
        for key in keys - before:
            self.wanting.setdefault(key, set()).add(holder)
        if keys:
            self.waiting_for[holder] = keys

    def stats(self) -> dict:
        """Constant size, however many keys (hosts) went through."""
        return {"capacity": self.capacity, "peak_per_key": self.peak,
                "cap_hits": self.cap_hits, "waits": self.waits, "calls": self.calls}


class GateActor:
    """The gates of one Ray session, as one Ray actor (the engine starts it once and keeps
    it: starting an actor is a new worker process, ~0.7 s of CPU on a busy 2-core machine,
    which a download stage paid on every run when each stage had its own). One
    :class:`SlotTable` per open gate name; methods never block, so one thread serves every
    holder in order."""

    def __init__(self):
        self.tables: dict[str, tuple[SlotTable, int]] = {}
        self.opened = 0

    def open(self, name: str, capacity: int, lease_s: float) -> None:
        self.opened += 1  # the generation: slots of an earlier table are not this one's
        self.tables[name] = (SlotTable(capacity, lease_s), self.opened)

    def close(self, name: str) -> dict:
        table, _ = self.tables.pop(name, (None, 0))
        return table.stats() if table is not None else {}

    def sync(self, name: str, holder: str, want: dict[str, int], give: dict[str, int]
             ) -> tuple[dict[str, int], list[str], int | None]:
        """(granted, contended, generation); generation None: the gate is closed."""
        table, gen = self.tables.get(name, (None, None))
        if table is None:
            return {}, [], None
        return (*table.sync(holder, want, give, time.monotonic()), gen)


class Leases:
    """One process's slots: ``acquire(key)`` / ``release(key, keep)`` from its threads.

    ``sync(want, give) -> (granted, contended[, generation])`` is the table's call (remote;
    generation None: the gate is closed, so grant everything; a new generation voids the
    slots kept from an earlier table, as a cached client outlives a stage run); only this
    object's background thread makes it, at most one at a time: at least every
    ``renew_s`` (which keeps the leases alive), every ``check_s`` while it keeps idle slots
    (to learn that another holder waits for one), and every ``poll_s`` while one of its
    threads waits for a key at its cap. An idle kept slot goes back after ``linger_s``, or at the
    next call when its key is contended. A failing call (the table is gone) makes this
    object *open*: it grants everything from then on, and the caller's local cap is the only
    one left (``on_error`` is told once).
    """

    def __init__(self, sync: Callable[[dict, dict], tuple],
                 linger_s: float = 0.5, renew_s: float = 5.0, poll_s: float = 0.02,
                 check_s: float = 0.1,
                 on_error: Callable[[BaseException], None] | None = None):
        self._sync = sync
        self.linger_s, self.renew_s, self.poll_s = linger_s, renew_s, poll_s
        self.check_s = check_s  # while slots are kept idle: how often to ask if contended
        self._on_error = on_error
        self._cv = threading.Condition()
        self._idle: dict[str, int] = {}      # slots held, unused
        self._since: dict[str, float] = {}   # key -> when its idle slot came back
        self._want: dict[str, int] = {}      # key -> threads waiting for a slot
        self._give: dict[str, int] = {}      # slots to hand back at the next call
        self._pre: dict[str, int] = {}       # slots to ask for before a thread needs them
        self._contended: set[str] = set()
        self._wake = threading.Event()
        self._stop = False
        self.open = False
        self._closed = False                 # the gate is closed: grant all, keep nothing
        self._gen: int | None = None         # the table generation our slots belong to
        self._replies = 0                    # calls answered (a waiter for a fresh answer)
        self.remote_calls = 0
        self._thread = threading.Thread(target=self._loop, name="leases", daemon=True)
        self._thread.start()

    def acquire(self, key: str, deadline: float | None = None) -> bool:
        """Take a slot of ``key``; False when ``deadline`` (time.monotonic) passed first."""
        with self._cv:
            if self._take_idle(key):
                return True
            self._want[key] = self._want.get(key, 0) + 1
            self._wake.set()
            try:
                if self._closed:  # closed at the last call: a new run may have reopened it
                    seen = self._replies
                    self._cv.wait_for(lambda: self._replies > seen or self.open, timeout=5.0)
                while not (self.open or self._closed):
                    if self._take_idle(key):
                        return True
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._cv.wait(1.0 if left is None else min(left, 1.0))
                return True
            finally:
                self._want[key] -= 1
                if not self._want[key]:
                    del self._want[key]

    def prefetch(self, want: dict[str, int]) -> None:
        """Ask for slots before any thread needs them (at most once per key and call):
        a task that knows its keys starts with them instead of one round trip per key.
        Unused, they go back after ``linger_s``, or sooner when contended."""
        with self._cv:
            for k, n in want.items():
                self._pre[k] = max(self._pre.get(k, 0), n)
        self._wake.set()

    def release(self, key: str, keep: bool = True) -> None:
        with self._cv:
            if self.open or self._closed:
                return
            if self._want.get(key) or (keep and key not in self._contended):
                self._idle[key] = self._idle.get(key, 0) + 1
                self._since[key] = time.monotonic()
                self._cv.notify_all()
            else:
                self._give[key] = self._give.get(key, 0) + 1
                self._wake.set()

    def close(self) -> None:
        """Give back every slot and stop (call when no thread holds one)."""
        with self._cv:
            self._stop = True
        self._wake.set()
        self._thread.join(timeout=30)

    def _take_idle(self, key: str) -> bool:
        if self._idle.get(key, 0) > 0:
            self._idle[key] -= 1
            if not self._idle[key]:
                del self._idle[key]
            return True
        return False

    def _loop(self) -> None:
        last = time.monotonic()
        while True:
            with self._cv:
                waiting, kept = bool(self._want), bool(self._idle)
            self._wake.wait(self.poll_s if waiting else min(
                self.linger_s / 2, self.check_s if kept else self.renew_s))
            self._wake.clear()
            now = time.monotonic()
            with self._cv:
                stop = self._stop
                want = {k: n - self._idle.get(k, 0) for k, n in self._want.items()
                        if n > self._idle.get(k, 0)}
                for k, n in self._pre.items():
                    if n > self._idle.get(k, 0) + want.get(k, 0):
                        want[k] = n - self._idle.get(k, 0)
                self._pre = {}
                give, self._give = self._give, {}
                for k, n in list(self._idle.items()):
                    if stop or k in self._contended or now - self._since.get(k, 0) >= \
                            self.linger_s:
                        give[k] = give.get(k, 0) + n
                        del self._idle[k]
            if self.open:
                return
            if want or give or stop or now - last >= (self.check_s if kept else self.renew_s):
                try:
                    self.remote_calls += 1
                    reply = self._sync({} if stop else want, give)
                except Exception as err:  # noqa: BLE001 - a lost table must not stop fetching
                    self._fail(err)
                    return
                granted, contended, gen = reply if len(reply) == 3 else (*reply, 0)
                last = now
                with self._cv:
                    self._replies += 1
                    self._closed = gen is None
                    if gen != self._gen:  # a new table (or none): our kept slots are void
                        self._idle, self._gen = {}, gen
                    for k, n in granted.items():
                        self._idle[k] = self._idle.get(k, 0) + n
                        self._since[k] = now
                    self._contended = set(contended)
                    if self._contended & set(self._idle):
                        self._wake.set()  # hand kept slots on at once
                    self._cv.notify_all()
            if stop:
                return

    def _fail(self, err: BaseException) -> None:
        with self._cv:
            if self.open:
                return
            self.open = True
            self._cv.notify_all()
        if self._on_error is not None:
            self._on_error(err)
