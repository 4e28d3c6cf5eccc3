"""MetaCLIP balancing: probabilities, deterministic draws, planning (per-language t:
test_metaclip2.py)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from helpers import hex_uids

from curate.algorithms.balancing import (
    count_entries,
    draw_kept,
    draw_u,
    expected_size,
    keep_prob,
    t_for_target,
    uid_key,
    uid_keys,
)


def _uids(n: int, seed: int = 0) -> pa.Array:
    return pa.array(hex_uids(n, seed))


def _lists(rows) -> pa.Array:
    return pa.array(rows, pa.list_(pa.int32()))


def _pool(n_rows: int, n_entries: int, seed: int, multi: bool):
    """Zipf-like entry frequencies; each row matches 1 entry, or 0-4 entries if multi."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_entries + 1) ** 1.1
    weights /= weights.sum()
    if not multi:
        ids = rng.choice(n_entries, size=n_rows, p=weights)
        return pa.ListArray.from_arrays(pa.array(np.arange(n_rows + 1, dtype=np.int32)),
                                        pa.array(ids.astype(np.int32)))
    k = rng.integers(0, 5, size=n_rows)
    rows = []
    for kk in k.tolist():
        rows.append(sorted(set(rng.choice(n_entries, size=kk, p=weights).tolist())))
    return _lists(rows)


def test_count_entries_sums_over_shards():
    ids = _lists([[0, 2], [], None, [2], [1, 2]])
    assert count_entries(ids, 4).tolist() == [1, 1, 3, 0]
    assert count_entries(ids, 4).dtype == np.int64
    parts = count_entries(ids.slice(0, 2), 4) + count_entries(ids.slice(2), 4)
    assert parts.tolist() == [1, 1, 3, 0]
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        count_entries(ids, 2)


def test_keep_prob_formula():
    counts = np.array([10, 40, 5, 0])
    ids = _lists([[0], [1], [0, 1], [2], [], None, [0, 1, 2], [3]])
    p = keep_prob(ids, counts, t=20)
    # p_0 = 1 (10 <= 20), p_1 = 0.5, p_2 = 1, count 0 -> 1
    assert p.dtype == np.float32
    np.testing.assert_allclose(p, [1, 0.5, 1, 1, 0, 0, 1, 1])
    p = keep_prob(ids, counts, t=4)  # p_0 = .4, p_1 = .1, p_2 = .8
    np.testing.assert_allclose(p, [0.4, 0.1, 1 - 0.6 * 0.9, 0.8, 0, 0, 1 - 0.6 * 0.9 * 0.2, 1],
                               rtol=1e-6)


@pytest.mark.parametrize("fn", [keep_prob, expected_size])
def test_t_must_be_positive(fn):
    ids, counts = _lists([[0]]), np.array([3])
    for t in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="t must be a positive"):
            fn(ids, counts, t)
    with pytest.raises(ValueError, match="t must be a positive"):
        draw_kept(_uids(1), ids, counts, 0)


def test_draws_match_the_documented_hash():
    uids = _uids(50).to_pylist() + ["not-a-hex-uid", "ABCDEF0123456789", "é" * 20, "0123"]
    keys = uid_keys(pa.array(uids))
    assert keys.tolist() == [uid_key(u) for u in uids]
    assert uid_key("00000000000000ff" + "0" * 16) == 255
    ids = _lists([[i % 7, 100 + i] for i in range(len(uids))])
    counts = np.full(200, 1000)
    t = 300  # p = 0.3 for every entry
    kept = draw_kept(pa.array(uids), ids, counts, t, seed=42)
    expected = [draw_u(42, u, i % 7) < 0.3 or draw_u(42, u, 100 + i) < 0.3
                for i, u in enumerate(uids)]
    assert kept.tolist() == expected
    u = [draw_u(42, x, 3) for x in uids]
    assert all(0 <= v < 1 for v in u) and len(set(u)) == len(u)


