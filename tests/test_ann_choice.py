"""The index kind for a count and a budget (curate/algorithms/ann.py): autofaiss's rule,
with 10-bit PQ codes where the training sample can train them. The expected kinds come from
an enumeration written here (autofaiss's size formula, every code of 8 and 10 bits), and a
10-bit index is checked against brute-force search."""

from __future__ import annotations

import math

import numpy as np
import pytest

from curate.algorithms import ann

MB = 1024 ** 2


def _bytes(n: int, d: int, nlist: int, m: int, bits: int) -> int:
    """autofaiss's estimate (codes + ids, centroids, HNSW32 links) plus the direct map and
    the PQ codebooks (m sub-vectors of d/m dims, 2^bits centroids each, float32)."""
    code = math.ceil(m * bits / 8)
    hnsw = nlist * 32 * 2 * 4 if nlist >= 1000 else 0  # the graph over the lists' centres
    return (n * (code + 8) + 4 * nlist * d + hnsw + 8 * n
            + m * 2 ** bits * (d // m) * 4)


def _expected(n: int, d: int, budget: int) -> str:
    nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
    train = min(n, 100 * nlist)
    codes = [(m, b) for m in (256, 128, 64, 48, 32, 24, 16, 8, 4) if m < d and d % m == 0
             for b in (8, 9, 10) if b == 8 or train >= 64 * 2 ** b]
    codes.sort(key=lambda c: (-c[0] * c[1], c[1]))
    for m, b in codes:
        if _bytes(n, d, nlist, m, b) <= budget:
            return f"IVF{nlist}{'_HNSW32' if nlist >= 1000 else ''},PQ{m}x{b}"
    raise AssertionError("nothing fits")


@pytest.mark.parametrize("n, d, budget", [
    (100_000, 512, 12 * MB),   # between PQ64x8 and PQ128x8: PQ64x9
    (100_000, 512, 14 * MB),   # PQ64x10
    (100_000, 512, 11 * MB),   # PQ64x8
    (100_000, 512, 20 * MB),   # PQ128x10 needs more: PQ128x8
    (300_000, 768, 40 * MB),
    (50_000, 64, int(2.5 * MB)),  # 51,200 training vectors: 8 or 9 bits
    (20_000, 64, int(1.5 * MB)),  # 25,600: 8 bits only
    (60_000, 128, 6 * MB),
])
def test_the_finest_code_that_fits(n, d, budget):
    key = ann.choose_key(n, d, budget)
    assert key == _expected(n, d, budget)
    assert ann.estimate_bytes(key, n, d) <= budget


def test_ten_bit_codes_find_more_of_the_true_neighbours():
    rng = np.random.default_rng(3)
    n, d = 70_000, 32
    centres = rng.standard_normal((300, d)).astype(np.float32)
    x = centres[rng.integers(0, 300, n)] + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    x = ann.normalise(x)
    q_rows = rng.choice(n, 300, replace=False)
    sims = x[q_rows] @ x.T
    sims[np.arange(len(q_rows)), q_rows] = -np.inf  # the query itself is not its neighbour
    truth = np.argsort(-sims, axis=1)[:, :10]
    recall = {}
    for bits in (8, 10):
        index = ann.train(f"IVF64,PQ8x{bits}", x[rng.choice(n, 66_000, replace=False)])
        ann.add(index, x, 0)
        ann.finish(index)
        ann.set_nprobe(index, 64)  # every list: the codes alone bound the recall
        _, found = index.search(x[q_rows], 11)
        recall[bits] = np.mean([len(set(f[f != r][:10]) & set(t)) / 10
                                for f, t, r in zip(found, truth, q_rows)])
        assert index.pq.nbits == bits and index.code_size == math.ceil(8 * bits / 8)
    assert recall[10] > recall[8] + 0.02, recall
