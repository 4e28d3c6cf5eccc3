"""SemDeDup's survival at full scale, from a uid-hash sample of the pool (the pilot's).

Why a correction: a sample at fraction s holds only about s of each pair's near-duplicates,
so SemDeDup removes fewer pairs in it than in the whole pool. Under SemDeDup's rule a pair
goes when an earlier pair of its cluster's order is within eps; on tight near-duplicate
groups each group keeps one pair, so a group of m pairs contributes, at fraction s,
``1 - (1 - s)^m`` kept pairs out of ``s·m`` on average. Survival at fraction s is then

    d(s) = Σ_m w_m (1 - (1 - s)^m) / (s·m),      d(1) = Σ_m w_m / m,

with w_m the share of the pool's pairs in groups of m. The sample's own survival d(f) is
biased up (singletons and the groups of m ≪ 1/f look alike in it).

What is measured: the same pure algorithm the prune stage calls (:func:`dedup_by_cluster`,
same clusters, distances, order, seed and rule) is re-run on nested uid-hash sub-samples
of the sample at fractions φ = 1, 1/2, 1/4, 1/8 (several hash seeds each), giving d at
s = f·φ. What is fitted: the non-negative mixture ``w`` over m = 1, 2, 4, ... 2^12 of the
curves above (NNLS, Σ w = 1), read at s = 1.

Why this fit and not a line or a parabola in log(s) (the two suggested first; both kept,
``how=``): on the exact expected curves of planted group-size mixtures (all m = 5;
geometric; Zipf; singletons + groups of 5; singletons + groups of 2-11), read from
f = 0.3, the group-curve fit is within 0.013 of the truth, the log-linear fit -0.002 to
+0.17 off and the log-quadratic -0.11 to -0.01; from f = 0.01 the group-curve fit is
within 0.03 except on the Zipf tail (+0.16), the log-linear +0.18 to +0.74 off (a line in
log s cannot bend like the group curves). A neighbour-count / tree-size fit (the pilot's
tree sizes as binomial thinnings of group sizes) was tried on the pipeline pilots too: it
put weight on groups of 64 and read 0.02-0.04 where the truth was 0.3-0.5, in 7 of 36
cases. The fit assumes tight groups (chains of near-duplicates behave like a mixture of
smaller groups) and cannot see groups much larger than the sample shows; the interval's
sd adds, in quadrature, a bootstrap over the sample's near-duplicate groups (the trees of
``duplicate_of``: the sample's own noise) and a jackknife over the fractions (how much the
read-out depends on the curve's shape).

Pure: NumPy and SciPy on arrays, no files, no Ray.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from curate.algorithms.kmeans_sample import uid_uniform
from curate.algorithms.semdedup import dedup_by_cluster, nearest_earlier_by_cluster

PHIS = (1.0, 0.5, 0.25, 0.125)
SIZES = 2.0 ** np.arange(13)


def group_curves(s: np.ndarray, sizes: np.ndarray = SIZES) -> np.ndarray:
    """(len(s), len(sizes)): survival at fraction s of a pool made only of groups of m."""
    s = np.asarray(s, np.float64)[:, None]
    m = np.asarray(sizes, np.float64)[None, :]
    return -np.expm1(m * np.log1p(-np.minimum(s, 1 - 1e-12))) / (s * m)


def fit_full_survival(s: np.ndarray, d: np.ndarray, weight: np.ndarray | None = None,
                      how: str = "groups") -> float:
    """Survival at fraction 1 from survivals ``d`` measured at fractions ``s``.

    how: 'groups' (the default: the NNLS mixture of group curves, module doc), 'loglinear'
    or 'logquadratic' (a polynomial in log s read at 0; kept to measure the choice)."""
    from scipy.optimize import nnls

    s, d = np.asarray(s, np.float64), np.asarray(d, np.float64)
    w = np.ones_like(s) if weight is None else np.sqrt(np.asarray(weight, np.float64))
    if how in ("loglinear", "logquadratic"):
        deg = 1 if how == "loglinear" else 2
        return float(np.clip(np.polyval(np.polyfit(np.log(s), d, deg, w=w), 0.0), 0, 1))
    a = group_curves(s) * w[:, None]
    big = 100.0 * max(1.0, float(w.max()))  # Σ w_m = 1, as a heavily weighted row
    coef, _ = nnls(np.vstack([a, np.full(len(SIZES), big)]), np.append(d * w, big))
    return float(np.clip((coef / SIZES).sum(), 0.0, 1.0))


def groups_of(dup: np.ndarray) -> np.ndarray:
    """Group id per row: the root of its ``duplicate_of`` tree (a kept row is its own
    root; a removed row points to an earlier row), by pointer jumping (no row loop)."""
    root = np.where(dup >= 0, dup, np.arange(len(dup)))
    while True:
        nxt = root[root]
        if np.array_equal(nxt, root):
            return root
        root = nxt


def subsample_counts(emb: np.ndarray, labels: np.ndarray, dist: np.ndarray, uids: Sequence,
                     eps_list: Sequence[float], keep: str, seed: int, rule: str,
                     replicates: int = 3, phis: Sequence[float] = PHIS, block: int = 2048
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-run the dedup rule on nested uid-hash sub-samples of these rows.

    Rows must come in the stage's order for ties (sorted by uid). Returns ``group`` (n,)
    (the trees of the full rows' dedup at the largest eps: the bootstrap's units), ``n``
    (len(phis), replicates, n_groups) rows per group in each sub-sample and ``kept``
    (len(eps_list), len(phis), replicates, n_groups) kept rows per group."""
    labels, dist = np.asarray(labels), np.asarray(dist)
    if rule == "reference":  # the full rows' one pass: their M_j and dedup at the largest eps
        best_all, near = nearest_earlier_by_cluster(emb, labels, dist, keep=keep, seed=seed,
                                                    block=block)
        full = np.where(best_all > np.float32(1.0 - max(eps_list)), near, -1)
    else:
        full = dedup_by_cluster(emb, labels, dist, max(eps_list), keep=keep, seed=seed,
                                block=block, rule=rule)
    _, group = np.unique(groups_of(full), return_inverse=True)
    ng = int(group.max()) + 1 if len(group) else 0
    n = np.zeros((len(phis), replicates, ng))
    kept = np.zeros((len(eps_list), len(phis), replicates, ng))
    us = [uid_uniform(uids, 7919 + r) for r in range(replicates)]
    for p, phi in enumerate(phis):
        for r in range(replicates):
            rows = np.flatnonzero(us[r] < phi) if phi < 1 else np.arange(len(labels))
            n[p, r] = np.bincount(group[rows], minlength=ng)
            if rule == "reference":  # one pass gives every eps: kept iff M_j <= 1 - eps
                best = best_all if phi >= 1 else nearest_earlier_by_cluster(
                    emb[rows], labels[rows], dist[rows], keep=keep, seed=seed,
                    block=block)[0]
            for e, eps in enumerate(eps_list):
                if rule == "reference":
                    gone = best > np.float32(1.0 - eps)
                else:  # kept_only depends on what was kept: a run per eps
                    gone = (full if phi >= 1 and eps == max(eps_list) else dedup_by_cluster(
                        emb[rows], labels[rows], dist[rows], eps, keep=keep, seed=seed,
                        block=block, rule=rule)) >= 0
                kept[e, p, r] = np.bincount(group[rows[~gone]], minlength=ng)
            if phi >= 1:  # the full rows: every replicate is the same
                n[p, :], kept[:, p, :] = n[p, r], kept[:, p, r][:, None]
                break
    return group, n, kept


