"""A global cut over one numeric column, declared by a stage in one line.

``Cut(column, reason, top_fraction=... | bottom_fraction=... | min=/max=, rule, of)`` and
``steps += cut_steps(self, cut)`` after the stage's shard step: the shard step writes the
column and a provisional decision per pair; the cut's global steps then rewrite each shard's
decisions through :func:`curate.stages.runtime.rewrite_shard` (same checks, counts and
footer as the shard step). The score stage's DataComp ``top_fraction`` is one user; the
``quantile`` kind is another.

Thresholds (``min``/``max``) need no global knowledge: one ``apply`` step. A fraction is a
distributed radix selection in which the driver never holds a value: each pair has a 96-bit
key ordered (value descending — ascending for ``bottom_fraction`` — then uid key ascending);
``select0`` .. ``select5`` narrow a key prefix 16 bits per pass (every shard returns a
histogram of the next digit among the ranked rows that share the prefix, the driver picks the
digit where the k-th key falls; :mod:`curate.algorithms.select`), stopping as soon as that
digit's whole bin is kept, or — rule ``datacomp`` — once the value's 32 bits are fixed.

- ``rule``: ``exact_k`` keeps k = round(f x n) pairs, ties at the boundary broken by uid key;
  ``datacomp`` is DataComp's ``get_threshold`` verbatim: ``threshold = sorted_desc(v)[int(n
  x f)]``, keep ``v >= threshold`` (ties kept; f = 1 keeps all).
- ``of``: ``pool`` ranks every pair with a value, including those another rule of the same
  stage dropped (they stay dropped under their own code: DataComp's quantile is over the
  whole pool's metadata); ``survivors`` ranks only pairs no earlier rule of the stage dropped.

Values are compared as float32. Pairs without a value (null, NaN) are never ranked and keep
the decision the shard step gave them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.algorithms import select
from curate.stages.base import GlobalStep, Stage
from curate.stages.runtime import rewrite_shard

LEVELS = select.LEVELS


@dataclass(frozen=True)
class Cut:
    """What to cut: ``column`` of the stage's shard output, drops coded ``reason``."""

    column: str
    reason: str
    top_fraction: float | None = None
    bottom_fraction: float | None = None
    min: float | None = None
    max: float | None = None
    rule: Literal["exact_k", "datacomp"] = "datacomp"
    of: Literal["pool", "survivors"] = "pool"

    def __post_init__(self) -> None:
        fractions = [f for f in (self.top_fraction, self.bottom_fraction) if f is not None]
        bounds = self.min is not None or self.max is not None
        if len(fractions) > 1 or (fractions and bounds) or not (fractions or bounds):
            raise ValueError("a cut is one of top_fraction, bottom_fraction, or min/max")
        if fractions and not 0 < fractions[0] <= 1:
            raise ValueError(f"a cut's fraction must be in (0, 1], got {fractions[0]}")

    @property
    def fraction(self) -> float | None:
        return self.top_fraction if self.top_fraction is not None else self.bottom_fraction

    @property
    def sign(self) -> float:
        """Keys rank descending: a bottom fraction ranks the negated values."""
        return -1.0 if self.bottom_fraction is not None else 1.0


# --------------------------------------------------------------------------- row masks


def _valued(t: pa.Table, cut: Cut) -> pa.Array:
    v = pc.cast(t[cut.column], pa.float64())
    return pc.and_(pc.is_valid(v), pc.invert(pc.fill_null(pc.is_nan(v), True)))


def _passing(t: pa.Table, cut: Cut) -> pa.Array:
    """Valued pairs no other rule of the stage dropped (the cut's own drops included):
    the pairs whose decision the cut writes."""
    return pc.and_(_valued(t, cut), pc.fill_null(
        pc.or_kleene(pc.is_null(t["reason"]), pc.equal(t["reason"], cut.reason)), False))


def _ranked(t: pa.Table, cut: Cut) -> pa.Array:
    return _valued(t, cut) if cut.of == "pool" else _passing(t, cut)


def _keys(t: pa.Table, cut: Cut) -> tuple[np.ndarray, np.ndarray]:
    v = t[cut.column].to_numpy(zero_copy_only=False).astype(np.float32) * np.float32(cut.sign)
    return select.sort_keys(v, t["uid"].combine_chunks())


def _read(stage: Stage, shard: str, cut: Cut) -> pa.Table:
    return stage.rd.read(stage.pipeline.ref(stage.name).folder, shard,
                         ["uid", cut.column, "reason"])


def histogram(stage: Stage, cut: Cut, prefix: list[int], shard: str
              ) -> tuple[np.ndarray, np.ndarray]:
    """The next digit's histogram over one shard's ranked rows, sparse (small to ship)."""
    t = _read(stage, shard, cut)
    t = t.filter(_ranked(t, cut))
    hi, lo = _keys(t, cut)
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
           rule: str) -> dict[str, Any]:
    """One pass of :class:`~curate.algorithms.select.TopKSelector` on the driver: extend the
    prefix by the digit holding the k-th key. Rule ``datacomp`` stops once the value's
    digits are fixed: the k-th key's value is the threshold, ties included."""
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


