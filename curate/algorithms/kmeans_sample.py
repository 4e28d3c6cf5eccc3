"""The k-means training sample: which rows of the pool it holds, decided per uid.

A row is in the sample when a seeded hash of its uid falls below a fraction, so the sample
is uniform over the pool, deterministic by seed, and the same however the pool is split
into shards or workers (a reservoir would depend on the order). The prune stage calls
:func:`sample_mask` on every shard; :func:`curate.algorithms.kmeans.train_kmeans` then
trains on what was drawn.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from curate.algorithms.uids import splitmix64, uid_keys


def uid_to_u64(uids: Any) -> np.ndarray:
    """The 64-bit key of each uid (uint64): :func:`curate.algorithms.uids.uid_keys`.

    Hex-prefixed uids (curate's own uids are 32 hex digits) map to their first 16
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