def full_survival(n: np.ndarray, kept: np.ndarray, f: float, phis: Sequence[float] = PHIS,
                  boot: int = 200, seed: int = 0, how: str = "groups"
                  ) -> tuple[float, float, float]:
    """(measured survival at f, fitted survival at 1, bootstrap sd) for one eps, from
    :func:`subsample_counts`'s ``n`` and ``kept[e]``. The fit is capped at the measured
    survival (a larger pool only adds near-duplicates). The bootstrap resamples the groups
    (units of the pilot's sampling) with replacement and refits."""
    s = f * np.asarray(phis, np.float64)
    ng = n.shape[-1]
    d_f = float(kept[0].sum() / n[0].sum()) if n[0].sum() else 1.0
    if f >= 1 or ng == 0:
        return d_f, d_f, 0.0

    def fit(weights: np.ndarray) -> float:
        return _fit_capped(s, (n * weights).sum(axis=(1, 2)), (kept * weights).sum(axis=(1, 2)),
                           how)

    est = fit(np.ones(ng))
    rng = np.random.default_rng(seed)
    reps = [fit(np.bincount(rng.integers(0, ng, ng), minlength=ng).astype(np.float64))
            for _ in range(boot)]
    # the curve's shape: refits leaving one fraction out (a jackknife over the fractions);
    # the bootstrap alone covered 27 of 30 planted cases at f = 0.3, 19 of 30 at f = 0.1,
    # with this term 30 and 24 (leaving out only the sub-sample fractions: 29 and 22)
    tot_n, tot_k = n.sum(axis=(1, 2)), kept.sum(axis=(1, 2))
    ok = np.flatnonzero(tot_n > 0)
    jk = [_fit_capped(s[rest], tot_n[rest], tot_k[rest], how)
          for i in ok if len(rest := ok[ok != i]) >= 3]
    var_jk = (len(jk) - 1) / len(jk) * float(np.sum((np.array(jk) - np.mean(jk)) ** 2)) \
        if len(jk) > 1 else 0.0
    return d_f, est, float(np.sqrt(np.var(reps, ddof=1) + var_jk))


def _fit_capped(s: np.ndarray, tot_n: np.ndarray, tot_k: np.ndarray, how: str) -> float:
    """The fit from rows and kept rows per fraction (those with rows), capped at the
    survival measured at the first of them."""
    ok = tot_n > 0
    if not ok.any():
        return 1.0
    d = tot_k[ok] / tot_n[ok]
    return min(fit_full_survival(s[ok], d, tot_n[ok], how), float(d[0]))
