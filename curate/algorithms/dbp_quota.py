"""DBP's per-cluster quotas as the official code computes them, and curate's alternatives.

Pure NumPy: no Ray, no files. The reference is ``pruning_qp`` in DBP's ``prune.py``
(amro-kamal/effective_pruning): with shares ``p = softmax(C / tau)`` over all k clusters
and a target N, it solves

    minimise  1/2 x'x - (p N)'x   subject to  sum(x) = N,  lb_j <= x_j <= size_j

with OSQP, where ``lb_j = min(int(N / k * cls_bal_ratio), size_j - 1)`` (``cls_bal_ratio``
0.5 by default; 1 when it is 0), then rounds each ``x_j`` with ``np.rint``. The objective
is ``1/2 |x - p N|^2`` up to a constant, so the solution is the Euclidean projection of
``p N`` onto that box-and-sum set: ``x_j = clip(p_j N + mu, lb_j, size_j)`` with one
scalar mu -- every cluster's share moves by the *same amount* until it hits a bound.
:func:`solve_shift` finds mu exactly (breakpoint search), where OSQP stops at its tolerance.

Why curate also offers the alternatives (``quota_solver: waterfill``, ``quota_floor:
min_per_cluster``, ``quota_rounding: largest_remainder``): proportional water-filling
(``clip(lam p_j, ...)``) redistributes a capped cluster's excess in proportion to the
shares (the paper's prose), and largest-remainder rounding hits the target exactly, where
``rint`` may miss it by a few items. They are curate's earlier behaviour, kept by name.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np

from curate.algorithms.dbp import (
    _largest_remainder,
    _waterfill,
    breakpoint_bracket,
    log_shares,
)

logger = logging.getLogger(__name__)

Solver = Literal["qp", "waterfill"]
Rounding = Literal["rint", "largest_remainder"]


def reference_floor(target: int, k: int, floor_ratio: float = 0.5) -> int:
    """``min_samples`` of DBP's ``pruning_qp``: ``int(N / k * cls_bal_ratio)``, or 1 when
    the ratio is 0 (the code's ``else`` branch)."""
    if floor_ratio < 0 or floor_ratio > 1:
        raise ValueError(f"floor_ratio must be in [0, 1], got {floor_ratio}")
    return int((target / k) * floor_ratio) if floor_ratio > 0 else 1


def reference_complexity(complexity: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Complexities as DBP's ``get_distances`` hands them to the softmax: an empty cluster's
    ``d_intra`` is the mean of nothing (NaN), replaced by the mean of the others."""
    c = np.asarray(complexity, dtype=np.float64).copy()
    live = np.asarray(sizes) > 0
    if live.any() and not live.all():
        c[~live] = c[live].mean()
    return c


def solve_shift(a: np.ndarray, lb: np.ndarray, ub: np.ndarray, total: float) -> np.ndarray:
    """``x = clip(a + mu, lb, ub)`` with ``sum(x) = total``: the exact solution of
    ``min |x - a|^2`` s.t. ``sum(x) = total``, ``lb <= x <= ub`` (KKT: x_j - a_j equals the
    multiplier of the sum constraint wherever no bound is active).

    g(mu) = sum(clip(a + mu, lb, ub)) is continuous, non-decreasing and piecewise linear
    with breakpoints lb_j - a_j and ub_j - a_j: binary-search them for the segment where g
    reaches ``total``, then solve that segment's linear equation. Needs lb <= ub and
    sum(lb) <= total <= sum(ub).
    """
    a, lb, ub = (np.asarray(v, dtype=np.float64) for v in (a, lb, ub))
    if (lb > ub).any() or not lb.sum() - 1e-9 <= total <= ub.sum() + 1e-9:
        raise ValueError("solve_shift: infeasible bounds")
    free = lb < ub
    if not free.any():
        return ub.copy()

    def g(mu: float) -> float:
        return float(np.clip(a + mu, lb, ub).sum())

    # g(t[-1]) = sum(ub) >= total
    lo, hi = breakpoint_bracket(g, np.unique(np.concatenate([(lb - a)[free], (ub - a)[free]])),
                                total)
    # on (lo, hi) no bound changes: the clusters strictly inside their bounds move with mu
    mid_pt = hi - 1.0 if not np.isfinite(lo) else (lo + hi) / 2
    inside = free & (a + mid_pt > lb) & (a + mid_pt < ub)
    fixed = np.clip(a + mid_pt, lb, ub)[~inside].sum()
    mu = (total - fixed - a[inside].sum()) / inside.sum() if inside.any() else hi
    mu = min(max(mu, lo), hi)
    return np.clip(a + mu, lb, ub)


def _fit_floors(lb: np.ndarray, target: int, what: str) -> np.ndarray:
    """Floors that alone exceed the target: lowered to the largest uniform cap that fits
    (the reference would hand OSQP an infeasible problem)."""
    if lb.sum() <= target:
        return lb
    lo, hi = 0, int(lb.max())
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if np.minimum(mid, lb).sum() <= target:
            lo = mid
        else:
            hi = mid - 1
    logger.warning("DBP: the %s floors sum to %d, above the target %d; capping them at %d",
                   what, int(lb.sum()), target, lo)
    return np.minimum(lo, lb)


def plan_quotas(
    complexity: np.ndarray,
    sizes: np.ndarray,
    target: int,
    tau: float = 0.5,
    solver: Solver = "qp",
    floor: int | None = None,
    floor_ratio: float = 0.5,
    rounding: Rounding = "rint",
) -> np.ndarray:
    """Items to keep per cluster (int64 [k]).

    Defaults reproduce ``pruning_qp``: shares over all k clusters (empty ones with the mean
    complexity), lower bound ``min(reference_floor(N, k, floor_ratio), size_j - 1)``, the
    equal-shift solution, ``rint``. ``floor`` (curate's ``min_per_cluster``) replaces the
    reference floor by ``min(floor, size_j)``; ``solver='waterfill'`` uses proportional
    redistribution; ``rounding='largest_remainder'`` sums to exactly the target. Empty
    clusters always get 0 (the reference's lower bound there is -1, which can round to a
    negative quota). A target above the pool is clamped to it (with a warning).
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    c = np.asarray(complexity, dtype=np.float64)
    if c.shape != sizes.shape or sizes.ndim != 1:
        raise ValueError(f"complexity {c.shape} and sizes {sizes.shape} must be equal 1-D shapes")
    if (sizes < 0).any() or target < 0:
        raise ValueError("sizes and target must be >= 0")
    if not np.isfinite(c).all():
        raise ValueError("complexity must be finite")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    k, total, target = len(sizes), int(sizes.sum()), int(target)
    if target > total:
        logger.warning("DBP target %d exceeds the pool (%d items): keeping all", target, total)
        target = total
    out = np.zeros(k, dtype=np.int64)
    live = sizes > 0
    if target == 0 or not live.any():
        return out
    if floor is None:
        lb = np.minimum(reference_floor(target, k, floor_ratio), sizes - 1)
    else:
        lb = np.minimum(int(floor), sizes)
    lb = _fit_floors(np.where(live, np.maximum(lb, 0), 0), target,
                     "reference" if floor is None else "min_per_cluster")
    logp = log_shares(reference_complexity(c, sizes), tau)  # all k clusters, as the reference
    if solver == "qp":
        q = solve_shift(np.exp(logp) * target, lb, sizes, float(target))
    elif solver == "waterfill":  # proportional: the shares' normalisation does not matter
        q = np.zeros(k)
        q[live] = _waterfill(logp[live], lb[live], sizes[live], float(target))
    else:
        raise ValueError(f"solver must be 'qp' or 'waterfill', got {solver!r}")
    if rounding == "rint":
        out[:] = np.clip(np.rint(q), 0, sizes)
    elif rounding == "largest_remainder":
        out[live] = _largest_remainder(q[live], sizes[live], target)
    else:
        raise ValueError(f"rounding must be 'rint' or 'largest_remainder', got {rounding!r}")
    out[~live] = 0
    return out
