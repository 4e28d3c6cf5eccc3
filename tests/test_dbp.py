"""Density-based pruning (curate.algorithms.dbp)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from curate.algorithms import dbp


def softmax_ref(c, tau, live):
    p = np.zeros(len(c))
    e = np.exp((c[live] - c[live].max()) / tau)
    p[live] = e / e.sum()
    return p


def round_ref(q, sizes, target):
    """Largest remainder, written out: floors, then +1 by decreasing fraction (ties: id)."""
    n = [int(np.floor(v)) for v in q]
    left = target - sum(n)
    cands = sorted((j for j in range(len(q)) if n[j] < sizes[j]), key=lambda j: (-(q[j] - n[j]), j))
    for j in cands[:left]:
        n[j] += 1
    return np.array(n, dtype=np.int64)


def quotas_iterative(c, sizes, target, tau):
    """DBP's redistribution, step by step: share the remaining budget over the uncapped
    clusters by p, cap every cluster whose share exceeds its size, repeat."""
    live = sizes > 0
    p = softmax_ref(c, tau, live)
    q = np.zeros(len(c))
    active = live.copy()
    remaining = float(target)
    while True:
        idx = np.flatnonzero(active)
        share = remaining * p[idx] / p[idx].sum()
        over = share > sizes[idx]
        if not over.any():
            q[idx] = share
            break
        q[idx[over]] = sizes[idx[over]]
        remaining -= sizes[idx[over]].sum()
        active[idx[over]] = False
    return round_ref(q, sizes, target)


def quotas_bisect(c, sizes, target, tau, floor):
    """Floors too: bisection on lam for sum(clip(lam * p, min(floor, size), size)) = target."""
    live = sizes > 0
    p = softmax_ref(c, tau, live)
    f = np.minimum(floor, sizes).astype(float)
    lo, hi = 0.0, 1.0
    while np.clip(hi * p, f, sizes).sum() < target:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.clip(mid * p, f, sizes).sum() < target else (lo, mid)
    q = np.clip(hi * p, f, sizes)
    q[~live] = 0
    return round_ref(q, sizes, target)


def random_case(seed, k=60):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 300, size=k)
    sizes[rng.random(k) < 0.1] = 0
    sizes[rng.random(k) < 0.2] = rng.integers(1, 8)  # some tiny clusters
    c = rng.random(k) * 0.4
    return rng, c, sizes


@pytest.mark.parametrize("seed", range(12))
def test_quotas_match_iterative_reference(seed):
    rng, c, sizes = random_case(seed)
    for tau in (0.5, 0.1, 0.02):
        target = int(rng.integers(1, sizes.sum() + 1))
        q = dbp.quotas(c, sizes, target, tau=tau)
        np.testing.assert_array_equal(q, quotas_iterative(c, sizes, target, tau))
        assert q.sum() == target and q.dtype == np.int64
        assert (q <= sizes).all() and (q >= 0).all()
        assert (q[sizes == 0] == 0).all()


@pytest.mark.parametrize("seed", range(8))
def test_quotas_with_floor_match_bisection(seed):
    rng, c, sizes = random_case(100 + seed)
    for floor in (3, 20):
        target = int(rng.integers(np.minimum(floor, sizes).sum(), sizes.sum() + 1))
        q = dbp.quotas(c, sizes, target, tau=0.1, min_per_cluster=floor)
        np.testing.assert_array_equal(q, quotas_bisect(c, sizes, target, 0.1, floor))
        assert q.sum() == target
        assert (q >= np.minimum(floor, sizes)).all() and (q <= sizes).all()


def test_quotas_edge_cases(caplog):
    sizes = np.array([5, 0, 10])
    c = np.array([0.1, 0.5, 0.2])
    with caplog.at_level(logging.WARNING, logger="curate.algorithms.dbp"):
        q = dbp.quotas(c, sizes, 100)
    np.testing.assert_array_equal(q, sizes)
    assert "exceeds the pool" in caplog.text
    np.testing.assert_array_equal(dbp.quotas(c, sizes, 0), [0, 0, 0])
    np.testing.assert_array_equal(dbp.quotas(c, sizes, 15), [5, 0, 10])
    # equal shares: ties go to the lowest cluster id
    np.testing.assert_array_equal(dbp.quotas(np.zeros(3), np.array([9, 9, 9]), 4), [2, 1, 1])
    # floors that alone exceed the target are lowered to fit
    with caplog.at_level(logging.WARNING, logger="curate.algorithms.dbp"):
        q = dbp.quotas(np.zeros(4), np.array([10, 10, 10, 2]), 9, min_per_cluster=5)
    assert q.sum() == 9 and (q >= np.array([2, 2, 2, 2])).all()
    assert "min_per_cluster" in caplog.text
    # a tiny tau puts (almost) everything on the most complex cluster, then spills over
    np.testing.assert_array_equal(
        dbp.quotas(np.array([0.0, 1.0, 0.5]), np.array([10, 4, 10]), 8, tau=1e-4), [0, 4, 4]
    )
    with pytest.raises(ValueError):
        dbp.quotas(c, sizes, 3, tau=0)
    with pytest.raises(ValueError):
        dbp.quotas(c, sizes[:2], 3)


def test_accumulate_over_shards_and_stats():
    rng = np.random.default_rng(0)
    k, d = 12, 16
    cent = rng.standard_normal((k, d))
    cent /= np.linalg.norm(cent, axis=1, keepdims=True)
    labels = rng.integers(0, k - 1, size=1000)  # cluster k-1 stays empty
    dist = rng.random(1000)
    count, total = np.zeros(k, np.int64), np.zeros(k)
    for s in range(0, 1000, 300):
        cnt, tot = dbp.accumulate(labels[s : s + 300], dist[s : s + 300], k)
        count += cnt
        total += tot
    st = dbp.cluster_stats_from_sums(cent, count, total)
    ref = dbp.cluster_stats(cent, labels, dist)
    for key in ("size", "d_intra", "d_inter", "complexity"):
        np.testing.assert_allclose(st[key], ref[key], rtol=1e-12)
    for j in range(k - 1):
        assert st["size"][j] == (labels == j).sum()
        assert st["d_intra"][j] == pytest.approx(dist[labels == j].mean())
    assert st["size"][-1] == 0 and st["d_intra"][-1] == 0 and st["complexity"][-1] == 0
    # d_inter against a brute-force k x k computation, with n_neighbors > k - 1 too
    full = 1 - cent @ cent.T
    np.fill_diagonal(full, np.inf)
    for nn in (3, 20):
        expect = np.sort(full, axis=1)[:, : min(nn, k - 1)].mean(axis=1)
        np.testing.assert_allclose(dbp.inter_cluster_distance(cent, nn), expect, atol=1e-12)
    assert dbp.inter_cluster_distance(cent[:1]).tolist() == [0.0]
    with pytest.raises(ValueError):
        dbp.accumulate(np.array([0, k]), np.zeros(2), k)


def test_complex_clusters_keep_a_larger_share():
    """Five crowded, dense concepts (centroids close together, items tight) and five
    isolated, spread-out ones; the same number of items each."""
    rng = np.random.default_rng(1)
    d, per = 32, 200
    hub = rng.standard_normal(d)
    hub /= np.linalg.norm(hub)
    crowded = hub + 0.15 * rng.standard_normal((5, d))
    isolated = rng.standard_normal((5, d)) * 1.0
    centres = np.concatenate([crowded, isolated])
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = np.array([0.02] * 5 + [0.12] * 5)
    labels = np.repeat(np.arange(10), per)
    x = centres[labels] + spread[labels, None] * rng.standard_normal((len(labels), d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    dist = 1 - np.einsum("ij,ij->i", x, centres[labels])
    st = dbp.cluster_stats(centres, labels, dist, n_neighbors=4)
    assert st["complexity"][5:].min() > st["complexity"][:5].max()
    q = dbp.quotas(st["complexity"], st["size"], target=len(labels) // 2, tau=0.05)
    kept = q / st["size"]
    assert kept[5:].min() > kept[:5].max()
    assert q.sum() == len(labels) // 2


def test_select_in_cluster():
    dist = np.array([0.3, 0.1, 0.5, 0.3, 0.2])
    np.testing.assert_array_equal(
        dbp.select_in_cluster(dist, 2), [True, False, True, False, False]
    )  # ties (rows 0 and 3) by row order without a tiebreak...
    uids = np.array(["e", "d", "c", "b", "a"])
    np.testing.assert_array_equal(
        dbp.select_in_cluster(dist, 2, tiebreak=uids), [False, False, True, True, False]
    )  # ...and by uid with one: "b" (row 3) before "e" (row 0)
    np.testing.assert_array_equal(
        dbp.select_in_cluster(dist, 3, tiebreak=uids[::-1].copy()),
        [True, False, True, True, False],
    )
    np.testing.assert_array_equal(
        dbp.select_in_cluster(dist, 2, keep="easy"), [False, True, False, False, True]
    )
    assert dbp.select_in_cluster(dist, 9).all() and not dbp.select_in_cluster(dist, 0).any()
    r = dbp.select_in_cluster(dist, 3, keep="random", seed=(4, 2), tiebreak=uids)
    assert r.sum() == 3
    perm = np.array([4, 2, 0, 1, 3])
    np.testing.assert_array_equal(
        dbp.select_in_cluster(dist[perm], 3, keep="random", seed=(4, 2), tiebreak=uids[perm]),
        r[perm],
    )  # with a tiebreak, the choice depends on the items, not their row order
    with pytest.raises(ValueError, match="keep"):
        dbp.select_in_cluster(dist, 2, keep="soft")
