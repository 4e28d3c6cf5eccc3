"""Progress reporting: a rich bar on a terminal, a few log lines everywhere else.

Cron and `ray job submit` logs are files, where a redrawn bar is noise; there we log at
most every 10% so a long job still shows it is alive.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("curate")


@contextmanager
def bar(desc: str, total: int) -> Iterator[Callable[[int], None]]:
    if sys.stderr.isatty():
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                      transient=False) as progress:
            task = progress.add_task(desc, total=total)
            yield lambda n: progress.advance(task, n)
        return
    done = 0
    next_mark = 0.1
    start = time.monotonic()

    def advance(n: int) -> None:
        nonlocal done, next_mark
        done += n
        if total and done / total >= next_mark - 1e-9:
            log.info("%s: %d/%d (%.0fs)", desc, done, total, time.monotonic() - start)
            while next_mark <= done / total:
                next_mark += 0.1

    yield advance