def decide(cut: Cut, sel: dict[str, Any] | None, t: pa.Table) -> pa.Table:
    """A shard's decisions under the cut (idempotent): passing pairs are kept or get
    ``cut.reason``; every other pair keeps its decision. ``sel``: the selection's last
    state (None for a min/max cut)."""
    ranked = _ranked(t, cut).to_numpy(zero_copy_only=False)
    eligible = _passing(t, cut).to_numpy(zero_copy_only=False)
    if sel is None:
        v = pc.cast(t[cut.column], pa.float64())
        inside = pa.array(np.ones(t.num_rows, bool))
        if cut.min is not None:
            inside = pc.and_(inside, pc.greater_equal(v, cut.min))
        if cut.max is not None:
            inside = pc.and_(inside, pc.less_equal(v, cut.max))
        in_cut = ranked & pc.fill_null(inside, False).to_numpy(zero_copy_only=False)
    else:
        in_cut = np.zeros(t.num_rows, bool)
        if sel["mode"] == "all":
            in_cut = ranked.copy()
        elif sel["mode"] == "prefix":
            rows = np.flatnonzero(ranked)
            hi, lo = _keys(t.take(pa.array(rows)), cut)
            in_cut[rows] = select.keep_mask(hi, lo, tuple(sel["prefix"]))
    null = pa.scalar(None, pa.string())
    elig = pa.array(eligible)
    kept = pc.or_(pc.and_(pc.fill_null(t["kept"], False), pa.array(~eligible)),
                  pa.array(eligible & in_cut))
    reason = pc.if_else(elig, pc.if_else(pa.array(eligible & ~in_cut), cut.reason, null),
                        t["reason"])
    detail = pc.if_else(elig, null, t["detail"])
    for name, col in (("kept", kept), ("reason", reason), ("detail", detail)):
        t = t.set_column(t.column_names.index(name), name, col)
    return t.append_column("_in_cut", pa.array(in_cut))


def apply(stage: Stage, cut: Cut, sel: dict[str, Any] | None, shard: str) -> dict[str, Any]:
    """Rewrite one shard's decisions (through the runtime); its counts and where the cut
    fell in it (the boundary value)."""
    seen: dict[str, Any] = {}

    def rewrite(t: pa.Table) -> pa.Table:
        out = decide(cut, sel, t)
        in_cut = out["_in_cut"].to_numpy(zero_copy_only=False)
        v = out[cut.column].to_numpy(zero_copy_only=False).astype(np.float64)[in_cut]
        seen.update(in_cut=int(in_cut.sum()), kept_cut=int(pc.sum(pc.and_(
            out["_in_cut"], pc.fill_null(out["kept"], False))).as_py() or 0),
            edge=(float(v.min() if cut.sign > 0 else v.max()) if v.size else None))
        return out.drop_columns(["_in_cut"])

    counts = rewrite_shard(stage, shard, rewrite)
    return {"rows_in": counts["rows_in"], "kept": counts["kept"],
            "dropped": counts["dropped"], **seen}


def no_counts() -> dict[str, Any]:
    return {"rows_in": 0, "kept": 0, "dropped": {}, "in_cut": 0, "kept_cut": 0, "edge": None}


def add_counts(acc: dict[str, Any], item: Any, c: dict[str, Any], sign: float = 1.0
               ) -> dict[str, Any]:
    for k in ("rows_in", "kept", "in_cut", "kept_cut"):
        acc[k] += c.get(k, 0)
    for r, v in c["dropped"].items():
        acc["dropped"][r] = acc["dropped"].get(r, 0) + v
    if c["edge"] is not None:
        pick = min if sign > 0 else max
        acc["edge"] = c["edge"] if acc["edge"] is None else pick(acc["edge"], c["edge"])
    return acc


def _zeros() -> np.ndarray:
    return np.zeros(select.BINS, np.int64)


def _add(acc: np.ndarray, item: Any, sparse: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    idx, counts = sparse
    acc[idx] += counts
    return acc


def cut_steps(stage: Stage, cut: Cut) -> list[GlobalStep]:
    """The global steps of ``cut`` for ``stage``, to list after its shard step. The last
    one, ``apply``, commits the cut's record (``threshold``: the boundary value, the lowest
    kept for a top fraction or ``min``, the highest for a bottom fraction) and the stage's
    new counts."""

    def shards() -> list[str]:
        return list(stage.shards)

    def prev(level: int) -> dict[str, Any] | None:
        return stage.state.get(f"select{level - 1}") if level else None

    def plan(level: int) -> list[str]:
        p = prev(level)
        return [] if p is not None and p["done"] else shards()

    def hist(level: int, shard: str) -> Any:
        return histogram(stage, cut, prev(level)["prefix"] if level else [], shard)

    def pick(level: int, h: Any) -> dict[str, Any]:
        p = prev(level)
        return p if p is not None and p["done"] else choose(h, p, cut.fraction, cut.rule)

    def last() -> dict[str, Any] | None:
        return None if cut.fraction is None else stage.state[f"select{LEVELS - 1}"]

    def applied(c: dict[str, Any]) -> dict[str, Any]:
        sel = last()
        return {**{k: v for k, v in asdict(cut).items() if v is not None},
                "ranked": sel["n"] if sel else c["in_cut"] + c["dropped"].get(cut.reason, 0),
                "in_cut": c["in_cut"], "kept_in_cut": c["kept_cut"], "threshold": c["edge"],
                "counts": {k: c[k] for k in ("rows_in", "kept", "dropped")}}

    steps: list[GlobalStep] = []
    if cut.fraction is not None:
        steps += [GlobalStep(f"select{level}", plan=partial(plan, level),
                             map=partial(hist, level), start=_zeros, fold=_add,
                             commit=partial(pick, level)) for level in range(LEVELS)]
    steps.append(GlobalStep("apply", plan=shards, map=lambda s: apply(stage, cut, last(), s),
                            start=no_counts, fold=partial(add_counts, sign=cut.sign),
                            commit=applied))
    return steps