def test_kept_fraction_per_entry_is_t_over_count():
    n, t = 200_000, 500
    ids = _pool(n, 300, seed=0, multi=False)
    counts = count_entries(ids, 300)
    kept = draw_kept(_uids(n), ids, counts, t, seed=7)
    flat = ids.flatten().to_numpy()
    kept_per_entry = np.bincount(flat[kept], minlength=300)
    head = np.flatnonzero(counts > t)
    assert head.size > 10
    p = t / counts[head]
    sigma = np.sqrt(counts[head] * p * (1 - p))
    assert np.all(np.abs(kept_per_entry[head] - counts[head] * p) <= 4 * sigma + 1)
    tail = np.flatnonzero((counts > 0) & (counts <= t))
    assert tail.size > 10
    assert np.array_equal(kept_per_entry[tail], counts[tail])  # the tail is kept whole


def test_kept_set_independent_of_chunking_and_order():
    n = 60_000
    ids = _pool(n, 2000, seed=1, multi=True)
    uids = _uids(n, seed=1)
    counts = count_entries(ids, 2000)
    whole = draw_kept(uids, ids, counts, 40, seed=3)
    bounds = np.linspace(0, n, 8).astype(int)
    chunks = np.concatenate([
        draw_kept(uids.slice(a, b - a), ids.slice(a, b - a), counts, 40, seed=3)
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
    assert np.array_equal(whole, chunks)
    perm = np.random.default_rng(0).permutation(n)
    shuffled = draw_kept(uids.take(perm), ids.take(perm), counts, 40, seed=3)
    assert np.array_equal(whole[perm], shuffled)
    assert not whole[np.array([len(x) == 0 for x in ids.to_pylist()])].any()

    # sizes agree with the expected size; another seed: another set of the same size
    expected = expected_size(ids, counts, [40])[0]
    var = float(np.sum(keep_prob(ids, counts, 40).astype(np.float64)
                       * (1 - keep_prob(ids, counts, 40))))
    other = draw_kept(uids, ids, counts, 40, seed=4)
    assert abs(whole.sum() - expected) <= 4 * np.sqrt(var)
    assert abs(other.sum() - expected) <= 4 * np.sqrt(var)
    assert (whole != other).sum() > 100


def test_expected_size_and_t_for_target_agree():
    ids = _pool(30_000, 500, seed=2, multi=True)
    counts = count_entries(ids, 500)
    ts = np.array([1, 10, 50, 200, 1000, counts.max()])
    sizes = expected_size(ids, counts, ts)
    assert np.all(np.diff(sizes) >= 0)
    matched = sum(1 for x in ids.to_pylist() if x)
    assert sizes[-1] == pytest.approx(matched)
    # per shard sums equal the whole
    shards = [ids.slice(0, 10_000), ids.slice(10_000, 7_000), ids.slice(17_000)]
    assert sum(expected_size(s, counts, ts) for s in shards) == pytest.approx(sizes)
    target = 0.4 * matched
    t = t_for_target(shards, counts, target)
    assert expected_size(ids, counts, [t])[0] == pytest.approx(target, rel=1e-3)
    assert t_for_target(ids, counts, target) == pytest.approx(t)
    with pytest.raises(ValueError, match="target must be in"):
        t_for_target(ids, counts, matched + 1)


def test_balance_equals_drawing_every_entry():
    """balance() skips the draws of pairs holding a tail entry; the kept set and P(keep)
    must equal the documented rule applied to every (pair, entry) with draw_u."""
    from curate.algorithms.balancing import balance

    rng = np.random.default_rng(5)
    n = 400
    rows = [sorted(set(rng.integers(0, 12, size=rng.integers(0, 4)).tolist()))
            for _ in range(n)]
    counts = np.array([5, 10, 40, 80, 160, 320, 640, 3, 2, 1, 1000, 0])
    t = 20
    uids = _uids(n).to_pylist()
    prob, kept = balance(pa.array(uids), _lists(rows), counts, t, seed=9)
    p = {e: min(1.0, t / c) if c else 1.0 for e, c in enumerate(counts)}
    want = [any(draw_u(9, u, e) < p[e] for e in r) for u, r in zip(uids, rows)]
    assert kept.tolist() == want
    assert 0 < sum(want) < n and any(all(p[e] < 1 for e in r) and r for r in rows)
    want_p = [1 - float(np.prod([1 - p[e] for e in r])) if r else 0.0 for r in rows]
    np.testing.assert_allclose(prob, want_p, rtol=1e-6, atol=1e-7)
    assert prob.dtype == np.float32
