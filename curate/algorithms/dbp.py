"""Density-Based Pruning (DBP; Abbas et al. 2024, "Effective pruning of web-scale datasets
based on complexity of concept clusters").

Pure functions on NumPy arrays: no Ray, no files. DBP keeps more data from complex concept
clusters -- spread out (large ``d_intra``) and far from the other concepts (large
``d_inter``) -- and less from dense, crowded ones, where many near-identical examples teach
little:

    d_intra_j = mean cosine distance of cluster j's items to its centroid
    d_inter_j = mean cosine distance from centroid j to its 20 nearest other centroids
    C_j = d_inter_j * d_intra_j,   p_j = softmax(C_j / tau)   (tau = 0.5 in their code)
    N_j ~ p_j * N  for a target N, at most the cluster's size

and inside a cluster keeps the N_j items farthest from the centroid ('hard', the paper's
default), the nearest ('easy') or a seeded random N_j. These are the official code's
``compute_avg_dist_to_cluster_centroid.py`` (d_intra), ``compute_centroid_distances.py``
(d_inter: FAISS inner-product search for 21 neighbours, the first one, itself, dropped)
and ``prune.py`` (softmax, ``get_paths``). The reference quotas (``pruning_qp``: an equal
shift of the shares, a floor, ``rint``) are :mod:`curate.algorithms.dbp_quota`; this
module's :func:`quotas` is curate's proportional water-filling with an exact total
(``prune.quota_solver: waterfill``).

Everything global here is small (one row per cluster): the per-item pass is
:func:`accumulate` per shard (counts and distance sums add up across shards), then
:func:`cluster_stats_from_sums` and the quotas once, then :func:`select_in_cluster` per
cluster.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

logger = logging.getLogger(__name__)

Seed = int | Sequence[int]

#: Elements of the (rows x k) centroid-similarity block built at a time.
_BLOCK_ELEMS = 1 << 22


# --------------------------------------------------------------------------- statistics


def accumulate(labels: np.ndarray, dist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster (count int64 [k], sum of dist float64 [k]) of one shard.

    Sums over shards give the pool's counts and distance sums, hence ``d_intra``, without
    ever holding the pool.
    """
    labels = np.asarray(labels)
    dist = np.asarray(dist, dtype=np.float64)
    if labels.shape != dist.shape:
        raise ValueError(f"labels {labels.shape} and dist {dist.shape} differ in shape")
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"labels must lie in [0, {k})")
    count = np.bincount(labels, minlength=k).astype(np.int64)
    total = np.bincount(labels, weights=dist, minlength=k).astype(np.float64)
    return count, total


