"""Several work items per Ray task, the failure policy still per item.

Why: a Ray task costs the driver ~1.3 ms of CPU and its worker ~1.9 ms however small the
item. A 10B-pair run has ~200,000 shards and every step of every stage touches each, so
with one shard per task the driver alone would spend about an hour per run on Ray's round
trips (bench/bench_driver.py, docs/SCALE.md). When the items far outnumber the tasks that
can run at once (``BATCH_SPREAD`` x k per task slot), k of them (at most ``BATCH_MAX``) go
to one task; with fewer items, or on actors (a model held per actor: a task is not what
costs there), one item per task as before.

The failure policy stays per item (curate/core/work.py): an item that raises inside its
batch has used its first attempt and runs again alone for the rest; every item of a batch
that died (worker killed, or past k x the time limit: which item did it is unknown) runs
again alone with all its attempts. A :class:`~curate.errors.CurateError` (bad input) stops
the step as it would alone. Shard steps and global steps' map items both come through here,
so they batch the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from curate.core import engine
from curate.core.work import Outcome, Resources
from curate.errors import CurateError

#: k items per Ray task when there are >= BATCH_SPREAD x k per task slot; k <= BATCH_MAX
BATCH_SPREAD, BATCH_MAX = 4, 16


def batch_size(n_items: int, resources: Resources | None = None,
               max_in_flight: int | None = None, num_actors: int | None = None) -> int:
    """How many items one task gets: 1 unless they far outnumber the task slots."""
    if num_actors or n_items < 2 * BATCH_SPREAD:
        return 1
    slots = engine.in_flight_limit(resources, max_in_flight)
    return max(1, min(BATCH_MAX, n_items // (BATCH_SPREAD * slots)))


def map_batched(fn: Callable[[Any], Any], items: Iterable[Any], *, max_retries: int = 2,
                timeout_s: float | None = None, on_done: Callable[[Outcome], None] | None = None,
                **kw: Any) -> list[Outcome]:
    """:func:`engine.map_items` with k items per task where that pays; same arguments, same
    result (one :class:`Outcome` per item, in order; ``on_done`` once per item as it ends)."""
    items = list(items)
    k = batch_size(len(items), kw.get("resources"), kw.get("max_in_flight"),
                   kw.get("num_actors"))
    if k < 2:
        return engine.map_items(fn, items, max_retries=max_retries, timeout_s=timeout_s,
                                on_done=on_done, **kw)
    done: dict[int, Outcome] = {}
    tried: dict[int, str] = {}  # position -> its error in the batch (attempt 1 used)
    fresh: list[int] = []  # positions in a batch that died

    def settle(pos: int, outcome: Outcome) -> None:
        done[pos] = outcome
        if on_done is not None:
            on_done(outcome)

    def batch_done(b: Outcome) -> None:
        start, chunk = b.item
        results = b.value if b.ok else [(None, None)] * len(chunk)
        for pos, item, (ok, value) in zip(range(start, start + len(chunk)), chunk, results,
                                          strict=True):
            if ok:
                settle(pos, Outcome(item, True, value=value, seconds=b.seconds / len(chunk)))
            elif ok is None:
                fresh.append(pos)
            elif max_retries:
                tried[pos] = value
            else:
                settle(pos, Outcome(item, False, error=value))
        if on_done is not None:  # a caller that folds keeps nothing per item: nor do we
            b.value = None

    engine.map_items(partial(run_batch, fn), [(j, items[j:j + k])
                                              for j in range(0, len(items), k)],
                     max_retries=0, timeout_s=timeout_s and timeout_s * k, on_done=batch_done,
                     **kw)

    def again(positions: list[int], retries: int, extra: int) -> None:
        def one(o: Outcome) -> None:
            o.attempts += extra
            if on_done is not None:
                on_done(o)

        outs = engine.map_items(fn, [items[p] for p in positions], max_retries=retries,
                                timeout_s=timeout_s, on_done=one, **kw)
        done.update(zip(positions, outs, strict=True))

    if tried:
        again(sorted(tried), max_retries - 1, 1)
    if fresh:
        again(sorted(fresh), max_retries, 0)
    return [done[p] for p in range(len(items))]


def run_batch(fn: Callable[[Any], Any], batch: tuple[int, list[Any]]
              ) -> list[tuple[bool, Any]]:
    """In a worker: ``fn`` for each item of ``(start, items)``, (True, its value) or (False,
    an error line); one item's exception does not end the batch."""
    out: list[tuple[bool, Any]] = []
    for item in batch[1]:
        try:
            out.append((True, fn(item)))
        except CurateError:
            raise
        except Exception as err:  # noqa: BLE001 - retried alone by the caller
            out.append((False, engine.error_line(err)))
    return out
