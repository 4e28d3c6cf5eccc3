"""The score stage's ``top_fraction`` cut as global steps: a distributed radix selection.

Goal: keep exactly k = round(fraction x n) of the n scored pairs (those that passed every
earlier rule of the stage), the ones with the highest CLIP score over the whole pool, ties at
the boundary broken by uid key ascending (curate.algorithms.uids), without the driver ever
holding a score. Each pair has a 96-bit key ordered (score descending, uid key ascending);
the selection narrows a key prefix 16 bits per pass (``select0`` .. ``select5``): every shard
returns a histogram of the next digit among the rows that share the prefix, the driver
picks the digit where the k-th key falls. It stops as soon as that digit's whole bin is
kept (usually after two passes: the score's 32 bits); the ``apply`` step then rewrites each
shard's decisions. Keys equal in all 96 bits are kept together (k may be exceeded only by
pairs with equal scores and colliding 64-bit uid keys).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.algorithms import select
from curate.core.io import read_shard_meta, write_parquet_atomic
from curate.core.rundir import RunDir
from curate.stages.base import output_digest, summarize

LEVELS = select.LEVELS
BINS = select.BINS
REASON = "below_top_fraction"


def zeros() -> np.ndarray:
    return np.zeros(BINS, np.int64)


def add(acc: np.ndarray, item: Any, sparse: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    idx, counts = sparse
    acc[idx] += counts
    return acc


def _eligible(t: pa.Table) -> pa.Array:
    """Scored pairs no earlier rule of the stage dropped (the cut's own drops included)."""
    score = t["clip_score"]
    scored = pc.and_(pc.is_valid(score), pc.invert(pc.fill_null(pc.is_nan(score), True)))
    return pc.and_(scored, pc.fill_null(
        pc.or_kleene(pc.is_null(t["reason"]), pc.equal(t["reason"], REASON)), False))


def _keys(t: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    scores = t["clip_score"].to_numpy(zero_copy_only=False).astype(np.float32)
    return select.sort_keys(scores, t["uid"].combine_chunks())


def shard_histogram(rd: RunDir, folder: str, shard: str, prefix: list[int]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The next digit's histogram in one shard, sparse (small to ship)."""
    t = rd.read(folder, shard, ["uid", "clip_score", "reason"])
    t = t.filter(_eligible(t))
    hi, lo = _keys(t)
    h = select.digit_histogram(hi, lo, tuple(prefix))
    nz = np.flatnonzero(h)
    return nz.astype(np.int32), h[nz]


def choose(hist: np.ndarray, prev: dict[str, Any] | None, fraction: float) -> dict[str, Any]:
    """One pass of :class:`~curate.algorithms.select.TopKSelector` on the driver: extend the
    prefix by the digit holding the k-th key; the state is recorded in run.json between
    passes (each pass is its own global step)."""
    if prev is None:
        n = int(hist.sum())
        sel = select.TopKSelector(int(round(fraction * n)), n)
    else:
        sel = select.TopKSelector.resume(prev["k"], prev["n"], prev["prefix"], prev["need"])
    if not sel.done:
        sel.feed(hist)
    mode = "none" if sel.prefix is None else ("prefix" if sel.prefix else "all")
    return {"n": sel.n, "k": sel.k, "prefix": [int(d) for d in sel.prefix or ()],
            "need": int(sel.need), "done": sel.done, "mode": mode}


def apply(rd: RunDir, folder: str, shard: str, sel: dict[str, Any]) -> dict[str, Any]:
    """Rewrite one shard's decisions for the chosen cut (idempotent); returns its counts."""
    path = rd.shard_path(folder, shard)
    meta = read_shard_meta(rd.fs, path) or {}
    t = rd.read(folder, shard)
    eligible = _eligible(t).to_numpy(zero_copy_only=False)
    keep = np.zeros(t.num_rows, bool)
    if sel["mode"] == "all":
        keep = eligible.copy()
    elif sel["mode"] == "prefix":
        rows = np.flatnonzero(eligible)
        hi, lo = _keys(t.take(pa.array(rows)))
        keep[rows] = select.keep_mask(hi, lo, tuple(sel["prefix"]))
    cut = eligible & ~keep
    null = pa.scalar(None, pa.string())
    kept = pc.or_(pc.and_(pc.fill_null(t["kept"], False), pa.array(~eligible)), pa.array(keep))
    reason = pc.if_else(pa.array(eligible), pc.if_else(pa.array(cut), REASON, null),
                        t["reason"])
    detail = pc.if_else(pa.array(eligible), null, t["detail"])
    for name, col in (("kept", kept), ("reason", reason), ("detail", detail)):
        t = t.set_column(t.column_names.index(name), name, col)
    counts = summarize(True, t, meta.get("counts", {}).get("rows_in", t.num_rows))
    write_parquet_atomic(rd.fs, path, t, meta={
        **meta, "counts": {**meta.get("counts", {}), **counts}, "decided": output_digest(t)})
    scores = t["clip_score"].to_numpy(zero_copy_only=False)
    return {"rows_in": counts["rows_in"], "kept": counts["kept"],
            "dropped": counts["dropped"], "kept_top": int(keep.sum()),
            "min_kept": float(scores[keep].min()) if keep.any() else None}


def no_counts() -> dict[str, Any]:
    return {"rows_in": 0, "kept": 0, "dropped": {}, "kept_top": 0, "min_kept": None}


def add_counts(acc: dict[str, Any], item: Any, c: dict[str, Any]) -> dict[str, Any]:
    for k in ("rows_in", "kept", "kept_top"):
        acc[k] += c[k]
    for r, v in c["dropped"].items():
        acc["dropped"][r] = acc["dropped"].get(r, 0) + v
    if c["min_kept"] is not None:
        acc["min_kept"] = (c["min_kept"] if acc["min_kept"] is None
                           else min(acc["min_kept"], c["min_kept"]))
    return acc
