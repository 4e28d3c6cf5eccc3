"""DBP quotas (curate.algorithms.dbp_quota) against DBP's ``pruning_qp``, re-solved here.

``prune.py`` of amro-kamal/effective_pruning: ``p = softmax(d_inter * d_intra / T)`` over all
k clusters (NaN complexities of empty clusters -> the mean of the others), then OSQP on

    min 1/2 x'Px + q'x,  P = I,  q = -p N,  sum(x) = N,
    lb_j = min(min_samples, size_j - 1),  ub_j = size_j,
    min_samples = int(N / k * cls_bal_ratio) (cls_bal_ratio 0.5; 1 when it is 0),

and ``np.rint``. The tests solve that QP with SciPy's SLSQP (a general solver: nothing of
curate's breakpoint search), with empty clusters bounded to [0, 0] (curate's documented
departure: the reference's -1 lower bound there could round to a negative quota).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from curate.algorithms import dbp_quota

scipy_optimize = pytest.importorskip("scipy.optimize")


def softmax_all(c, sizes, tau):
    d = np.asarray(c, float).copy()
    d[sizes == 0] = np.nan
    d[np.isnan(d)] = np.nanmean(d)
    e = np.exp(d / tau - (d / tau).max())
    return e / e.sum()


def qp_scipy(a, lb, ub, n):
    """argmin 1/2 x'x - a'x  s.t.  sum(x) = n, lb <= x <= ub, by SLSQP on the problem scaled
    by 1/n (unscaled, its line search stalls at objectives of ~1e5)."""
    sc = max(float(n), 1.0)
    a_, lb_, ub_ = (np.asarray(v, float) / sc for v in (a, lb, ub))
    x0 = np.clip(np.full(len(a_), 1.0 / len(a_)), lb_, ub_)
    r = scipy_optimize.minimize(
        lambda x: 0.5 * x @ x - a_ @ x, x0, jac=lambda x: x - a_, method="SLSQP",
        bounds=list(zip(lb_, ub_, strict=True)),
        constraints=[{"type": "eq", "fun": lambda x: x.sum() - n / sc,
                      "jac": lambda x: np.ones_like(x)}],
        options={"ftol": 1e-15, "maxiter": 2000})
    assert r.success, r.message
    return r.x * sc


def pruning_qp(c, sizes, n, tau=0.5, cls_bal_ratio=0.5):
    """DBP's quotas, continuous (before rint)."""
    k = len(sizes)
    p = softmax_all(c, sizes, tau)
    min_samples = int((n / k) * cls_bal_ratio) if cls_bal_ratio > 0 else 1
    lb = np.array([max(min(min_samples, s - 1), 0) for s in sizes], float)
    return qp_scipy(p * n, lb, sizes.astype(float), float(n))


def random_case(seed, k=30):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 400, size=k)
    sizes[rng.random(k) < 0.2] = rng.integers(1, 6)  # tiny clusters: floors and caps bind
    sizes[rng.random(k) < 0.05] = 0
    c = 0.05 + 0.3 * rng.random(k)
    return rng, c, sizes


@pytest.mark.parametrize("seed", range(10))
def test_qp_quotas_equal_a_direct_solve(seed):
    rng, c, sizes = random_case(seed)
    for tau, frac, ratio in ((0.5, 0.3, 0.5), (0.05, 0.5, 0.5), (0.02, 0.2, 0.0),
                             (0.1, 0.8, 1.0)):
        n = int(frac * sizes.sum())
        x = pruning_qp(c, sizes, n, tau, ratio)
        q = dbp_quota.plan_quotas(c, sizes, n, tau=tau, floor_ratio=ratio)
        near_half = np.abs(x - np.floor(x) - 0.5) < 1e-4  # rint undecidable at SLSQP's accuracy
        np.testing.assert_array_equal(q[~near_half], np.rint(x)[~near_half])
        assert abs(int(q.sum()) - n) <= len(sizes) // 2 + 1  # rint: the sum may miss N
        assert (q >= 0).all() and (q <= sizes).all() and (q[sizes == 0] == 0).all()


@pytest.mark.parametrize("seed", range(6))
def test_solve_shift_is_the_qp_optimum(seed):
    """The continuous solution: equal to SLSQP's, and the KKT conditions hold (one shift mu
    for every cluster strictly inside its bounds, below it at lb, above it at ub)."""
    rng = np.random.default_rng(50 + seed)
    k = 25
    a = rng.random(k) * 100
    lb = rng.integers(0, 20, size=k).astype(float)
    ub = lb + rng.integers(0, 80, size=k)
    n = float(rng.uniform(lb.sum(), ub.sum()))
    x = dbp_quota.solve_shift(a, lb, ub, n)
    np.testing.assert_allclose(x, qp_scipy(a, lb, ub, n), atol=1e-4)
    assert abs(x.sum() - n) < 1e-6
    g = x - a
    inside = (x > lb + 1e-9) & (x < ub - 1e-9)
    assert inside.any()
    mu = g[inside].mean()
    np.testing.assert_allclose(g[inside], mu, atol=1e-9)
    box = lb < ub  # a fixed variable (lb == ub) has no sign condition
    assert (g[np.isclose(x, lb) & box & ~inside] >= mu - 1e-9).all()
    assert (g[np.isclose(x, ub) & box & ~inside] <= mu + 1e-9).all()


