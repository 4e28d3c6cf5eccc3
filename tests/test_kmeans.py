"""Spherical k-means, streaming assignment and the seeded sample (curate.algorithms.kmeans)."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pyarrow as pa
import pytest
from helpers import hex_uids
from sklearn.metrics import adjusted_rand_score

from curate.algorithms import kmeans as km


def planted(k: int, d: int, per: int, sigma: float, seed: int = 0):
    """k random unit centres; per points each at Gaussian noise sigma, normalised."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((k, d))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    y = np.repeat(np.arange(k), per)
    rng.shuffle(y)
    x = c[y] + rng.standard_normal((len(y), d)) * sigma
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_planted_clusters(seed):
    x, y = planted(k=40, d=32, per=60, sigma=0.01, seed=seed)
    model = km.train_kmeans(x, 40, niter=20, seed=seed)
    labels, sims = model.assign(x)
    assert adjusted_rand_score(y, labels) >= 0.99
    assert model.centroids.shape == (40, 32) and model.centroids.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(model.centroids, axis=1), 1.0, atol=1e-5)
    assert model.device == "cpu" and model.init == "kmeans++"
    assert 1 <= model.iterations <= 20 and model.n_train == len(x)
    assert 0 < model.objective <= len(x) + 1e-3  # sum of similarities
    assert labels.dtype == np.int32 and sims.dtype == np.float32
    assert (sims > 0.99).all()


def test_deterministic_and_restarts():
    x, _ = planted(k=10, d=16, per=30, sigma=0.2, seed=3)
    a = km.train_kmeans(x, 10, niter=10, seed=5)
    b = km.train_kmeans(x, 10, niter=10, seed=5)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    r = km.train_kmeans(x, 10, niter=10, seed=5, n_restarts=3)
    assert len(r.restart_objectives) == 3
    assert r.objective == max(r.restart_objectives)
    assert r.objective >= a.objective - 1e-3  # restart 0 is the single run
    rand = km.train_kmeans(x, 10, niter=10, seed=5, init="random")
    assert rand.init == "random"
    with pytest.raises(ValueError, match="init"):
        km.train_kmeans(x, 10, init="bogus")


def test_sample_smaller_than_k_is_a_clear_error():
    x, _ = planted(k=5, d=8, per=2, sigma=0.1)
    with pytest.raises(ValueError, match="at least k = 20"):
        km.train_kmeans(x, 20)


def test_caps_training_points():
    x, _ = planted(k=4, d=8, per=50, sigma=0.1)
    model = km.train_kmeans(x, 4, niter=5, max_points_per_centroid=10)
    assert model.n_train == 40


def test_assignment_is_chunk_invariant():
    x, _ = planted(k=25, d=48, per=40, sigma=0.3, seed=4)
    model = km.train_kmeans(x, 25, niter=10, seed=0)
    ref_l, ref_s = model.assign(x)
    for batch in (1, 7, 64, 333):
        lab, sim = model.assign(x, batch=batch)
        np.testing.assert_array_equal(lab, ref_l)
        np.testing.assert_array_equal(sim, ref_s)
    parts = [model.assign(x[s : s + n]) for s, n in ((0, 5), (5, 19), (24, 977), (1001, 999))]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), ref_l)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), ref_s)
    # the winner is the true argmax (float64) and sims are the float64 dot, rounded
    exact = x.astype(np.float64) @ model.centroids.astype(np.float64).T
    np.testing.assert_array_equal(ref_l, exact.argmax(axis=1))
    np.testing.assert_array_equal(ref_s, exact.max(axis=1).astype(np.float32))


def test_assignment_near_ties_resolved_exactly():
    """Points equidistant (to float32 precision) from two centroids get the lower id."""
    c = np.eye(4, dtype=np.float32)
    model = km.KMeansModel(c, "cpu", 0.0, 0)
    x = np.array([[1, 1, 0, 0], [0, 0, 1, 1], [0, 1, 0, 1 + 1e-6]], dtype=np.float32)
    lab, _ = model.assign(x)
    np.testing.assert_array_equal(lab, [0, 2, 3])


def test_assign_float16_and_shape_check():
    x, _ = planted(k=6, d=16, per=20, sigma=0.2)
    model = km.train_kmeans(x, 6, niter=5)
    h = x.astype(np.float16)
    lab16, sim16 = model.assign(h, batch=17)
    lab32, sim32 = model.assign(h.astype(np.float32))
    np.testing.assert_array_equal(lab16, lab32)
    np.testing.assert_array_equal(sim16, sim32)
    with pytest.raises(ValueError, match="shape"):
        model.assign(x[:, :8])


def test_model_pickles():
    x, _ = planted(k=6, d=16, per=20, sigma=0.2)
    model = km.train_kmeans(x, 6, niter=5)
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.assign(x)[0], model.assign(x)[0])
    assert again.device == model.device


@pytest.mark.skipif(km.gpu_count() > 0, reason="checks the GPU-less fallback")
def test_gpu_fallback_without_gpu():
    x, _ = planted(k=4, d=8, per=20, sigma=0.1)
    assert km.resolve_device(None) == "cpu"
    assert km.resolve_device(False) == "cpu"
    assert km.train_kmeans(x, 4, niter=3, use_gpu=None).device == "cpu"
    with pytest.raises(RuntimeError, match="no GPU"):
        km.train_kmeans(x, 4, niter=3, use_gpu=True)


