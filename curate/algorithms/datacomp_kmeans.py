"""DataComp's image-based filter: L2 k-means with DataComp's settings, nearest-centroid
assignment by inner product, and the clusters that hold a reference embedding.

Reference: Gadre et al., *DataComp* (arXiv:2304.14108); code
<https://github.com/mlfoundations/datacomp>:

- ``baselines/image_based_clustering.py``, ``train_kmeans``: ``faiss.Clustering(d, k)``
  with ``niter = 20``, ``seed`` (0), ``max_points_per_centroid = 10,000,000`` ("otherwise
  the kmeans implementation sub-samples the training set"), FAISS's defaults otherwise
  (plain L2 k-means, *not* spherical; k random training points as the initial centroids;
  one run), trained over a ``GpuIndexFlatL2`` (float32, ``useFloat16 = False``) on the
  pool's ViT-L/14 image embeddings as stored, cast to float32.
- ``baselines/apply_filter.py``, ``get_centroid_ids_gpu``: a feature's centroid is
  ``argmax_j <feature, centroid_j>`` (a dot product with the unnormalised centroids, not
  the L2-nearest one); ``load_uids_with_image_filter``: the reference (ImageNet-1k train
  ViT-L/14 image features) is assigned so, ``target = unique(ids)``, and a pool pair is
  kept when its own centroid is in ``target``.

This module is pure (arrays in, arrays out; FAISS is imported only in ``curate/algorithms``).
Assignment reuses :class:`curate.algorithms.kmeans_model.KMeansModel`, whose argmax inner
product is chunk-invariant (float32 candidates re-ranked in float64, ties: lowest id), so
the labels do not depend on sharding; DataComp's GPU float32 argmax can differ from it only
on near-ties (within float32 rounding).
"""

from __future__ import annotations

import math

import faiss
import numpy as np

from curate.algorithms.kmeans_device import resolve_device
from curate.algorithms.kmeans_model import KMeansModel

#: DataComp's settings (baselines/image_based_clustering.py)
NITER = 20
SEED = 0
MAX_POINTS_PER_CENTROID = 10_000_000
NUM_CLUSTERS = 100_000


def train_l2_kmeans(x: np.ndarray, k: int, niter: int = NITER, seed: int = SEED,
                    max_points_per_centroid: int = MAX_POINTS_PER_CENTROID,
                    use_gpu: bool | None = None) -> KMeansModel:
    """FAISS k-means exactly as DataComp configures it; returns the centroids as a
    :class:`KMeansModel` (``init = "random"``, FAISS's own seeding).

    The rows' order matters (FAISS draws the initial centroids by a seeded permutation of
    the row indices): callers pass rows in pool order. Same input, seed and device give the
    same centroids; a GPU and a CPU differ by floating-point rounding."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected an (n, d) array, got shape {x.shape}")
    n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"k = {k} must be between 1 and the {n} training points")
    device = resolve_device(use_gpu)
    cl = faiss.Clustering(d, k)
    cl.niter = niter
    cl.seed = seed
    cl.max_points_per_centroid = max_points_per_centroid
    res = None
    if device == "gpu":
        res = faiss.StandardGpuResources()
        cfg = faiss.GpuIndexFlatConfig()
        cfg.useFloat16 = False
        index = faiss.GpuIndexFlatL2(res, d, cfg)
    else:
        index = faiss.IndexFlatL2(d)
    cl.train(x, index)
    del res
    centroids = faiss.vector_float_to_array(cl.centroids).reshape(k, d).astype(np.float32)
    stats = cl.iteration_stats
    objective = float(stats.at(stats.size() - 1).obj) if stats.size() else math.nan
    return KMeansModel(centroids=centroids, device=device, objective=objective,
                       iterations=int(stats.size()), init="random", n_train=n)


def centroid_model(centroids: np.ndarray) -> KMeansModel:
    """Given centroids (DataComp's released ones, or an earlier run's) as a model to assign
    with: argmax inner product, on the GPU when FAISS sees one."""
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    if c.ndim != 2 or not len(c):
        raise ValueError(f"centroids must be a non-empty (k, d) array, got shape {c.shape}")
    return KMeansModel(centroids=c, device=resolve_device(None), objective=math.nan,
                       iterations=0, init="given")


def reference_clusters(model: KMeansModel, reference: np.ndarray) -> np.ndarray:
    """Counts per centroid (int64 [k]) of the reference embeddings assigned to it; DataComp's
    target set is ``counts > 0``. Counts of several reference chunks add up."""
    labels, _ = model.assign(np.asarray(reference))
    return np.bincount(labels, minlength=model.k).astype(np.int64)


def keep_mask(model: KMeansModel, x: np.ndarray, target: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """(kept bool [n], centroid id int32 [n]) for pool embeddings ``x``: kept when the
    row's argmax-inner-product centroid is a target (``target`` bool [k])."""
    labels, _ = model.assign(np.asarray(x))
    return np.asarray(target, bool)[labels], labels
