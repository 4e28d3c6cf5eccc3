"""Shared helpers for the benchmarks: peak RSS and a markdown result line."""

from __future__ import annotations

import os
import platform
import resource


def peak_rss_mb(children: bool = False) -> float:
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def timed(fn) -> tuple[float, object]:
    """(seconds, result) of one call."""
    import time

    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result