@pytest.mark.parametrize("seed", range(20))
def test_solve_shift_equals_brute_force_over_active_sets(seed):
    """Small k: every assignment of each variable to {lower bound, upper bound, free}; free
    ones are a_j + mu with mu fixed by the sum; the feasible candidate of least objective is
    the QP's optimum (the problem is convex and one of these is its KKT point)."""
    import itertools

    rng = np.random.default_rng(200 + seed)
    k = 6
    a = rng.random(k) * 30
    lb = rng.integers(0, 8, size=k).astype(float)
    ub = lb + rng.integers(0, 20, size=k)
    n = float(rng.uniform(lb.sum(), ub.sum()))
    best, best_f = None, np.inf
    for state in itertools.product((0, 1, 2), repeat=k):
        st = np.array(state)
        x = np.where(st == 0, lb, ub).astype(float)
        free = st == 2
        if free.any():
            mu = (n - x[~free].sum() - a[free].sum()) / free.sum()
            x[free] = a[free] + mu
        if abs(x.sum() - n) > 1e-9 or (x < lb - 1e-9).any() or (x > ub + 1e-9).any():
            continue
        f = 0.5 * x @ x - a @ x
        if f < best_f - 1e-12:
            best, best_f = x, f
    np.testing.assert_allclose(dbp_quota.solve_shift(a, lb, ub, n), best, atol=1e-8)


def test_reference_floor_and_its_size_minus_one_cap():
    """A tiny tau sends everything to cluster 0; the others sit at the floor
    min(int(0.5 * N / k), size - 1): int(0.5 * 100 / 4) = 12, or size - 1 when smaller."""
    c = np.array([1.0, 0.0, 0.0, 0.0])
    sizes = np.array([200, 50, 8, 1])
    q = dbp_quota.plan_quotas(c, sizes, 100, tau=1e-3)
    np.testing.assert_array_equal(q, [100 - 12 - 7 - 0, 12, 7, 0])
    assert dbp_quota.reference_floor(100, 4, 0.5) == 12
    assert dbp_quota.reference_floor(100, 4, 0.0) == 1  # the code's else branch
    # an explicit min_per_cluster replaces it, capped at the size (not size - 1)
    q = dbp_quota.plan_quotas(c, sizes, 100, tau=1e-3, floor=3)
    np.testing.assert_array_equal(q, [100 - 3 - 3 - 1, 3, 3, 1])


def test_equal_shift_vs_proportional():
    """Cluster 0 is capped; its excess goes to the others by an equal shift (qp) or in
    proportion to their shares (waterfill)."""
    c = np.log(np.array([6.0, 3.0, 1.0]))  # tau 1: shares 0.6, 0.3, 0.1
    sizes = np.array([20, 100, 100])
    qp = dbp_quota.plan_quotas(c, sizes, 100, tau=1.0, floor_ratio=0.0)
    wf = dbp_quota.plan_quotas(c, sizes, 100, tau=1.0, floor_ratio=0.0, solver="waterfill",
                               rounding="largest_remainder")
    np.testing.assert_array_equal(qp, [20, 50, 30])  # 30 + 20, 10 + 20
    np.testing.assert_array_equal(wf, [20, 60, 20])  # 80 split 3:1


def test_waterfill_option_matches_proportional_reference():
    """waterfill + min_per_cluster + largest_remainder: curate's earlier quotas, checked
    against test_dbp's bisection reference."""
    from test_dbp import quotas_bisect

    rng, c, sizes = random_case(7, k=40)
    for floor in (0, 4):
        target = int(0.4 * sizes.sum())
        q = dbp_quota.plan_quotas(c, sizes, target, tau=0.1, solver="waterfill", floor=floor,
                                  rounding="largest_remainder")
        np.testing.assert_array_equal(q, quotas_bisect(c, sizes, target, 0.1, floor))
        assert q.sum() == target


def test_edges(caplog):
    sizes = np.array([5, 0, 10])
    c = np.array([0.1, 0.5, 0.2])
    np.testing.assert_array_equal(dbp_quota.plan_quotas(c, sizes, 0), [0, 0, 0])
    with caplog.at_level(logging.WARNING, logger="curate.algorithms.dbp_quota"):
        np.testing.assert_array_equal(dbp_quota.plan_quotas(c, sizes, 100), [5, 0, 10])
        q = dbp_quota.plan_quotas(np.zeros(4), np.array([10, 10, 10, 2]), 9, floor=5,
                                  rounding="largest_remainder")
    assert "exceeds the pool" in caplog.text
    assert q.sum() == 9 and "floors" in caplog.text
    for bad in ({"solver": "lp"}, {"rounding": "floor"}, {"tau": 0}):
        with pytest.raises(ValueError):
            dbp_quota.plan_quotas(c, sizes, 3, **bad)
