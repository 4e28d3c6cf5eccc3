"""The engine: its result transport (large results come back compressed and equal), its
failure policy (retries, time limits, one Outcome per item), and an early stop that leaves
no task or actor running."""

from __future__ import annotations

import os
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from curate.core import engine, packing, work
from curate.errors import InputError


def _result(n: int) -> dict:
    ids = np.arange(0, 3 * n, 3, dtype=np.int32)
    return {"shard": f"part-{n:05d}.parquet", "ids": ids, "counts": (ids % 7).astype(np.int32)}


def test_pack_round_trip_only_above_the_threshold():
    small, large = _result(10), _result(200_000)
    assert packing.pack(small) is small and packing.pack(None) is None
    packed = packing.pack(large)
    assert isinstance(packed, packing._Packed) and len(packed.data) < packed.size / 2
    back = packing.unpack(packed)
    assert back["shard"] == large["shard"]
    for k in ("ids", "counts"):
        assert back[k].dtype == large[k].dtype and np.array_equal(back[k], large[k])
    assert packing.unpack(small) is small


def test_map_items_returns_large_results_whole(ray_session):
    """np.arange (importable on workers): 40 B, 1.2 MB and 2.4 MB results, all whole."""
    outcomes = engine.map_items(np.arange, [5, 150_000, 300_000], desc="test")
    assert [o.ok for o in outcomes] == [True] * 3
    for o in outcomes:
        assert isinstance(o.value, np.ndarray) and np.array_equal(o.value, np.arange(o.item))


class _FakePool:
    """A pool without Ray: ``script[item]`` lists each attempt's end ("ok", "boom", or
    "hang": never ends); a fake clock moves 1 s per wait, so time limits need no sleeping."""

    def __init__(self, script: dict[str, list[str]], clock: list[float], limit: int = 2,
                 per_wait: int | None = 1):
        self.script, self.clock, self.limit, self.per_wait = script, clock, limit, per_wait
        self.started: list[str] = []
        self.stopped: list[str] = []
        self.ends: dict[int, str] = {}

    def submit(self, item):
        handle = len(self.started)
        self.started.append(item)
        self.ends[handle] = self.script[item][self.started.count(item) - 1]
        return handle

    def wait(self, handles, timeout_s):
        self.clock[0] += 1.0
        return [h for h in handles if self.ends[h] != "hang"][:self.per_wait]

    def result(self, handle):
        end = self.ends[handle]
        return (True, self.started[handle].upper()) if end == "ok" else (False, f"{end}!")

    def stuck(self, handle):
        self.stopped.append(self.started[handle])


@pytest.mark.parametrize(("limit", "per_wait"), [(2, 1), (2, None), (5, None), (5, 1)])
def test_ledger_retries_times_out_and_records_one_outcome_per_item(monkeypatch, limit,
                                                                    per_wait):
    """Also when a wait hands back every ended attempt at once (the engine's way), and with
    several attempts timing out together (the deadline heap)."""
    clock = [0.0]
    monkeypatch.setattr(work.time, "monotonic", lambda: clock[0])
    pool = _FakePool({"a": ["ok"], "b": ["boom", "ok"], "c": ["boom", "boom"],
                      "d": ["hang", "ok"], "e": ["hang", "hang"]}, clock, limit, per_wait)
    done: list[str] = []
    book = work.Ledger(list("abcde"), max_retries=1, timeout_s=2.5, advance=lambda n: None,
                       on_done=lambda o: done.append(o.item), desc="t")
    book.run(pool)
    got = [(o.item, o.ok, o.value, o.error, o.attempts) for o in book.results()]
    assert got == [("a", True, "A", None, 1), ("b", True, "B", None, 2),
                   ("c", False, None, "boom!", 2), ("d", True, "D", None, 2),
                   ("e", False, None, "timed out after 2.5 s", 2)]
    assert sorted(done) == list("abcde")          # on_done once per item
    assert sorted(pool.stopped) == ["d", "e", "e"]  # each attempt out of time was stopped
    assert len(pool.started) == 1 + 2 + 2 + 2 + 2   # and no item ran past max_retries + 1


def _gone(pid: int) -> bool:
    """The process has ended (a zombie not yet reaped by its parent counts as ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:  # Linux: the state letter follows the parenthesised command name
        return stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:  # it ended just now; or no /proc (not Linux): os.kill said alive
        return Path("/proc/self").exists()


def _until(cond, what: str, bound_s: float = 60.0) -> None:
    """Poll for a condition a correct engine reaches in well under a second."""
    end = time.monotonic() + bound_s
    while not cond():
        assert time.monotonic() < end, what
        time.sleep(0.05)


def _hold(marks: str, fail: str, item: str) -> str:
    """A Ray worker: "slow" notes its process at start, sleeps far longer than the test
    waits, and would note its end; "fast" waits until "slow" runs, notes its own process,
    then ends (``fail="worker"``: with an InputError, which stops the map)."""
    folder = Path(marks)
    if item == "slow":
        (folder / "slow.start").write_text(str(os.getpid()))
        time.sleep(300)
        (folder / "slow.end").write_text("finished")
        return item
    deadline = time.monotonic() + 60
    while not (folder / "slow.start").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    (folder / "fast.start").write_text(str(os.getpid()))
    if fail == "worker":
        raise InputError("bad input: stop the map")
    return item


def _stop(error: BaseException, outcome: engine.Outcome) -> None:
    if outcome.item == "fast":
        raise error


@pytest.mark.parametrize("fail,expected", [
    ("on_done", RuntimeError), ("ctrl-c", KeyboardInterrupt), ("worker", InputError)])
@pytest.mark.parametrize("num_actors", [None, 2])
def test_an_early_stop_leaves_no_task_or_actor_running(tmp_path, ray_session, fail, expected,
                                                       num_actors):
    """on_done raising, Ctrl-C in it, or a worker's InputError: map_items raises it, and by
    then the slow item's attempt is cancelled (task mode: its worker process killed) or its
    actor killed, and in actor mode the other actor too: every process that ran an item
    ends, and the slow item never notes its end."""
    engine.ship_by_value(sys.modules[__name__])  # workers cannot import this test module
    on_done = None if fail == "worker" else partial(_stop, expected("stop"))
    with pytest.raises(expected):
        engine.map_items(partial(_hold, str(tmp_path), fail), ["fast", "slow"],
                         max_in_flight=2, num_actors=num_actors, on_done=on_done,
                         max_retries=0, desc="early stop")
    slow_pid = int((tmp_path / "slow.start").read_text())
    fast_pid = int((tmp_path / "fast.start").read_text())
    _until(lambda: _gone(slow_pid), "the slow item's worker is still running")
    if num_actors:  # the idle actor is killed too (a task's worker returns to Ray's pool)
        assert fast_pid != slow_pid
        _until(lambda: _gone(fast_pid), "the idle actor is still alive")
    assert not (tmp_path / "slow.end").exists()
