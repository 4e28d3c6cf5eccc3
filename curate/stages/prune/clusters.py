"""Per-cluster sums and the cluster tables prune publishes (``clusters.parquet``,
``dedup_clusters.parquet``).

The assignment and dedup steps fold per-cluster (count, sum of distances) on the driver and
write them to ``<work>/assigned.parquet`` / ``<work>/deduplicated.parquet``; the
``clusters`` step reads them back to compute DBP's statistics and quotas.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from curate.core.io import read_table, write_parquet_atomic
from curate.stages.prune.clustering import Where


def save_sums(fs: Any, w: Where, what: str, sums: tuple[np.ndarray, np.ndarray]
              ) -> dict[str, Any]:
    """Write per-cluster (size, sum_dist) to ``<work>/<what>.parquet``; the step's info
    names the file and the pairs it counts."""
    size, dist = sums
    path = f"{w.work}/{what}.parquet"
    write_parquet_atomic(fs, path, pa.table({"size": size, "sum_dist": dist}))
    return {f"{what}_path": path, f"{what}_pairs": int(size.sum())}


def read_sums(fs: Any, w: Where, what: str) -> tuple[np.ndarray, np.ndarray]:
    """What :func:`save_sums` wrote: per-cluster (size, sum_dist)."""
    t = read_table(fs, f"{w.work}/{what}.parquet")
    return t["size"].to_numpy(), t["sum_dist"].to_numpy()


def zero_sums(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster (size, sum_dist) of no pairs."""
    return np.zeros(k, np.int64), np.zeros(k, np.float64)


def add_sums(acc: tuple[np.ndarray, np.ndarray], item: Any,
             r: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return acc[0] + r[0], acc[1] + r[1]


def cluster_table(which: str, size: np.ndarray, size_after: np.ndarray,
                  stats: dict[str, np.ndarray] | None = None,
                  quota: np.ndarray | None = None) -> pa.Table:
    """One row per cluster; ``clustering`` says which clustering the rows describe:
    'dedup' (SemDeDup's alone), 'dbp' (DBP's re-clustering, or DBP alone), 'shared' (both
    steps on one clustering). Without ``stats`` (SemDeDup's clustering when DBP
    re-clustered): sizes only."""
    k = len(size)
    cols = {"cluster_id": pa.array(np.arange(k), pa.int32()),
            "clustering": pa.array([which] * k, pa.string()),
            "size": pa.array(size, pa.int64()),
            "size_after_dedup": pa.array(size_after, pa.int64())}
    if stats is not None:
        cols.update({name: pa.array(stats[name], pa.float64())
                     for name in ("d_intra", "d_inter", "complexity")})
        cols["quota"] = pa.array(size_after if quota is None else quota, pa.int64())
    return pa.table(cols)
