"""Exact top-k by radix selection (curate.algorithms.select) against a full-sort oracle:
np.lexsort on (uid key, -score), first k rows. Uid keys of the oracle are computed here."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from helpers import hex_uids, uid_key_oracle

from curate.algorithms import select as S


def oracle_mask(scores: np.ndarray, uids: list[str], k: int) -> np.ndarray:
    keys = np.array([uid_key_oracle(u) for u in uids], dtype=np.uint64)
    order = np.lexsort((keys, -scores.astype(np.float64)))
    mask = np.zeros(len(uids), dtype=bool)
    mask[order[:k]] = True
    return mask


def select(scores, uids, k, cuts=None, give_n=True):
    """The driver loop over shards cut at ``cuts``; returns (mask, selector)."""
    n = len(uids)
    cuts = [0, n] if cuts is None else [0, *cuts, n]
    shards = [S.sort_keys(scores[a:b], uids[a:b]) for a, b in zip(cuts, cuts[1:])]
    sel = S.TopKSelector(k, n if give_n else None)
    while not sel.done:
        assert sel.passes < S.LEVELS
        hist = sum(S.digit_histogram(hi, lo, sel.prefix) for hi, lo in shards)
        sel.feed(hist)
    mask = np.concatenate([S.keep_mask(hi, lo, sel.prefix) for hi, lo in shards])
    return mask, sel


def check(scores, uids, k, **kw):
    mask, sel = select(scores, uids, k, **kw)
    np.testing.assert_array_equal(mask, oracle_mask(scores, uids, k))
    assert sel.n_kept == mask.sum() == min(k, len(uids))
    return sel


# --------------------------------------------------------------------------- keys


def test_sort_keys_order_is_score_desc_then_uid_asc():
    scores = np.array([np.inf, 1.0, 1e-45, 0.0, -0.0, -1e-45, -1.0, -np.inf], np.float32)
    uids = ["%016x" % (7 - i) for i in range(8)]
    hi, lo = S.sort_keys(scores, uids)
    assert hi.dtype == np.uint32 and lo.dtype == np.uint64
    assert lo.tolist() == [7 - i for i in range(8)]
    h = hi.tolist()
    assert h[0] < h[1] < h[2] < h[3] == h[4] < h[5] < h[6] < h[7]  # +0.0 and -0.0 tie
    rng = np.random.default_rng(0)
    scores = rng.choice(np.float32([-0.5, 0, 0.25, 0.3]), size=500)
    uids = hex_uids(500) + []
    order = np.lexsort(S.sort_keys(scores, uids)[::-1])  # by hi, then lo
    keys = np.array([uid_key_oracle(u) for u in uids], np.uint64)
    np.testing.assert_array_equal(order, np.lexsort((keys, -scores)))


def test_sort_keys_rejects_nan_and_length_mismatch():
    with pytest.raises(ValueError, match="NaN"):
        S.sort_keys(np.float32([0.1, np.nan]), ["a", "b"])
    with pytest.raises(ValueError, match="2 scores for 3 uids"):
        S.sort_keys(np.float32([0.1, 0.2]), ["a", "b", "c"])


def key96(hi: np.ndarray, lo: np.ndarray) -> list[int]:
    return [(int(h) << 64) | int(x) for h, x in zip(hi, lo)]


def digits_ref(key: int) -> tuple[int, ...]:
    return tuple((key >> (80 - 16 * i)) & 0xFFFF for i in range(6))


def test_digit_histogram_and_keep_mask_against_brute_force():
    rng = np.random.default_rng(1)
    n = 3000
    # few distinct values per digit so that prefixes of every length select some rows
    hi = (rng.integers(0, 3, n) << 16 | rng.integers(0, 3, n)).astype(np.uint32)
    lo = np.zeros(n, dtype=np.uint64)
    for shift in (48, 32, 16, 0):
        lo |= rng.integers(65533, 65536, n).astype(np.uint64) << np.uint64(shift)
    digs = [digits_ref(k) for k in key96(hi, lo)]
    for prefix in [(), (1,), (2, 0), (0, 2, 65534), (1, 1, 65535, 65533),
                   (2, 2, 65535, 65535, 65534), (0, 0, 65533, 65533, 65533, 65533), (9,)]:
        if len(prefix) < 6:
            expected = np.zeros(65536, dtype=np.int64)
            for d in digs:
                if d[: len(prefix)] == prefix:
                    expected[d[len(prefix)]] += 1
            got = S.digit_histogram(hi, lo, prefix)
            assert got.dtype == np.int64 and got.shape == (65536,)
            np.testing.assert_array_equal(got, expected)
        keep = [d[: len(prefix)] <= prefix for d in digs]
        assert S.keep_mask(hi, lo, prefix).tolist() == keep
    assert not S.keep_mask(hi, lo, None).any()
    with pytest.raises(ValueError):
        S.digit_histogram(hi, lo, (0,) * 6)
    with pytest.raises(ValueError):
        S.digit_histogram(hi, lo, (65536,))


def test_next_prefix():
    hist = np.zeros(65536, dtype=np.int64)
    hist[[3, 10, 11]] = [5, 2, 7]
    assert S.next_prefix(hist, 1) == (3, 1, 5)
    assert S.next_prefix(hist, 5) == (3, 5, 5)
    assert S.next_prefix(hist, 6) == (10, 1, 2)
    assert S.next_prefix(hist, 8) == (11, 1, 7)
    assert S.next_prefix(hist, 14) == (11, 7, 7)
    with pytest.raises(ValueError, match="15 are needed"):
        S.next_prefix(hist, 15)
    with pytest.raises(ValueError):
        S.next_prefix(hist, 0)


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("n", [1, 2, 7, 300])
def test_tiny_pools_every_k(n):
    rng = np.random.default_rng(n)
    scores = rng.choice(np.float32([0.1, 0.2, 0.3]), size=n)
    uids = hex_uids(n, seed=n)
    for k in range(n + 1) if n < 10 else (0, 1, 2, n // 2, n - 1, n, n + 5):
        check(scores, uids, k)


def test_random_scores_and_shard_split_independence():
    n = 20_000
    rng = np.random.default_rng(2)
    scores = rng.standard_normal(n).astype(np.float32) * 0.1 + 0.3
    uids = hex_uids(n, seed=2)
    for k in (0, 1, 17, n // 3, n - 1, n):
        check(scores, uids, k)
        check(scores, uids, k, cuts=[1, 5000, 5000, 12_345, n - 1])
        check(scores, uids, k, give_n=False)


def test_many_ties_five_score_values_and_non_hex_uids():
    n = 20_000
    rng = np.random.default_rng(3)
    scores = rng.choice(np.float32([0.18, 0.25, 0.26, 0.31, 0.4]), size=n)
    uids = [f"img-{i:06d}" if i % 3 else f"{i:09d}" for i in range(n)]
    for k in (1, 100, 4321, n // 2, n - 1):
        sel = check(scores, uids, k, cuts=[999, 10_000])
        assert sel.passes <= 6


def test_all_equal_scores_reach_the_uid_digits():
    n = 5000
    scores = np.full(n, 0.3, dtype=np.float32)
    # keys 0..n-1 in shuffled order: they differ in the last 16-bit digit only
    perm = np.random.default_rng(4).permutation(n)
    uids = [f"{i:016x}" for i in perm]
    for k in (1, 2, 2500, n - 1):
        sel = check(scores, uids, k, cuts=[1000, 1001, 4000])
        assert sel.passes == 6 and len(sel.prefix) == 6
    check(scores, uids, n)


def test_100k_rows_across_shards():
    n = 100_000
    rng = np.random.default_rng(5)
    scores = np.round(rng.uniform(0.1, 0.4, n), 3).astype(np.float32)  # ~300 values: ties
    uids = hex_uids(n, seed=5)
    cuts = sorted(rng.choice(n, size=7, replace=False).tolist())
    for k in (1, 12_345, n - 1):
        whole = check(scores, uids, k)
        split = check(scores, uids, k, cuts=cuts)
        assert whole.prefix == split.prefix


def test_identical_full_keys_at_the_boundary_are_all_kept():
    # four rows share score and uid key (same first 16 hex digits): they cannot be ordered
    scores = np.float32([0.9, 0.5, 0.5, 0.5, 0.5, 0.1])
    uids = ["f" * 32] + ["0" * 16 + s for s in ("a", "b", "c", "d")] + ["1" * 32]
    for k in (2, 3, 4):
        mask, sel = select(scores, uids, k)
        assert mask.tolist() == [True] * 5 + [False]
        assert sel.done and len(sel.prefix) == 6 and sel.n_kept == 5
    mask, sel = select(scores, uids, 5)
    assert mask.tolist() == [True] * 5 + [False] and sel.n_kept == 5


def test_selector_edge_cases():
    sel = S.TopKSelector(0, 10)
    assert sel.done and sel.prefix is None and sel.n_kept == 0 and sel.passes == 0
    sel = S.TopKSelector(10, 10)
    assert sel.done and sel.prefix == () and sel.n_kept == 10 and sel.passes == 0
    sel = S.TopKSelector(0)
    assert sel.done and sel.prefix is None
    hist = np.zeros(65536, dtype=np.int64)
    hist[5] = 3
    sel = S.TopKSelector(7)  # n unknown: found from the first histogram
    assert sel.feed(hist) == () and sel.done and sel.n_kept == 3 and sel.passes == 1
    with pytest.raises(RuntimeError):
        sel.feed(hist)
    with pytest.raises(ValueError, match="counts 3 rows"):
        S.TopKSelector(2, 4).feed(hist)
    with pytest.raises(ValueError):
        S.TopKSelector(-1)
    sel = S.TopKSelector(2, 3)
    assert sel.feed(hist) == (5,) and not sel.done and sel.need == 2
    sel = pickle.loads(pickle.dumps(sel))
    assert sel.prefix == (5,) and sel.need == 2 and not sel.done
    assert not S.keep_mask(np.zeros(0, np.uint32), np.zeros(0, np.uint64), (1, 2)).size
