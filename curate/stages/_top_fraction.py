"""The score stage's ``top_fraction`` cut as global steps: a distributed radix selection.

Two choices define the cut (``score.filter``):

- ``top_fraction_of`` — over which pairs the fraction is taken. ``pool`` (default, DataComp's
  ``get_threshold``: a quantile over the whole pool's metadata): every pair that reached the
  stage and has a score, *including* pairs the stage's own basic filter drops (they are
  scored for this purpose and stay dropped under their basic code). ``survivors``: only the
  pairs that passed every earlier rule of the stage (curate's behaviour before issue 11).
  Pairs dropped by earlier *stages* never reach score: "pool" is the stage's input.
- ``top_fraction_rule`` — how many. ``exact_k``: exactly k = round(fraction x n) pairs, ties
  at the boundary broken by uid key ascending (curate.algorithms.uids). ``datacomp``:
  DataComp's rule verbatim, ``threshold = sorted_desc(scores)[int(n x fraction)]`` and keep
  every pair with ``score >= threshold`` (so int(n x f) + 1 pairs plus ties; f = 1 keeps all,
  where DataComp's index would run past the end).

In both cases the driver never holds a score. Each pair has a 96-bit key ordered (score
descending, uid key ascending); the selection narrows a key prefix 16 bits per pass
(``select0`` .. ``select5``): every shard returns a histogram of the next digit among the
ranked rows that share the prefix, the driver picks the digit where the k-th key falls. It
stops as soon as that digit's whole bin is kept (usually after two passes: the score's 32
bits), or — rule ``datacomp`` — once the score's 32 bits are fixed (the k-th score is then
the threshold and every tie is kept); the ``apply`` step then rewrites each shard's
decisions. Keys equal in all 96 bits are kept together (``exact_k`` may be exceeded only by
pairs with equal scores and colliding 64-bit uid keys). Scores are compared as float32.
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


def _scored(t: pa.Table) -> pa.Array:
    score = t["clip_score"]
    return pc.and_(pc.is_valid(score), pc.invert(pc.fill_null(pc.is_nan(score), True)))


def _passing(t: pa.Table) -> pa.Array:
    """Scored pairs no earlier rule of the stage dropped (the cut's own drops included):
    the pairs whose decision the cut writes."""
    return pc.and_(_scored(t), pc.fill_null(
        pc.or_kleene(pc.is_null(t["reason"]), pc.equal(t["reason"], REASON)), False))


def _ranked(t: pa.Table, of: str) -> pa.Array:
    """The pairs the fraction is taken over: every scored pair (``pool``) or only those
    passing the stage's earlier rules (``survivors``)."""
    return _scored(t) if of == "pool" else _passing(t)


def _keys(t: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    scores = t["clip_score"].to_numpy(zero_copy_only=False).astype(np.float32)
    return select.sort_keys(scores, t["uid"].combine_chunks())


def shard_histogram(rd: RunDir, folder: str, shard: str, prefix: list[int], of: str = "pool"
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The next digit's histogram over one shard's ranked rows, sparse (small to ship)."""
    t = rd.read(folder, shard, ["uid", "clip_score", "reason"])
    t = t.filter(_ranked(t, of))
    hi, lo = _keys(t)
    h = select.digit_histogram(hi, lo, tuple(prefix))
    nz = np.flatnonzero(h)
    return nz.astype(np.int32), h[nz]


def target_k(n: int, fraction: float, rule: str) -> int:
    """How many of the n ranked keys the selection looks for: round(f x n) (``exact_k``),
    or DataComp's threshold position int(n x f), as a count (+1), capped at n."""
    if rule == "datacomp":
        return min(int(n * fraction) + 1, n)
    return int(round(fraction * n))


def choose(hist: np.ndarray, prev: dict[str, Any] | None, fraction: float,
           rule: str = "exact_k") -> dict[str, Any]:
    """One pass of :class:`~curate.algorithms.select.TopKSelector` on the driver: extend the
    prefix by the digit holding the k-th key; the state is recorded in run.json between
    passes (each pass is its own global step). Rule ``datacomp`` stops once the two score
    digits are fixed: the k-th key's score is the threshold, and ``apply`` keeps every row
    at or above it (ties included)."""
    if prev is None:
        n = int(hist.sum())
        sel = select.TopKSelector(target_k(n, fraction, rule), n)
    else:
        sel = select.TopKSelector.resume(prev["k"], prev["n"], prev["prefix"], prev["need"])
    if not sel.done:
        sel.feed(hist)
    done = sel.done or (rule == "datacomp" and len(sel.prefix or ()) >= select.SCORE_LEVELS)
    mode = "none" if sel.prefix is None else ("prefix" if sel.prefix else "all")
    return {"n": sel.n, "k": sel.k, "prefix": [int(d) for d in sel.prefix or ()],
            "need": int(sel.need), "done": done, "mode": mode, "rule": rule}


def apply(rd: RunDir, folder: str, shard: str, sel: dict[str, Any], of: str = "pool"
          ) -> dict[str, Any]:
    """Rewrite one shard's decisions for the chosen cut (idempotent); returns its counts.

    Only passing pairs get a new decision (kept, or ``below_top_fraction``); in ``pool``
    mode a pair the basic filter dropped is ranked but keeps its basic code."""
    path = rd.shard_path(folder, shard)
    meta = read_shard_meta(rd.fs, path) or {}
    t = rd.read(folder, shard)
    ranked = _ranked(t, of).to_numpy(zero_copy_only=False)
    eligible = _passing(t).to_numpy(zero_copy_only=False)
    in_cut = np.zeros(t.num_rows, bool)
    if sel["mode"] == "all":
        in_cut = ranked.copy()
    elif sel["mode"] == "prefix":
        rows = np.flatnonzero(ranked)
        hi, lo = _keys(t.take(pa.array(rows)))
        in_cut[rows] = select.keep_mask(hi, lo, tuple(sel["prefix"]))
    keep = eligible & in_cut
    cut = eligible & ~in_cut
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
            "in_cut": int(in_cut.sum()),
            "min_kept": float(scores[in_cut].min()) if in_cut.any() else None}


def no_counts() -> dict[str, Any]:
    return {"rows_in": 0, "kept": 0, "dropped": {}, "kept_top": 0, "in_cut": 0,
            "min_kept": None}


def add_counts(acc: dict[str, Any], item: Any, c: dict[str, Any]) -> dict[str, Any]:
    for k in ("rows_in", "kept", "kept_top", "in_cut"):
        acc[k] += c.get(k, 0)
    for r, v in c["dropped"].items():
        acc["dropped"][r] = acc["dropped"].get(r, 0) + v
    if c["min_kept"] is not None:
        acc["min_kept"] = (c["min_kept"] if acc["min_kept"] is None
                           else min(acc["min_kept"], c["min_kept"]))
    return acc
