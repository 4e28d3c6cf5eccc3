"""Fault injection for crash-safety tests: ``CURATE_FAULT`` kills or breaks a chosen point.

Format: ``STAGE:SHARD:ACTION[,...]`` where STAGE is a stage instance (``score``), a global
step of one (``prune.assign``; ``commit`` as SHARD is the step's commit on the driver) or
``ingest``, and SHARD is a shard file name (``part-00002.parquet``), its number (``2``), an
item's number (a bucket) or ``*``; ACTION is ``raise`` (the shard fails, and is retried), ``hang``
(the worker never returns, until the engine's time limit cancels it), ``kill``
(the worker process dies with SIGKILL) or ``kill-driver`` (the whole run dies; resumable).
``after`` as a 4th field fires after the shard's output is written. Unset in normal use:
the check is one environment lookup.
"""

from __future__ import annotations

import os
import signal

from curate.core.io import shard_index


class InjectedFault(RuntimeError):
    pass


def _matches(rule: list[str], stage: str, shard: str, after_write: bool) -> bool:
    if len(rule) < 3 or rule[0] != stage:
        return False
    if (len(rule) > 3 and rule[3] == "after") != after_write:
        return False
    want = rule[1]
    if want == "*":
        return True
    if want.isdigit():
        if shard.startswith("part-"):
            return shard_index(shard) == int(want)
        return shard.isdigit() and int(shard) == int(want)
    return want == shard


def maybe_fail(stage: str, shard: str, after_write: bool = False) -> None:
    spec = os.environ.get("CURATE_FAULT")
    if not spec:
        return
    for raw in spec.split(","):
        rule = raw.strip().split(":")
        if not _matches(rule, stage, shard, after_write):
            continue
        action = rule[2]
        if action == "raise":
            raise InjectedFault(f"injected fault in {stage} {shard}")
        if action == "hang":  # a stuck worker: the engine's time limit must end it
            import time

            time.sleep(3600)
        if action in ("kill", "kill-driver"):
            if action == "kill-driver" and os.environ.get("CURATE_DRIVER_PID"):
                os.kill(int(os.environ["CURATE_DRIVER_PID"]), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)


def trace(stage: str, item: str) -> None:
    """Append ``stage item`` to ``CURATE_TRACE`` (a test hook: proves what was processed)."""
    path = os.environ.get("CURATE_TRACE")
    if path:
        with open(path, "a") as f:
            f.write(f"{stage} {item}\n")