def inter_cluster_distance(centroids: np.ndarray, n_neighbors: int = 20) -> np.ndarray:
    """d_inter: mean cosine distance from each centroid to its ``min(n_neighbors, k-1)``
    nearest other centroids (float64 [k]; 0 when k == 1).

    Computed ``_BLOCK_ELEMS // k`` rows at a time: O(k * rows) memory, never k x k.
    """
    c = np.asarray(centroids, dtype=np.float64)
    k = c.shape[0]
    nn = min(n_neighbors, k - 1)
    out = np.zeros(k, dtype=np.float64)
    if nn <= 0:
        return out
    rows = max(1, _BLOCK_ELEMS // k)
    for s in range(0, k, rows):
        sim = c[s : s + rows] @ c.T
        r = np.arange(sim.shape[0])
        sim[r, s + r] = -np.inf  # not its own neighbour
        top = -np.partition(-sim, nn - 1, axis=1)[:, :nn]
        out[s : s + rows] = (1.0 - top).mean(axis=1)
    return out


def cluster_stats_from_sums(
    centroids: np.ndarray, count: np.ndarray, sum_dist: np.ndarray, n_neighbors: int = 20
) -> dict[str, np.ndarray]:
    """Per-cluster table (the columns of ``prune/clusters.parquet`` but the quota).

    Returns ``cluster_id`` int32, ``size`` int64, ``d_intra``, ``d_inter``, ``complexity``
    (float64), one entry per centroid. Empty clusters get ``d_intra = 0`` and so
    ``complexity = 0`` (and a quota of 0). All centroids count as neighbours for
    ``d_inter``, empty or not: they are where the concepts are.
    """
    count = np.asarray(count, dtype=np.int64)
    sum_dist = np.asarray(sum_dist, dtype=np.float64)
    k = np.asarray(centroids).shape[0]
    if count.shape != (k,) or sum_dist.shape != (k,):
        raise ValueError(f"count and sum_dist must have shape ({k},)")
    d_intra = np.divide(sum_dist, count, out=np.zeros(k), where=count > 0)
    d_inter = inter_cluster_distance(centroids, n_neighbors)
    return {
        "cluster_id": np.arange(k, dtype=np.int32),
        "size": count,
        "d_intra": d_intra,
        "d_inter": d_inter,
        "complexity": d_inter * d_intra,
    }


def cluster_stats(
    centroids: np.ndarray, labels: np.ndarray, dist_to_centroid: np.ndarray, n_neighbors: int = 20
) -> dict[str, np.ndarray]:
    """:func:`cluster_stats_from_sums` of in-memory labels and distances."""
    k = np.asarray(centroids).shape[0]
    count, total = accumulate(labels, dist_to_centroid, k)
    return cluster_stats_from_sums(centroids, count, total, n_neighbors)


# --------------------------------------------------------------------------- quotas


def log_shares(
    complexity: np.ndarray, tau: float = 0.5, mask: np.ndarray | None = None
) -> np.ndarray:
    """log softmax(complexity / tau) over the clusters in ``mask`` (-inf elsewhere).

    Kept in log space so that a small tau cannot underflow shares to 0 (the water-filling
    below then still orders the spill-over by complexity).
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    c = np.asarray(complexity, dtype=np.float64)
    m = np.ones(c.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    out = np.full(c.shape, -np.inf)
    if m.any():
        z = c[m] / tau
        z = z - z.max()
        out[m] = z - np.log(np.exp(z).sum())
    return out


def shares(complexity: np.ndarray, tau: float = 0.5, mask: np.ndarray | None = None) -> np.ndarray:
    """p = softmax(complexity / tau) over the clusters in ``mask`` (0 elsewhere)."""
    return np.exp(log_shares(complexity, tau, mask))


def _logsumexp(v: np.ndarray) -> float:
    m = v.max()
    return float(m + np.log(np.exp(v - m).sum()))


def _waterfill(logp: np.ndarray, lo: np.ndarray, hi: np.ndarray, total: float) -> np.ndarray:
    """Real q with q_j = clip(lam * p_j, lo_j, hi_j) and sum(q) = total, solved exactly.

    This is the fixed point of "give each cluster p_j * N, cap it at hi_j, hand the excess to
    the uncapped clusters in proportion to p, repeat" (and symmetrically for the floor lo_j).
    g(lam) = sum_j clip(lam * p_j, lo_j, hi_j) is continuous, non-decreasing and piecewise
    linear, with breakpoints lo_j / p_j and hi_j / p_j: binary-search the sorted breakpoints
    for the segment where g reaches ``total`` (each g evaluated directly, O(k log k) in all),
    then solve that segment's linear equation. Works on z = log(lam) and log p, and sums
    each set directly (no differences of prefix sums), so shares spanning hundreds of orders
    of magnitude (small tau) stay exact. Needs lo <= hi and sum(lo) <= total <= sum(hi).
    """
    q = hi.astype(np.float64).copy()
    free = lo < hi
    if not free.any():
        return q
    rest = total - float(hi[~free].sum())
    lp, f, s = logp[free], lo[free].astype(np.float64), hi[free].astype(np.float64)
    if rest <= f.sum():
        q[free] = f
        return q
    with np.errstate(divide="ignore"):
        za = np.log(f) - lp  # below: at the floor (-inf when the floor is 0)
    zb = np.log(s) - lp  # above: at the cap

    def g(z: float) -> float:
        with np.errstate(over="ignore"):
            return float(np.clip(np.exp(z + lp), f, s).sum())

    # g(t[-1]) = sum(s) >= rest
    z_lo, z_hi = breakpoint_bracket(g, np.unique(np.concatenate([za[np.isfinite(za)], zb])),
                                    rest)
    at_floor = za >= z_hi
    at_cap = zb <= z_lo
    middle = ~at_floor & ~at_cap
    need = rest - f[at_floor].sum() - s[at_cap].sum()
    if middle.any() and need > 0:
        z = min(max(np.log(need) - _logsumexp(lp[middle]), z_lo), z_hi)
    else:
        z = z_hi
    with np.errstate(over="ignore"):
        q[free] = np.clip(np.exp(z + lp), f, s)
    return q


def _largest_remainder(q: np.ndarray, cap: np.ndarray, total: int) -> np.ndarray:
    """Integers n_j in {floor(q_j), floor(q_j) + 1}, n_j <= cap_j, summing to ``total``:
    floors, then +1 for the largest fractional parts (ties: lowest cluster id)."""
    base = np.minimum(np.floor(q), cap).astype(np.int64)
    r = int(total - base.sum())
    if r > 0:
        frac = q - base
        room = np.flatnonzero(base < cap)
        pick = room[np.lexsort((room, -frac[room]))][:r]
        if len(pick) < r:
            raise AssertionError("largest remainder: not enough room (inconsistent quotas)")
        base[pick] += 1
    elif r < 0:
        raise AssertionError("largest remainder: floors exceed the total")
    return base


def quotas(
    complexity: np.ndarray,
    sizes: np.ndarray,
    target: int,
    tau: float = 0.5,
    min_per_cluster: int = 0,
) -> np.ndarray:
    """Items to keep per cluster (int64 [k]), summing to exactly ``target``.

    Shares ``p = softmax(C / tau)`` over non-empty clusters; quota_j = clip(lam * p_j,
    f_j, size_j) with lam chosen so the quotas sum to the target -- water-filling: a cluster
    whose share exceeds its size keeps everything and the excess goes to the others in
    proportion to their shares (the paper's prose; its code shifts them equally instead,
    :mod:`curate.algorithms.dbp_quota`). ``f_j = min(min_per_cluster,
    size_j)`` is a floor (a small cluster is kept whole up to that many items rather than
    pruned to nothing): a cluster gets max(floor, share), not floor + share. Rounded to
    integers by largest remainder. Empty clusters get 0. Deterministic.

    A target above the pool size is clamped to it (with a warning); floors that alone
    exceed the target are lowered to the largest uniform floor that fits (with a warning).
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    c = np.asarray(complexity, dtype=np.float64)
    if c.shape != sizes.shape or sizes.ndim != 1:
        raise ValueError(f"complexity {c.shape} and sizes {sizes.shape} must be equal 1-D shapes")
    if (sizes < 0).any():
        raise ValueError("sizes must be >= 0")
    if not np.isfinite(c).all():
        raise ValueError("complexity must be finite")
    if target < 0 or min_per_cluster < 0:
        raise ValueError("target and min_per_cluster must be >= 0")
    total = int(sizes.sum())
    target = int(target)
    if target > total:
        logger.warning("DBP target %d exceeds the pool (%d items): keeping all", target, total)
        target = total
    out = np.zeros(len(sizes), dtype=np.int64)
    if target == 0:
        return out
    floor_val = int(min_per_cluster)
    if np.minimum(floor_val, sizes).sum() > target:
        lo, hi = 0, floor_val  # largest m with sum(min(m, size)) <= target
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if np.minimum(mid, sizes).sum() <= target:
                lo = mid
            else:
                hi = mid - 1
        logger.warning(
            "DBP: min_per_cluster=%d over %d clusters exceeds the target %d; using %d",
            floor_val,
            int((sizes > 0).sum()),
            target,
            lo,
        )
        floor_val = lo
    floors = np.minimum(floor_val, sizes)
    live = sizes > 0
    logp = log_shares(c, tau, live)
    q = np.zeros(len(sizes), dtype=np.float64)
    q[live] = _waterfill(logp[live], floors[live], sizes[live], float(target))
    out[live] = _largest_remainder(q[live], sizes[live], target)
    return out


# --------------------------------------------------------------------------- selection


def select_in_cluster(
    dist_to_centroid: np.ndarray,
    quota: int,
    keep: Literal["hard", "easy", "random"] = "hard",
    seed: Seed = 0,
    tiebreak: np.ndarray | None = None,
) -> np.ndarray:
    """Bool mask of the ``quota`` items of one cluster to keep.

    'hard' (DBP's default): the farthest from the centroid, i.e. the least prototypical
    (the first ``quota`` of DBP's list sorted by decreasing distance, ties in input order);
    'easy': the last ``quota`` of that list (so ties go the other way); 'random': a seeded
    sample (``seed`` may be (seed, cluster_id)). A quota of 0 keeps nothing (DBP's
    ``paths[-0:]`` would keep the whole cluster under 'easy').
    ``tiebreak`` (e.g. the uids) fixes the order among equal distances and, for 'random',
    makes the choice depend on the set of items, not on their row order; without it the row
    order is used.
    """
    d = np.asarray(dist_to_centroid)
    n = len(d)
    mask = np.zeros(n, dtype=bool)
    quota = int(quota)
    if quota >= n:
        mask[:] = True
        return mask
    if quota <= 0:
        return mask
    base = np.arange(n) if tiebreak is None else np.argsort(np.asarray(tiebreak), kind="stable")
    if keep == "hard":
        order = base[np.argsort(-d[base], kind="stable")]
    elif keep == "easy":
        order = base[np.argsort(-d[base], kind="stable")][::-1]
    elif keep == "random":
        order = base[np.random.default_rng(seed).permutation(n)]
    else:
        raise ValueError(f"keep must be 'hard', 'easy' or 'random', got {keep!r}")
    mask[order[:quota]] = True
    return mask


def breakpoint_bracket(g: Callable[[float], float], t: np.ndarray, target: float
                       ) -> tuple[float, float]:
    """For g non-decreasing with ``g(t[-1]) >= target`` over sorted breakpoints ``t`` (where
    its slope changes): ``(t[i - 1] or -inf, t[i])`` for the first i with ``g(t[i]) >=
    target``, found by bisection. Between the two no bound changes, so the caller solves the
    linear piece exactly (the water-filling of DBP's quotas, with and without bounds)."""
    i, j = 0, len(t) - 1
    while i < j:
        mid = (i + j) // 2
        if g(t[mid]) >= target:
            j = mid
        else:
            i = mid + 1
    return (t[i - 1] if i > 0 else -np.inf), t[i]
