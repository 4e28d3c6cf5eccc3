"""SemDeDup inside a cluster (curate.algorithms.semdedup): blockwise vs dense, both rules.

The reference rule against an independent upper-triangle implementation, and the dense pool
numbers, are in test_semdedup_rule.py."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import unit

from curate.algorithms.semdedup import (
    dedup_by_cluster,
    dedup_cluster,
    dedup_cluster_dense,
    priority_order,
)

EPS = 0.05


def planted_cluster(n_base=400, n_groups=80, d=64, seed=0):
    """Distinct items (random directions around a common centre, pairwise cos < 0.8) plus
    groups of 1-4 near-copies of some of them (cos > 0.999 to their original)."""
    rng = np.random.default_rng(seed)
    centre = unit(rng.standard_normal((1, d)))[0]
    base = unit(centre + 0.6 * rng.standard_normal((n_base, d)))
    rows, group = [base], list(range(n_base))
    for g in rng.choice(n_base, size=n_groups, replace=False):
        m = int(rng.integers(1, 5))
        rows.append(unit(base[g] + 0.003 * rng.standard_normal((m, d))))
        group += [int(g)] * m
    emb = np.concatenate(rows)
    group = np.array(group)
    perm = rng.permutation(len(emb))
    emb, group = emb[perm], group[perm]
    c = unit(emb.mean(axis=0, keepdims=True))[0]
    dist = 1.0 - emb @ c
    return emb, dist.astype(np.float32), group


def check_invariants(emb, dup, eps):
    """kept_only: no two kept items within eps, every removed item has a kept one within."""
    sim = emb.astype(np.float32) @ emb.astype(np.float32).T
    kept = np.flatnonzero(dup < 0)
    ks = sim[np.ix_(kept, kept)]
    np.fill_diagonal(ks, -1)
    assert (ks <= 1 - eps).all(), "two kept items are near-duplicates"
    dropped = np.flatnonzero(dup >= 0)
    assert (dup[dup[dropped]] == -1).all(), "a representative is itself dropped"
    assert (sim[dropped, dup[dropped]] > 1 - eps).all()


@pytest.mark.parametrize("rule", ["reference", "kept_only"])
@pytest.mark.parametrize("keep", ["hard", "easy"])
def test_planted_duplicates_found_and_right_member_kept(keep, rule):
    emb, dist, group = planted_cluster()
    dup = dedup_cluster(emb, dist, EPS, keep=keep, block=64, rule=rule)
    sizes = np.bincount(group)
    in_group = sizes[group] > 1
    should_drop = int((sizes[sizes > 1] - 1).sum())
    dropped = dup >= 0
    assert dropped.sum() >= 0.99 * should_drop
    assert not dropped[~in_group].any(), "a distinct item was dropped"
    for g in np.flatnonzero(sizes > 1):
        members = np.flatnonzero(group == g)
        kept = members[dup[members] < 0]
        assert len(kept) == 1
        best = (
            members[np.argmax(dist[members])]
            if keep == "hard"
            else members[np.argmin(dist[members])]
        )
        assert kept[0] == best
        others = members[members != best]
        if rule == "kept_only":
            assert (dup[others] == best).all()
        else:  # the most similar earlier member, maybe itself removed
            assert np.isin(dup[others], members).all()
    if rule == "kept_only":
        check_invariants(emb, dup, EPS)


def chain_data(n=300, d=4, seed=1):
    """Low-dimensional, heavily overlapping items: many chains where the rules differ."""
    rng = np.random.default_rng(seed)
    emb = unit(rng.standard_normal((n, d)))
    c = unit(emb.mean(axis=0, keepdims=True))[0]
    return emb, (1.0 - emb @ c).astype(np.float32)


@pytest.mark.parametrize("rule", ["reference", "kept_only"])
@pytest.mark.parametrize("keep", ["hard", "easy", "random"])
@pytest.mark.parametrize("block", [1, 7, 64, 4096])
def test_blockwise_equals_full_matrix(keep, block, rule):
    emb, dist = chain_data()
    for eps in (0.01, 0.05):
        ref = dedup_cluster_dense(emb, dist, eps, keep=keep, seed=3, rule=rule)
        got = dedup_cluster(emb, dist, eps, keep=keep, seed=3, block=block, rule=rule)
        np.testing.assert_array_equal(got, ref)
        if rule == "kept_only":
            check_invariants(emb, got, eps)
        assert 0 < (got >= 0).sum() < len(emb)


@pytest.mark.parametrize("rule", ["reference", "kept_only"])
def test_planted_blockwise_equals_dense_and_float16(rule):
    emb, dist, _ = planted_cluster(n_base=150, n_groups=40, seed=2)
    ref = dedup_cluster_dense(emb, dist, EPS, rule=rule)
    np.testing.assert_array_equal(dedup_cluster(emb, dist, EPS, block=7, rule=rule), ref)
    h = emb.astype(np.float16)
    np.testing.assert_array_equal(
        dedup_cluster(h, dist, EPS, block=16, rule=rule),
        dedup_cluster_dense(h, dist, EPS, rule=rule),
    )


def test_both_rules_on_a_chain():
    """a ~ b ~ c, a !~ c, order a, b, c: kept_only drops b (dup of a) and keeps c, whose only
    near-duplicate b was dropped; the reference rule (SemDeDup's code) drops c too."""
    t = np.deg2rad([0.0, 10.0, 20.0])
    emb = np.stack([np.cos(t), np.sin(t)], axis=1).astype(np.float32)
    dist = np.array([0.3, 0.2, 0.1], dtype=np.float32)  # hard: a first
    eps = 1 - np.cos(np.deg2rad(15.0))
    dup = dedup_cluster(emb, dist, eps, keep="hard", block=1, rule="kept_only")
    np.testing.assert_array_equal(dup, [-1, 0, -1])
    np.testing.assert_array_equal(dedup_cluster_dense(emb, dist, eps, rule="kept_only"), dup)
    np.testing.assert_array_equal(dedup_cluster(emb, dist, eps, block=2), [-1, 0, 1])
    np.testing.assert_array_equal(dedup_cluster_dense(emb, dist, eps), [-1, 0, 1])


def test_random_keep_is_seeded():
    emb, dist, group = planted_cluster(n_base=100, n_groups=30, seed=5)
    a = dedup_cluster(emb, dist, EPS, keep="random", seed=1)
    np.testing.assert_array_equal(a, dedup_cluster(emb, dist, EPS, keep="random", seed=1))
    assert (a >= 0).sum() == (dedup_cluster(emb, dist, EPS) >= 0).sum()  # same groups
    with pytest.raises(ValueError, match="rule"):
        dedup_cluster(emb, dist, EPS, rule="greedy")
    check_invariants(emb, dedup_cluster(emb, dist, EPS, keep="random", seed=1, rule="kept_only"),
                     EPS)


def test_edge_cases_and_validation():
    assert dedup_cluster(np.zeros((0, 4), np.float32), np.zeros(0), EPS).shape == (0,)
    one = unit(np.ones((1, 4)))
    np.testing.assert_array_equal(dedup_cluster(one, np.zeros(1), EPS), [-1])
    same = np.repeat(one, 5, axis=0)
    dup = dedup_cluster(same, np.arange(5.0), EPS, block=2)
    np.testing.assert_array_equal(dup, [4, 4, 4, 4, -1])  # hard: farthest (row 4) kept
    with pytest.raises(ValueError, match="eps"):
        dedup_cluster(same, np.zeros(5), -0.1)
    with pytest.raises(ValueError, match="shape"):
        dedup_cluster(same, np.zeros(4), EPS)
    with pytest.raises(ValueError, match="keep"):
        priority_order(np.zeros(3), keep="medium")


def test_dedup_by_cluster_maps_to_global_rows():
    e1, d1, _ = planted_cluster(n_base=60, n_groups=20, seed=6)
    e2, d2, _ = planted_cluster(n_base=50, n_groups=15, seed=7)
    emb = np.concatenate([e1, e2])
    dist = np.concatenate([d1, d2])
    labels = np.array([3] * len(e1) + [1] * len(e2))
    perm = np.random.default_rng(0).permutation(len(emb))
    emb, dist, labels = emb[perm], dist[perm], labels[perm]
    out = dedup_by_cluster(emb, labels, dist, EPS, block=32)
    for c in (1, 3):
        rows = np.flatnonzero(labels == c)
        local = dedup_cluster(emb[rows], dist[rows], EPS, block=32)
        expect = np.where(local >= 0, rows[np.maximum(local, 0)], -1)
        np.testing.assert_array_equal(out[rows], expect)
    assert (labels[out[out >= 0]] == labels[out >= 0]).all()
    assert dedup_by_cluster(emb[:0], labels[:0], dist[:0], EPS).shape == (0,)
