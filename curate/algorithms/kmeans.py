"""Spherical k-means for concept clusters (DESIGN.md section 4, "prune").

Pure functions on NumPy arrays: no Ray, no files. The prune stage trains once on a sample
of the pool (at most ``max_points_per_centroid * k`` points, FAISS's own default cap of
256 per centroid) and then assigns every embedding shard by shard with
:meth:`KMeansModel.assign`, so the whole pool is never in memory.

Why these choices:

- FAISS ``Clustering`` with ``spherical=True`` over an inner-product index is the cosine
  k-means that the SemDeDup and DBP code (Abbas et al. 2023, 2024) run on CLIP embeddings,
  and one code path for CPU and GPU. On the 2-core CPU here (faiss-gpu wheel, which loads
  FAISS's generic non-AVX2 build) its Lloyd iterations run at about scikit-learn's speed
  (1.3-4.4 vs 1.8-4.9 s/iteration at 256k x 512, k = 1,000, interleaved runs on a machine
  shared with other jobs); the CPU gain over ``sklearn.cluster.KMeans`` comes from the
  seeding (next point). A GPU is where FAISS pays.
- Seeding: FAISS's default seeding (k random points, what the SemDeDup/DBP code uses)
  merged and split planted, well-separated clusters in a probe (adjusted Rand 0.89), and
  so does plain single-trial k-means++ (FAISS's ``ClusteringInitialization``, ARI ~0.93).
  Greedy k-means++ (several trials per step, as in ``sklearn.cluster.kmeans_plusplus``)
  recovers them, so it is the default. It costs O(k * trials * n * d) in k sequential
  steps, so it runs on a seeded subset of the sample (``init_points_per_centroid * k``
  points, default 16 per centroid); Lloyd iterations then use the whole sample.
- Assignment is chunk-invariant: the nearest centroid and its similarity do not depend on
  how the pool is cut into shards or batches. A float32 GEMM's rounding depends on the
  batch shape (FAISS's search differs by ~1 ulp between a batch and its sub-batch), so the
  GEMM only proposes candidates (every centroid within ``_TIE_TOL`` of the best), and the
  winner and its similarity are recomputed per row in float64 (ties: lowest centroid id).
  On CPU the candidates come from a NumPy float32 GEMM over blocks of rows (faster here
  than ``IndexFlatIP.search``: 0.46 s vs 0.78 s for 65,536 x 512 against 1,000
  centroids); on a GPU from a ``GpuIndexFlatIP`` top-8 search.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from curate.algorithms.uids import splitmix64, uid_keys

__all__ = [  # splitmix64 is re-exported: tests and benches import it from here
    "KMeansModel",
    "gpu_count",
    "kmeans_plusplus",
    "resolve_device",
    "sample_fraction",
    "sample_mask",
    "splitmix64",
    "train_kmeans",
    "uid_hash",
    "uid_to_u64",
    "uid_uniform",
]

logger = logging.getLogger(__name__)

Device = Literal["cpu", "gpu"]
InitMethod = Literal["kmeans++", "random"]

#: Candidates within this much inner product of the best are re-ranked in float64. A float32
#: dot product of unit vectors with d <= 4096 errs by far less (worst case ~ d * 6e-8).
_TIE_TOL = 1e-3
#: Elements of the (rows x k) similarity block built at a time while assigning (16 MB).
_BLOCK_ELEMS = 1 << 22
#: Candidates fetched per row from a GPU index before re-ranking on the host.
_GPU_TOPM = 8


# --------------------------------------------------------------------------- device


def gpu_count() -> int:
    """GPUs FAISS can use (0 with faiss-cpu, or faiss-gpu on a machine without a GPU)."""
    try:
        return int(faiss.get_num_gpus())
    except AttributeError:  # faiss-cpu builds may lack the symbol
        return 0


def resolve_device(use_gpu: bool | None) -> Device:
    """Pick the FAISS device: ``None`` = GPU when one is visible, else CPU.

    ``use_gpu=True`` on a machine without a usable GPU raises ``RuntimeError`` instead of
    silently running (much slower) on CPU: a user who asked for a GPU wants to know.
    """
    n = gpu_count()
    if use_gpu is False:
        return "cpu"
    if n > 0 and hasattr(faiss, "StandardGpuResources"):
        return "gpu"
    if use_gpu:
        raise RuntimeError(
            "use_gpu=True but FAISS sees no GPU (faiss.get_num_gpus() == 0 or a CPU-only "
            "faiss build); set use_gpu to null/auto or false to run on CPU"
        )
    return "cpu"


def _ip_index(d: int, device: Device) -> tuple[Any, Any]:
    """An exact inner-product index on ``device``; returns (index, gpu resources or None).

    The resources object must outlive the index, so callers keep both.
    """
    if device == "gpu":
        res = faiss.StandardGpuResources()
        return faiss.GpuIndexFlatIP(res, d), res
    return faiss.IndexFlatIP(d), None


# --------------------------------------------------------------------------- sampling


def uid_to_u64(uids: Any) -> np.ndarray:
    """The 64-bit key of each uid (uint64): :func:`curate.algorithms.uids.uid_keys`.

    Hex-prefixed uids (DESIGN.md section 3 uids are 32 hex digits) map to their first 16
    hex digits, any other uid to the first 8 bytes of its sha256. An integer array is
    taken as is (already keys).
    """
    if isinstance(uids, np.ndarray):
        if uids.dtype.kind in "ui":
            return uids.astype(np.uint64, copy=False)
        if uids.size == 0:
            return np.zeros(0, dtype=np.uint64)
    return uid_keys(uids)


def uid_hash(uids: Any, seed: int) -> np.ndarray:
    """A seeded uint64 hash of each uid: ``splitmix64(uid64 ^ splitmix64(seed))``.

    ``uid64`` is :func:`uid_to_u64`. Depends only on (seed, uid): not on row order, shard
    boundaries or worker count.
    """
    key = splitmix64(np.asarray([seed], dtype=np.uint64))[0]
    return splitmix64(uid_to_u64(uids) ^ key)


def uid_uniform(uids: Any, seed: int) -> np.ndarray:
    """A seeded uniform in [0, 1) per uid: the top 53 bits of :func:`uid_hash` (float64)."""
    return (uid_hash(uids, seed) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def sample_fraction(n_total: int, k: int, max_points_per_centroid: int = 256) -> float:
    """Fraction of the pool to sample so that about ``max_points_per_centroid * k`` rows are
    drawn (FAISS's default cap; more points barely move the centroids)."""
    if n_total <= 0:
        return 0.0
    return min(1.0, max_points_per_centroid * k / n_total)


def sample_mask(uids: Any, fraction: float, seed: int) -> np.ndarray:
    """Rows of one shard that belong to the k-means training sample.

    ``uids``: any uid strings (see :func:`uid_to_u64`), as a list, NumPy or Arrow array.
    A row is taken when ``uid_uniform(uid, seed) < fraction``: each row independently with
    probability ``fraction``, so the sample is uniform over the pool, deterministic by seed,
    and the same whichever way the pool is split into shards (a reservoir would depend on
    the order). The sample size is binomial around ``fraction * n_total``;
    :func:`train_kmeans` trims any excess over its cap with a seeded subset.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if fraction >= 1.0:
        return np.ones(len(uids), dtype=bool)
    return uid_uniform(uids, seed) < fraction


# --------------------------------------------------------------------------- model


@dataclass
class KMeansModel:
    """Trained spherical k-means.

    centroids: (k, d) float32, L2-normalised. device: where it was trained and where
    :meth:`assign` runs when that device is present ('cpu' | 'gpu'). objective: FAISS's
    final objective, the sum over training points of the inner product with their
    centroid (higher is better). iterations: Lloyd iterations run (over all restarts).
    init: the seeding method. n_train: training points used. seconds: wall time of the
    seeding ('init') and of the Lloyd iterations ('lloyd'), summed over restarts.

    Picklable (Ray ships it to workers): the FAISS index is rebuilt lazily, after
    unpickling too, and a 'gpu' model assigns on CPU where no GPU is visible.
    """

    centroids: np.ndarray
    device: Device
    objective: float
    iterations: int
    init: str = "kmeans++"
    n_train: int = 0
    restart_objectives: list[float] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    _gpu: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def d(self) -> int:
        return int(self.centroids.shape[1])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_gpu"] = None
        return state

    def _gpu_index(self) -> Any:
        if self._gpu is None:
            index, res = _ip_index(self.d, "gpu")
            index.add(self.centroids)
            self._gpu = (index, res)
        return self._gpu[0]

    def assign(self, x: np.ndarray, batch: int = 65536) -> tuple[np.ndarray, np.ndarray]:
        """Nearest centroid of each row of ``x`` (n, d) by inner product.

        Returns ``(labels int32 [n], sims float32 [n])``; cosine distance to the centroid is
        ``1 - sims`` for normalised inputs. ``x`` may be float16 (as stored in ``scores/``);
        it is converted ``batch`` rows at a time, so memory stays O(batch * d). Results are
        identical whatever the batch size or the split of the pool into calls (module doc).
        """
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.d:
            raise ValueError(f"expected an array of shape (n, {self.d}), got {x.shape}")
        n = x.shape[0]
        labels = np.empty(n, dtype=np.int32)
        sims = np.empty(n, dtype=np.float32)
        use_gpu = self.device == "gpu" and gpu_count() > 0
        rows = max(1, min(batch, _BLOCK_ELEMS // max(self.k, 1)))
        if use_gpu:
            rows = max(1, batch)
        for s in range(0, n, rows):
            xb = np.ascontiguousarray(x[s : s + rows], dtype=np.float32)
            if use_gpu:
                lab, sim = self._assign_block_gpu(xb)
            else:
                lab, sim = self._assign_block_cpu(xb)
            labels[s : s + len(xb)] = lab
            sims[s : s + len(xb)] = sim
        return labels, sims

    def _assign_block_cpu(self, xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = xb @ self.centroids.T
        rr = np.arange(len(xb))
        lab = s.argmax(axis=1)
        top = s[rr, lab]
        s[rr, lab] = -np.inf  # the runner-up tells which rows have near-ties (few)
        near = np.flatnonzero(s.max(axis=1) >= top - _TIE_TOL)
        if near.size == 0:
            return self._resolve(xb, lab, near, near)
        sub = s[near]
        sub[np.arange(near.size), lab[near]] = top[near]
        r, c = np.nonzero(sub >= (top[near] - _TIE_TOL)[:, None])
        return self._resolve(xb, lab, near[r], c)

    def _assign_block_gpu(self, xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m = min(_GPU_TOPM, self.k)
        dist, idx = self._gpu_index().search(xb, m)
        lab = idx[:, 0].astype(np.int64)
        near = dist >= (dist[:, :1] - _TIE_TOL)
        full = near.all(axis=1) if m < self.k else np.zeros(len(xb), dtype=bool)
        near[full] = False
        r, j = np.nonzero(near)
        c = idx[r, j]
        if full.any():  # more near-ties than fetched (pathological): all centroids
            fr = np.flatnonzero(full)
            s = xb[fr] @ self.centroids.T
            fr2, c2 = np.nonzero(s >= (s.max(axis=1) - _TIE_TOL)[:, None])
            r = np.concatenate([r, fr[fr2]])
            c = np.concatenate([c, c2])
        return self._resolve(xb, lab, r, c)

    def _resolve(
        self, xb: np.ndarray, lab: np.ndarray, r: np.ndarray, c: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Re-rank the candidate pairs (row r, centroid c) of rows with several candidates in
        float64 (ties: lowest id), then compute every row's similarity in float64."""
        lab = lab.astype(np.int64, copy=True)
        counts = np.bincount(r, minlength=len(xb))
        multi = counts[r] > 1
        if multi.any():
            r, c = r[multi], c[multi]
            v = _rowdot64(xb[r], self.centroids[c])
            order = np.lexsort((c, -v, r))  # by row, best value first, then lowest id
            r, c = r[order], c[order]
            first = np.ones(len(r), dtype=bool)
            first[1:] = r[1:] != r[:-1]
            lab[r[first]] = c[first]
        sim = _rowdot64(xb, self.centroids[lab]).astype(np.float32)
        return lab.astype(np.int32), sim


def _rowdot64(a: np.ndarray, b: np.ndarray, rows: int = 4096) -> np.ndarray:
    """Row-wise dot products in float64, each row computed on its own (batch-independent);
    ``rows`` at a time to bound the float64 copies."""
    out = np.empty(len(a), dtype=np.float64)
    for s in range(0, len(a), rows):
        out[s : s + rows] = np.einsum(
            "ij,ij->i", a[s : s + rows].astype(np.float64), b[s : s + rows].astype(np.float64)
        )
    return out


# --------------------------------------------------------------------------- training


def kmeans_plusplus(
    x: np.ndarray, k: int, seed: int, n_local_trials: int | None = None
) -> np.ndarray:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007): indices of k rows of ``x``.

    The first centre is a uniform row; each next one is the best, by the resulting
    potential (sum of squared distances to the nearest centre), of ``n_local_trials``
    (default ``2 + floor(ln k)``) rows drawn with probability proportional to the squared
    distance to the nearest centre so far. This is the algorithm of
    ``sklearn.cluster.kmeans_plusplus``, written here in float32 GEMMs (sklearn upcasts
    each distance block to float64) with single-threaded BLAS: each step is a skinny GEMM
    that threads only slow down, badly so on a loaded machine. For 16k x 512, k = 1,000
    here: 5 s, vs sklearn 9 s single-threaded and 15-106 s with its default threads. The
    single-trial variant that FAISS ships recovers planted clusters worse (ARI 0.93 vs 1.0
    in our probe). O(k * n_local_trials * n * d): run it on a subset.
    """
    with threadpool_limits(1, user_api="blas"):
        return _kmeans_plusplus(x, k, seed, n_local_trials)


def _kmeans_plusplus(x: np.ndarray, k: int, seed: int, n_local_trials: int | None) -> np.ndarray:
    n = x.shape[0]
    trials = n_local_trials or 2 + int(np.log(k))
    rng = np.random.default_rng([seed, 2])
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    idx = np.empty(k, dtype=np.int64)
    idx[0] = rng.integers(n)
    closest = np.maximum(sq + sq[idx[0]] - 2.0 * (x @ x[idx[0]]), 0.0)
    pot = closest.sum()
    xt = x.T
    for c in range(1, k):
        if pot <= 0:  # fewer distinct points than k: the rest are uniform picks
            idx[c:] = rng.choice(n, size=k - c, replace=False)
            break
        cand = np.searchsorted(np.cumsum(closest), rng.random(trials) * pot)
        cand = np.minimum(cand, n - 1)
        dc = (x[cand] @ xt).astype(np.float64)
        dc *= -2.0
        dc += sq
        dc += sq[cand][:, None]
        np.maximum(dc, 0.0, out=dc)
        np.minimum(dc, closest, out=dc)
        pots = dc.sum(axis=1)
        best = int(np.argmin(pots))
        closest, pot, idx[c] = dc[best], pots[best], cand[best]
    return idx


def _init_centroids(
    x: np.ndarray, k: int, method: str, seed: int, init_points: int
) -> np.ndarray | None:
    """Seed centroids: greedy k-means++ on a seeded subset of ``init_points`` rows of ``x``.

    Returns None for 'random' (FAISS then picks k random training points itself, which is
    what the SemDeDup and DBP reference code do).
    """
    if method == "random":
        return None
    if method != "kmeans++":
        raise ValueError(f"init must be 'kmeans++' or 'random', got {method!r}")
    n = x.shape[0]
    if n > init_points:
        rng = np.random.default_rng([seed, 1])
        x = x[np.sort(rng.choice(n, size=init_points, replace=False))]
    cent = np.array(x[kmeans_plusplus(x, k, seed)], dtype=np.float32)
    cent /= np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12)
    return cent


def train_kmeans(
    sample: np.ndarray,
    k: int,
    niter: int = 20,
    seed: int = 0,
    use_gpu: bool | None = None,
    init: InitMethod = "kmeans++",
    n_restarts: int = 1,
    max_points_per_centroid: int = 256,
    init_points_per_centroid: int = 16,
) -> KMeansModel:
    """Spherical k-means (FAISS ``Clustering``, ``spherical=True``, ``IndexFlatIP``).

    sample: (n, d) L2-normalised embeddings (float16/float32; copied to float32). n must be
    at least k (``ValueError`` otherwise); beyond ``max_points_per_centroid * k`` a seeded
    subset is used (FAISS's default cap; :func:`sample_mask` draws about that many).
    use_gpu: None = GPU when FAISS sees one; True = GPU or ``RuntimeError``; False = CPU.
    init: 'kmeans++' (default: greedy k-means++ on ``init_points_per_centroid * k`` points of
    the sample) or 'random' (FAISS's k random points, as in the SemDeDup/DBP code).
    n_restarts: independent seedings (seed, seed+1, ...); the best objective wins.
    Deterministic for a given seed, device and thread count.
    """
    x = np.asarray(sample)
    if x.ndim != 2:
        raise ValueError(f"sample must be a 2-D array (n, d), got shape {x.shape}")
    n, d = x.shape
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n < k:
        raise ValueError(
            f"k-means needs at least k = {k} training points, the sample has {n}: "
            f"lower k or sample a larger fraction of the pool"
        )
    if n_restarts < 1 or niter < 1:
        raise ValueError("niter and n_restarts must be >= 1")
    cap = max_points_per_centroid * k
    if n > cap:
        rng = np.random.default_rng([seed, 0])
        x = x[np.sort(rng.choice(n, size=cap, replace=False))]
        logger.info("k-means: using a seeded subset of %d of %d sample points", cap, n)
        n = cap
    x = np.ascontiguousarray(x, dtype=np.float32)
    if n < 39 * k:
        logger.warning("k-means: only %.1f training points per centroid (n=%d, k=%d)", n / k, n, k)
    device = resolve_device(use_gpu)
    init_points = max(k, init_points_per_centroid * k)

    best: KMeansModel | None = None
    objectives: list[float] = []
    iters = 0
    t_init = t_lloyd = 0.0
    for r in range(n_restarts):
        rseed = seed + r
        cp = faiss.ClusteringParameters()
        cp.niter = niter
        cp.nredo = 1
        cp.spherical = True
        cp.seed = rseed & 0x7FFFFFFF
        cp.max_points_per_centroid = max_points_per_centroid  # n <= cap: FAISS won't resample
        cp.min_points_per_centroid = 1  # we warn ourselves above
        cp.verbose = False
        clus = faiss.Clustering(d, k, cp)
        t0 = time.perf_counter()
        c0 = _init_centroids(x, k, init, rseed, init_points)
        t1 = time.perf_counter()
        if c0 is not None:
            faiss.copy_array_to_vector(c0.ravel(), clus.centroids)
        index, res = _ip_index(d, device)
        clus.train(x, index)
        t_init += t1 - t0
        t_lloyd += time.perf_counter() - t1
        stats = clus.iteration_stats
        obj = float(stats.at(stats.size() - 1).obj) if stats.size() else 0.0
        iters += int(stats.size())
        objectives.append(obj)
        cent = faiss.vector_float_to_array(clus.centroids).reshape(k, d).copy()
        cent /= np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12)
        del index, res
        if best is None or obj > best.objective:
            best = KMeansModel(cent, device, obj, 0, init=init, n_train=n)
        logger.debug("k-means restart %d: objective %.4f", r, obj)
    assert best is not None
    best.iterations = iters
    best.restart_objectives = objectives
    best.seconds = {"init": t_init, "lloyd": t_lloyd}
    logger.info(
        "k-means: k=%d d=%d n=%d device=%s init=%s objective=%.4f (mean sim %.4f)",
        k,
        d,
        n,
        device,
        init,
        best.objective,
        best.objective / n,
    )
    return best