@pytest.mark.skipif(km.gpu_count() == 0, reason="needs a GPU")
def test_gpu_matches_cpu_assignment():
    x, y = planted(k=30, d=32, per=50, sigma=0.01)
    model = km.train_kmeans(x, 30, niter=10, use_gpu=True)
    assert model.device == "gpu"
    assert adjusted_rand_score(y, model.assign(x)[0]) >= 0.99
    cpu = km.KMeansModel(model.centroids, "cpu", 0.0, 0)
    lg, sg = model.assign(x, batch=100)
    lc, sc = cpu.assign(x)
    np.testing.assert_array_equal(lg, lc)
    np.testing.assert_array_equal(sg, sc)


# --------------------------------------------------------------------------- sampling


def test_splitmix64_reference_value():
    # first output of the reference splitmix64 generator with state 0
    assert int(km.splitmix64(np.zeros(1, dtype=np.uint64))[0]) == 0xE220A8397B1DCDAF


def test_uid_parsing():
    uids = ["0123456789abcdefffff", "FEDCBA9876543210", b"00000000000000ff"]
    v = km.uid_to_u64(np.array(uids, dtype=object))
    assert v.tolist() == [0x0123456789ABCDEF, 0xFEDCBA9876543210, 0xFF]
    assert km.uid_to_u64(np.array([5, 7], dtype=np.uint64)).tolist() == [5, 7]
    assert km.uid_to_u64([]).shape == (0,)
    # uids that do not start with 16 hex digits: the first 8 bytes of their sha256
    def sha(u: str) -> int:
        return int.from_bytes(hashlib.sha256(u.encode()).digest()[:8], "big")

    v = km.uid_to_u64(["0123456789abcdef", "0123456789abcdeg", "abc", ""])
    assert v.tolist() == [0x0123456789ABCDEF, sha("0123456789abcdeg"), sha("abc"), sha("")]
    with pytest.raises(ValueError, match="null"):
        km.uid_to_u64(["0123456789abcdef", None])


def test_sample_mask_deterministic_uniform_and_split_independent():
    uids = np.array(hex_uids(20000), dtype=object)
    frac = km.sample_fraction(len(uids), k=10, max_points_per_centroid=256)
    assert frac == pytest.approx(2560 / 20000)
    m = km.sample_mask(uids, frac, seed=7)
    np.testing.assert_array_equal(m, km.sample_mask(uids, frac, seed=7))
    expected = frac * len(uids)
    assert abs(m.sum() - expected) < 5 * np.sqrt(expected)
    # the same rows are chosen however the pool is cut into shards, in any row order
    cuts = [0, 3, 4000, 4001, 13000, 20000]
    parts = [km.sample_mask(uids[a:b], frac, seed=7) for a, b in zip(cuts, cuts[1:])]
    np.testing.assert_array_equal(np.concatenate(parts), m)
    perm = np.random.default_rng(0).permutation(len(uids))
    np.testing.assert_array_equal(km.sample_mask(uids[perm], frac, seed=7), m[perm])
    # another seed, another sample; case of the hex does not matter
    assert (km.sample_mask(uids, frac, seed=8) != m).sum() > 0.1 * m.sum()
    upper = np.array([u.upper() for u in uids], dtype=object)
    np.testing.assert_array_equal(km.sample_mask(upper, frac, seed=7), m)
    assert km.sample_mask(uids, 1.0, seed=0).all()
    assert not km.sample_mask(uids, 0.0, seed=0).any()
    with pytest.raises(ValueError):
        km.sample_mask(uids, 1.5, seed=0)
    assert km.sample_fraction(100, k=10) == 1.0


def test_sample_mask_with_non_hex_uids():
    # numeric, prefixed, path-like and unicode uids are legal: hashed with sha256
    n = 20000
    uids = np.array(
        [[f"{i:09d}", f"img-{i:06d}", f"a/b/{i}.jpg", f"é-{i}"][i % 4] for i in range(n)],
        dtype=object,
    )
    m = km.sample_mask(uids, 0.2, seed=3)
    assert abs(m.sum() - 0.2 * n) < 5 * np.sqrt(0.2 * 0.8 * n)
    cuts = [0, 1, 777, 15000, n]
    parts = [km.sample_mask(uids[a:b], 0.2, seed=3) for a, b in zip(cuts, cuts[1:])]
    np.testing.assert_array_equal(np.concatenate(parts), m)
    np.testing.assert_array_equal(km.sample_mask(pa.array(list(uids)), 0.2, seed=3), m)
    np.testing.assert_array_equal(km.sample_mask(list(uids), 0.2, seed=3), m)
    # the draw is splitmix64(key ^ splitmix64(seed)) with key = sha256 prefix (pure Python)
    def smix(x: int) -> int:
        z = (x + 0x9E3779B97F4A7C15) % 2**64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
        return z ^ (z >> 31)

    for i in range(40):
        key = int.from_bytes(hashlib.sha256(uids[i].encode()).digest()[:8], "big")
        assert m[i] == ((smix(key ^ smix(3)) >> 11) * 2.0**-53 < 0.2)
    for every in range(4):  # each uid shape is sampled at about the fraction
        assert abs(m[every::4].mean() - 0.2) < 0.03
