"""A trained spherical k-means model, and chunk-invariant assignment to its centroids.

Apart from training (`curate.algorithms.kmeans`) because this is what the prune stage ships
to every worker (it is picklable) and calls shard by shard, so the pool is never in memory.

Assignment is chunk-invariant: the nearest centroid and its similarity do not depend on how
the pool is cut into shards or batches. A float32 GEMM's rounding depends on the batch shape
(FAISS's search differs by ~1 ulp between a batch and its sub-batch), so the GEMM only
proposes candidates (every centroid within ``_TIE_TOL`` of the best), and the winner and its
similarity are recomputed per row in float64 (ties: lowest centroid id). On CPU the
candidates come from a NumPy float32 GEMM over blocks of rows (faster here than
``IndexFlatIP.search``: 0.46 s vs 0.78 s for 65,536 x 512 against 1,000 centroids); on a GPU
from a ``GpuIndexFlatIP`` top-8 search.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from curate.algorithms.kmeans_device import Device, gpu_count, ip_index

#: Candidates within this much inner product of the best are re-ranked in float64. A float32
#: dot product of unit vectors with d <= 4096 errs by far less (worst case ~ d * 6e-8).
_TIE_TOL = 1e-3
#: Elements of the (rows x k) similarity block built at a time while assigning (16 MB).
_BLOCK_ELEMS = 1 << 22
#: Candidates fetched per row from a GPU index before re-ranking on the host.
_GPU_TOPM = 8


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
            index, res = ip_index(self.d, "gpu")
            index.add(self.centroids)
            self._gpu = (index, res)
        return self._gpu[0]

    def assign(self, x: np.ndarray, batch: int = 65536, device: Device | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Nearest centroid of each row of ``x`` (n, d) by inner product.

        Returns ``(labels int32 [n], sims float32 [n])``; cosine distance to the centroid is
        ``1 - sims`` for normalised inputs. ``x`` may be float16 (as stored in ``scores/``);
        it is converted ``batch`` rows at a time, so memory stays O(batch * d). Results are
        identical whatever the batch size or the split of the pool into calls (module doc).
        ``device``: where to search ('gpu' falls back to CPU where FAISS sees no GPU); None:
        the training device. Labels are the same on both (the float64 re-ranking).
        """
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.d:
            raise ValueError(f"expected an array of shape (n, {self.d}), got {x.shape}")
        n = x.shape[0]
        labels = np.empty(n, dtype=np.int32)
        sims = np.empty(n, dtype=np.float32)
        use_gpu = (device or self.device) == "gpu" and gpu_count() > 0
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
